"""Evaluation on medical benchmarks: registry and loaders (`benchmarks`), answer extraction
(`answers`), model backends (`backends`), scoring (`scoring`), statistics (`stats`), reports
(`report`) and the pipeline stage (`stage`).

Importing this package (and `benchmarks`, `answers`, `stats`) does not import torch.
"""
