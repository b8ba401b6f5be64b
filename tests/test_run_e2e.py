"""`medtune run` end to end on a tiny random Llama, with real processes killed mid-stage.

Each scenario runs the real CLI in a subprocess (its own process group), kills it with SIGKILL at
a chosen moment, reruns it, and checks that the result matches an uninterrupted run and that no
partial artifact survived."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

TIMEOUT = 600


def _write_pubmedqa(folder: Path) -> Path:
    """Six items in PubMedQA's original release format (ori_pqal.json + test_ground_truth.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    decisions = ["yes", "no", "maybe", "yes", "no", "yes"]
    records = {
        str(1000 + i): {
            "QUESTION": f"Does treatment {i} reduce mortality in sepsis?",
            "CONTEXTS": [f"A trial of treatment {i} enrolled {100 + i} patients.", "Mortality was recorded at 28 days."],
            "final_decision": decision,
            "LONG_ANSWER": f"Treatment {i} was associated with a change in mortality.",
        }
        for i, decision in enumerate(decisions)
    }
    (folder / "ori_pqal.json").write_text(json.dumps(records))
    (folder / "test_ground_truth.json").write_text(json.dumps({k: v["final_decision"] for k, v in records.items()}))
    return folder


def _write_config(tmp_path: Path, model_dir: Path, name: str) -> Path:
    pubmedqa = _write_pubmedqa(tmp_path / "pubmedqa")
    config = {
        "name": name,
        "output_dir": str(tmp_path / "runs"),
        "seed": 7,
        "data": {"files": ["builtin:reasonmed-sample"], "format": "reasonmed", "val_size": 6, "max_length": 768},
        "model": {"base": str(model_dir)},
        "lora": {"r": 4, "alpha": 8},
        "train": {
            "max_steps": 12,
            "batch_size": 2,
            "gradient_accumulation_steps": 1,
            "learning_rate": 1e-3,
            "logging_steps": 1,
            "eval_steps": 6,
            "save_steps": 3,
            "test_question": False,
        },
        "merge": {"verify_prompts": 2},
        # A random tiny model never emits EOS: the stop check is the real model's (tests/test_export.py).
        "export": {"quant_types": ["Q8_0"], "verify_prompts": 2, "answer_max_tokens": 16, "require_eos_stop": False},
        "eval": {
            "modes": ["loglik"],
            "artifacts": ["base", "merged", "gguf"],
            "benchmarks": [{"name": "pubmedqa", "path": str(pubmedqa)}],
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _medtune(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "medtune.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _run_to_end(config: Path, cwd: Path, *extra: str) -> str:
    proc = _medtune("run", str(config), *extra, cwd=cwd)
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, out
    return out


def _kill_when(config: Path, cwd: Path, ready, what: str) -> None:
    proc = _medtune("run", str(config), cwd=cwd)
    deadline = time.monotonic() + TIMEOUT
    while not ready():
        if proc.poll() is not None:
            out = proc.stdout.read()
            pytest.fail(f"run ended before {what} could be interrupted:\n{out}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def _adapter_tensors(run_dir: Path):
    from safetensors.torch import load_file

    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def _no_partial_artifacts(run_dir: Path) -> None:
    leftovers = [p for p in run_dir.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]
    assert leftovers == []


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_llama_dir):
    tmp = tmp_path_factory.mktemp("reference")
    config = _write_config(tmp, tiny_llama_dir, "ref")
    first = _run_to_end(config, tmp)
    return tmp, config, first


def test_uninterrupted_run_then_rerun_skips_everything(reference_run):
    tmp, config, _ = reference_run
    run_dir = tmp / "runs" / "ref"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [manifest["stages"][s]["status"] for s in ("prepare", "train", "merge", "export", "eval")] == ["done"] * 5
    assert (run_dir / "gguf" / "ref-F16.gguf").is_file() and (run_dir / "gguf" / "ref-Q8_0.gguf").is_file()
    assert (run_dir / "MODEL_CARD.md").read_text().count("not a medical device") == 1
    assert "data:image/png;base64," in (run_dir / "report.html").read_text()  # the loss curves at least
    second = _run_to_end(config, tmp)
    assert second.count("skipped: inputs unchanged and outputs verified") == 5, second


def test_changing_quant_types_redoes_only_export_and_eval(reference_run, tmp_path):
    tmp, config, _ = reference_run
    out = _run_to_end(config, tmp, "--set", "export.quant_types=[Q8_0,Q4_K_M]")
    skipped = [line.split()[0] for line in out.splitlines() if "skipped: inputs unchanged" in line]
    assert skipped == ["prepare", "train", "merge"], out
    assert (tmp / "runs" / "ref" / "gguf" / "ref-Q4_K_M.gguf").is_file()
    _run_to_end(config, tmp)  # back to the reference quant set for the other tests


def test_kill_during_training_resumes_to_the_same_adapter(reference_run, tmp_path, tiny_llama_dir):
    ref_tmp, _, _ = reference_run
    config = _write_config(tmp_path, tiny_llama_dir, "ref")  # same name and recipe, other folder
    run_dir = tmp_path / "runs" / "ref"
    _kill_when(config, tmp_path, lambda: any((run_dir / "checkpoints").glob("checkpoint-6")), "training")
    assert not (run_dir / "adapter").exists()
    out = _run_to_end(config, tmp_path)
    assert "resum" in out.lower(), out
    reference, resumed = _adapter_tensors(ref_tmp / "runs" / "ref"), _adapter_tensors(run_dir)
    assert reference.keys() == resumed.keys()
    for key in reference:
        assert (reference[key] - resumed[key]).abs().max().item() < 1e-5, key
    _no_partial_artifacts(run_dir)


def test_kill_before_the_first_checkpoint_says_it_starts_over(reference_run, tmp_path, tiny_llama_dir):
    ref_tmp, _, _ = reference_run
    config = _write_config(tmp_path, tiny_llama_dir, "ref")
    # The same recipe with its only checkpoint at the last step, so a kill lands before it.
    recipe = yaml.safe_load(config.read_text())
    recipe["train"]["save_steps"] = recipe["train"]["max_steps"]
    config.write_text(yaml.safe_dump(recipe))
    run_dir = tmp_path / "runs" / "ref"
    # Training has begun (its log lives in checkpoints/) but has saved nothing a resume could use.
    _kill_when(config, tmp_path, lambda: (run_dir / "checkpoints").is_dir(), "training")
    assert not any((run_dir / "checkpoints").glob("checkpoint-*/trainer_state.json"))
    out = _run_to_end(config, tmp_path)
    train_lines = [line.strip() for line in out.splitlines() if line.strip().startswith("train ")]
    assert train_lines[0] == "train  no checkpoint yet, starting over", out
    assert "resuming from the last checkpoint" not in out
    reference, rerun = _adapter_tensors(ref_tmp / "runs" / "ref"), _adapter_tensors(run_dir)
    for key in reference:
        assert (reference[key] - rerun[key]).abs().max().item() < 1e-5, key


def test_kill_during_export_leaves_no_partial_gguf(reference_run, tmp_path, tiny_llama_dir):
    config = _write_config(tmp_path, tiny_llama_dir, "ref")
    run_dir = tmp_path / "runs" / "ref"
    _kill_when(config, tmp_path, lambda: any(run_dir.glob("gguf.tmp-*")), "export")
    assert not (run_dir / "gguf").exists()
    out = _run_to_end(config, tmp_path)
    skipped = [line.split()[0] for line in out.splitlines() if "skipped: inputs unchanged" in line]
    assert skipped == ["prepare", "train", "merge"], out  # complete before the kill
    _no_partial_artifacts(run_dir)
    ref_manifest = json.loads((reference_run[0] / "runs" / "ref" / "manifest.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    # Same data, seed and recipe: the same merged weights, hence byte-identical GGUF files.
    ref_files = {o["path"]: o["sha256"] for o in ref_manifest["stages"]["export"]["outputs"] if o["path"].endswith(".gguf")}
    files = {o["path"]: o["sha256"] for o in manifest["stages"]["export"]["outputs"] if o["path"].endswith(".gguf")}
    assert files == ref_files


def test_kill_during_merge_keeps_no_half_written_model(reference_run, tmp_path, tiny_llama_dir):
    config = _write_config(tmp_path, tiny_llama_dir, "ref")
    run_dir = tmp_path / "runs" / "ref"
    _kill_when(config, tmp_path, lambda: any(run_dir.glob("merged.tmp-*")), "merge")
    assert not (run_dir / "merged").exists()
    _run_to_end(config, tmp_path)
    _no_partial_artifacts(run_dir)
    assert json.loads((run_dir / "manifest.json").read_text())["stages"]["merge"]["status"] == "done"


def test_kill_during_eval_keeps_the_finished_artifacts(reference_run, tmp_path, tiny_llama_dir):
    import shutil

    ref_tmp, _, _ = reference_run
    config = _write_config(tmp_path, tiny_llama_dir, "ref")
    run_dir = tmp_path / "runs" / "ref"
    shutil.copytree(ref_tmp / "runs" / "ref", run_dir)  # a finished run; redo only its eval
    proc = _medtune("run", str(config), "--force", "eval", cwd=tmp_path)
    deadline = time.monotonic() + TIMEOUT
    while not (run_dir / "eval-partial" / "base.json").is_file():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "timed out waiting for eval"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert json.loads((run_dir / "manifest.json").read_text())["stages"]["eval"]["status"] == "running"

    out = _run_to_end(config, tmp_path)
    assert "base: kept the results of the interrupted attempt" in out, out
    assert not (run_dir / "eval-partial").exists()
    _no_partial_artifacts(run_dir)
    reference = json.loads((ref_tmp / "runs" / "ref" / "eval" / "results.json").read_text())
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    pick = lambda rows: [(r["artifact"], r["mode"], r["correct"]) for r in rows]  # noqa: E731
    assert pick(results["results"]) == pick(reference["results"])
    assert [c["artifact"] for c in results["comparisons"]] == ["merged", "gguf:F16", "gguf:Q8_0"]


def test_the_demo_config_runs_short_on_the_embedded_model_and_flags_what_carries_no_signal(tmp_path):
    """configs/demo.yaml itself (embedded SmolLM2, real llama.cpp), cut to 3 training steps, one
    quant and 8 held-out items: every stage runs, the held-out cases are checked against the
    training data, and every constant answer is named wherever its accuracy is shown."""
    repo = Path(__file__).resolve().parents[1]
    out = _run_to_end(
        repo / "configs" / "demo.yaml", tmp_path,
        "--set", f"output_dir={tmp_path / 'runs'}", "--set", "train.max_steps=3", "--set", "train.test_question=false",
        "--set", "export.quant_types=[Q8_0]", "--set", "eval.artifacts=[base, merged, 'gguf:Q8_0']",
        "--set", "eval.max_new_tokens=24",
        "--set", "eval.benchmarks=[{name: medtune_sample, path: 'builtin:reasonmed-heldout', limit: 8}]",
    )
    run_dir = tmp_path / "runs" / "demo"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [manifest["stages"][s]["status"] for s in ("prepare", "train", "merge", "export", "eval")] == ["done"] * 5
    data = json.loads((run_dir / "data" / "report.json").read_text())
    assert data["decontamination"]["dropped"] == {"medtune_sample": 0}
    assert data["decontamination"]["benchmarks"]["medtune_sample"]["items"] == 64  # limit applies to eval only
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    rows = results["results"]
    assert [r["artifact"] for r in rows] == ["base", "merged", "gguf:Q8_0"]
    assert all(r["mode"] == "cot" and r["n"] == 8 for r in rows)
    report = (run_dir / "eval" / "report.md").read_text()
    card = (run_dir / "MODEL_CARD.md").read_text()
    for row in rows:
        from medtune.eval.metrics import degenerate_note

        note = degenerate_note(row["degenerate"])
        if note:  # 24 new tokens are too few for an answer line: "gives no parseable answer on 8/8 items"
            assert f"**No signal:** {row['artifact']} (medtune_sample, cot) {note}" in report
            assert note in card and note in out
    for comparison in results["comparisons"]:
        sides = [r for r in rows if r["artifact"] in (comparison["artifact"], comparison["versus"])]
        assert bool(comparison["note"]) == any(r["degenerate"] for r in sides)
