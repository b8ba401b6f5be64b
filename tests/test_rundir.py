"""RunDir owns the run folder: its layout, `open_artifact`, and the house rules that keep it so
(no other module spells a run sub-path, no stage imports the pipeline, no import circle)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench_scripts import load_benchmark
from medtune.errors import ArtifactError
from medtune.rundir import RunDir, is_run_dir, open_artifact, quant_name, stem_has_type

REPO = Path(__file__).resolve().parents[1]


def _run_folder(root: Path, name: str = "demo") -> RunDir:
    run = RunDir(root / name)
    run.root.mkdir(parents=True)
    run.config_file.write_text(f"name: {name}\ndata:\n  system_prompt: Be brief.\n")
    run.manifest_file.write_text(json.dumps({"stages": {"export": {"status": "done"}}}))
    run.adapter.mkdir()
    (run.adapter / "adapter_config.json").write_text("{}")
    run.merged.mkdir()
    (run.merged / "config.json").write_text("{}")
    run.gguf.mkdir()
    for type_name in ("F16", "Q8_0"):
        run.gguf_file(type_name).write_bytes(b"GGUF" + bytes(16))
    return run


def test_layout_names_every_folder_and_file(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.stage_folder("prepare") == run.data == tmp_path / "r" / "data"
    assert run.split("val") == run.data / "val" and run.data_report.parent == run.data
    assert run.scratch_folder("train") == run.checkpoints and run.scratch_folder("eval") == run.eval_partial
    assert run.scratch_folder("merge") is None
    assert run.gguf_file("q4_k_m").name == "r-Q4_K_M.gguf" and run.imatrix.parent == run.gguf
    assert run.predictions_file("gguf:Q8_0", "pubmedqa", "cot").name == "gguf-Q8_0__pubmedqa__cot.jsonl"
    assert run.relative(run.eval_results) == "eval/results.json"


def test_saved_config_gives_name_and_system_prompt(tmp_path):
    run = _run_folder(tmp_path, "demo")
    assert run.name == "demo" and run.system_prompt() == "Be brief." and run.exists()
    assert run.stage_entry("export") == {"status": "done"} and run.stage_entry("eval") == {}
    assert [quant_name(f, run.name) for f in run.gguf_files()] == ["F16", "Q8_0"]
    assert stem_has_type("demo-Q8_0", "q8_0") and not stem_has_type("demo-Q8_0", "q4_k_m")


def test_open_artifact_tells_every_kind_and_its_run(tmp_path):
    run = _run_folder(tmp_path)
    assert open_artifact(run.root).kind == "run"
    for path, kind in ((run.adapter, "adapter"), (run.merged, "merged"), (run.gguf_file("Q8_0"), "gguf")):
        artifact = open_artifact(path)
        assert artifact.kind == kind and artifact.run == run, path
    folder = open_artifact(run.gguf)
    assert folder.kind == "gguf" and len(folder.gguf_files) == 2 and folder.run == run
    assert folder.label(run.gguf_file("Q8_0")) == "Q8_0"
    # Outside a run: no run, labels are file stems.
    loose = tmp_path / "loose.gguf"
    loose.write_bytes(b"GGUF" + bytes(8))
    assert open_artifact(loose).run is None and open_artifact(loose).label(loose) == "loose"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp: tmp / "missing.gguf", "does not exist; a run's GGUF files are in runs/<name>/gguf/"),
        (lambda tmp: _write(tmp / "page.gguf", b"<html>"), "is not a GGUF file: it starts with b'<htm'"),
        (lambda tmp: _write(tmp / "notes.txt", b"hi"), "is not a .gguf file"),
        (lambda tmp: _mkdir(tmp / "empty"), "not a .gguf file, a run directory, a merged model folder"),
    ],
)
def test_open_artifact_refuses_what_is_not_a_model(tmp_path, make, message):
    with pytest.raises(ArtifactError, match=re.escape(message)):
        open_artifact(make(tmp_path))


def test_a_folder_without_manifest_or_exports_is_not_a_run(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.yaml").write_text("name: x\n")
    assert not is_run_dir(tmp_path / "x")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


# ---- the house rules (issue 23), checked on the working tree ----------------------------------------
architecture = load_benchmark("architecture")


def test_run_subpaths_are_spelled_only_in_rundir():
    assert architecture.subpath_literals(REPO) == []


def test_no_import_circle_and_no_stage_imports_the_pipeline():
    graph, _ = architecture.import_graph(REPO)
    assert architecture.circles(graph) == []
    importers = sorted(m for m, deps in graph.items() if "medtune.pipeline" in deps)
    assert all(m == "medtune.cli" or m.startswith("medtune.commands.") for m in importers), importers
