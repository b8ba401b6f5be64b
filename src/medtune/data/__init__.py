"""The data stage: turning a medical reasoning dataset into tokenized, assistant-only-labelled chats.

Modules: `loading` (files and hub), `formats` (one normaliser per record format), `validation`
(checks and drop reasons), `rendering` (chat template + labels), `prepare` (the stage),
`decontaminate` (dropping training questions that match evaluation items), `sources` (records
derived from benchmark files). Import from the module itself (`medtune.data.prepare`): this
package imports nothing, so importing one part never loads the others.
"""
