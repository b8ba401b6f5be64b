"""Evaluation on medical benchmarks: answer extraction (`answers`), model backends (`backends`),
scoring (`scoring`), statistics (`stats`), paired comparisons (`compare`), the typed result row every
table renders (`rows`), reports (`report`), examples for the card and the HTML report (`examples`) and
the pipeline stage (`stage`). Benchmark definitions live below this package, in `medtune.tasks`.

Importing this package (and `answers`, `stats`) does not import torch.
"""
