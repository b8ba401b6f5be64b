"""The PubMedQA recipe sweep's bookkeeping (benchmarks/pubmedqa_reasoning.py): pooled out-of-fold rows and a
second round that joins an earlier sweep's finished variants to the choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_scripts import load_benchmark

LABELS = ["yes", "no", "maybe"]


def _sweep_module():
    return load_benchmark("pubmedqa_reasoning")


def _job(variant: str, fold: int, right_every: int) -> dict:
    """One finished (variant, fold) job: 30 items, every `right_every`-th one answered correctly."""
    predictions = []
    for i in range(30):
        gold = LABELS[i % 3]
        predicted = gold if i % right_every == 0 else LABELS[(i + 1) % 3]
        predictions.append({"id": f"{fold}-{i}", "answer": gold, "predicted": predicted, "correct": predicted == gold})
    return {"variant": variant, "fold": fold, "ok": True, "seconds": 1.0,
            "predictions": {"loglik": predictions, "cot": predictions}, "train": {"steps": 3}}


def test_a_second_round_keeps_the_earlier_winner_unless_beaten():
    sweep = _sweep_module()
    folds = 2
    first = sweep.collect([_job("base", k, 4) for k in range(folds)] + [_job("lr_1e-3", k, 1) for k in range(folds)],
                          {"lr_1e-3": sweep.VARIANTS["lr_1e-3"]}, folds)
    assert first["chosen"] == "lr_1e-3" and first["variants"]["lr_1e-3"]["modes"]["cot"]["accuracy"] == 1.0

    new = {"lr_2e-3": sweep.VARIANTS["lr_2e-3"]}
    second = sweep.collect([_job("base", k, 4) for k in range(folds)] + [_job("lr_2e-3", k, 2) for k in range(folds)],
                           new, folds, previous=first)
    rows = second["variants"]
    assert rows["lr_1e-3"]["round"] == 1 and rows["lr_2e-3"]["round"] == 2
    assert rows["lr_1e-3"]["modes"] == first["variants"]["lr_1e-3"]["modes"]  # carried as it was measured
    assert rows["lr_2e-3"]["modes"]["cot"]["vs_base"]["n"] == 60  # paired against this round's base
    assert second["chosen"] == "lr_1e-3"  # the earlier variant still scores best
    assert second["chosen_overrides"] == {"train.learning_rate": 1e-3}

    # A variant that has not finished every fold takes no part in the choice.
    cut = sweep.collect([_job("base", k, 4) for k in range(folds)] + [_job("lr_2e-3", 0, 1)], new, folds, previous=first)
    assert cut["variants"]["lr_2e-3"]["folds_done"] == 1 and "modes" not in cut["variants"]["lr_2e-3"]
    assert cut["chosen"] == "lr_1e-3"


def test_an_earlier_sweep_over_other_folds_is_refused():
    sweep = _sweep_module()
    first = sweep.collect([_job("base", k, 4) for k in range(2)] + [_job("lr_1e-3", k, 1) for k in range(2)],
                          {"lr_1e-3": sweep.VARIANTS["lr_1e-3"]}, 2)
    with pytest.raises(SystemExit, match="folds=2"):
        sweep.collect([_job("base", k, 4) for k in range(3)], {}, 3, previous=first)


def test_gguf_check_joins_the_results_file_whole(tmp_path):
    sweep = _sweep_module()
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    row = {"artifact": "gguf:Q8_0", "backend": "llama.cpp", "benchmark": "pubmedqa", "mode": "loglik", "n": 500,
           "accuracy": 0.658, "ci95": [0.614, 0.7], "macro_f1": 0.461, "recall": {}, "predicted": {"yes": 300},
           "parse_failure_rate": 0.0, "seconds": 12.0, "predictions": ["dropped from the check"]}
    paired = {"artifact": "gguf:Q8_0", "versus": "merged", "mode": "loglik", "difference": -0.004, "ci95": [-0.014, 0.006]}
    (run / "eval" / "results.json").write_text(json.dumps({"results": [row], "comparisons": [paired]}))
    (run / "manifest.json").write_text(json.dumps({"stages": {"export": {"quality": [{"type": "Q8_0"}], "other": 1}}}))
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"final": {"kept": True}}))
    check = sweep.gguf_check(run, results, "2 CPU cores, x86_64")
    written = json.loads(results.read_text())
    assert written["final"] == {"kept": True} and written["gguf_check"] == check
    assert "predictions" not in check["rows"][0] and check["rows"][0]["accuracy"] == 0.658
    assert check["paired"] == [paired] and check["export"] == {"quality": [{"type": "Q8_0"}]}
    assert not results.with_suffix(".tmp").exists()


SCRIPT = "benchmarks/gpu_pubmedqa_reasoning.sh"


def _final(tmp_path, **env):
    """`gpu_pubmedqa_reasoning.sh final` with DRY_RUN (no GPU here): the recipe it would train, or its error."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "pubmedqa").mkdir(exist_ok=True)
    variables = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "no-sweep"),
                 "PQ": str(tmp_path / "pubmedqa"), "DRY_RUN": "1", **env}
    return subprocess.run(["bash", str(repo / SCRIPT), "final"], cwd=repo, env=variables, capture_output=True,
                          text=True, timeout=300, check=False)


def test_final_on_a_fresh_machine_takes_the_committed_recipe(tmp_path):
    """No sweep file from this machine: the committed results file's recipe is printed and used (issue 24)."""
    done = _final(tmp_path)
    assert done.returncode == 0, done.stderr
    committed = json.loads(Path("benchmarks/results/pubmedqa_reasoning.json").read_text())["sweep"]["chosen_overrides"]
    recipe = (tmp_path / "out" / "recipe.txt").read_text().splitlines()
    pq = tmp_path / "pubmedqa"
    assert recipe[0] == f'--set=data.files=["pubmedqa-train:{pq}"]' == f"--set=data.files={json.dumps([committed['data.files'][0].format(pool=pq)])}"
    for key in ("train.learning_rate", "lora.r", "lora.alpha"):
        assert f"--set={key}={json.dumps(committed[key])}" in recipe
    assert f"recipe from benchmarks/results/pubmedqa_reasoning.json: {' '.join(recipe)}" in done.stdout
    assert "medtune.cli run configs/pubmedqa-reasoning-smollm2.yaml" in done.stdout and "pubmedqa-reasoning:" not in done.stdout


def test_final_stops_when_the_named_sweep_file_is_missing(tmp_path):
    done = _final(tmp_path, SWEEP=str(tmp_path / "no-sweep" / "sweep.json"))
    assert done.returncode != 0
    assert f"{tmp_path / 'no-sweep' / 'sweep.json'} does not exist" in done.stderr + done.stdout
    assert "medtune.cli run" not in done.stdout  # nothing was trained


def test_final_stops_when_the_pubmedqa_folder_is_missing(tmp_path):
    done = _final(tmp_path, PQ=str(tmp_path / "nowhere"))
    assert done.returncode == 2 and "PubMedQA release folder" in done.stderr
