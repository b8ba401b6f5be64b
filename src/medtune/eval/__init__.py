"""Evaluation on medical benchmarks: answer extraction (`answers`), model backends (`backends`),
scoring (`scoring`), statistics (`stats`), paired comparisons (`compare`), reports (`report`) and the
pipeline stage (`stage`). Benchmark definitions live below this package, in `medtune.tasks`.

Importing this package (and `answers`, `stats`) does not import torch.
"""
