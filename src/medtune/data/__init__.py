"""The data stage: turning a medical reasoning dataset into tokenized, assistant-only-labelled chats.

Modules: `loading` (files and hub), `formats` (one normaliser per record format), `validation`
(checks and drop reasons), `rendering` (chat template + labels), `prepare` (the stage),
`decontaminate` (dropping training questions that match evaluation items).
"""

from medtune.data.prepare import PrepareResult, load_prepared, prepare_data, read_report

__all__ = ["PrepareResult", "load_prepared", "prepare_data", "read_report"]
