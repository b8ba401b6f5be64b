"""`medtune eval` on a tiny model: --model form and the run stage (config form)."""

from __future__ import annotations

import json

import pytest
from conftest import PUBMEDQA_DIR
from test_eval_scoring import make_biased_model
from typer.testing import CliRunner

from medtune.cli import app
from medtune.config import RunConfig
from medtune.errors import ArtifactError, ConfigError
from medtune.rundir import RunDir
from medtune.tasks import load_items

needs_pubmedqa = pytest.mark.skipif(not PUBMEDQA_DIR.is_dir(), reason="../shared/data/pubmedqa not present")


@pytest.fixture(scope="module")
def yes_model(tmp_path_factory, smollm2_tokenizer):
    return make_biased_model(smollm2_tokenizer, tmp_path_factory.mktemp("yes-model"), "yes")


@needs_pubmedqa
def test_cli_model_form(yes_model, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "eval", "--model", str(yes_model), "--benchmark", "pubmedqa", "--path", str(PUBMEDQA_DIR),
        "--limit", "8", "--out", str(out), "--device", "cpu",
    ])
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "results.json").read_text())["results"]
    items = load_items("pubmedqa", PUBMEDQA_DIR, limit=8, seed=0)
    expected = sum(item.answer == "yes" for item in items) / 8
    assert len(rows) == 1 and rows[0]["accuracy"] == pytest.approx(expected)  # always answers yes
    assert rows[0]["n"] == 8 and rows[0]["backend"] == "transformers" and rows[0]["mode"] == "loglik"
    assert (out / "report.md").is_file() and (out / "accuracy.png").is_file()
    assert "eval" in result.output and "accuracy" in result.output


def test_cli_rejects_bad_arguments(yes_model):
    with pytest.raises(ConfigError, match="unknown benchmark"):
        CliRunner().invoke(app, ["eval", "--model", str(yes_model), "--benchmark", "nope"], catch_exceptions=False)
    with pytest.raises(ConfigError, match="either a run config"):
        CliRunner().invoke(app, ["eval"], catch_exceptions=False)
    with pytest.raises(ConfigError, match="mode"):
        CliRunner().invoke(app, ["eval", "--model", str(yes_model), "--benchmark", "pubmedqa", "--mode", "zero"],
                           catch_exceptions=False)


@needs_pubmedqa
def test_stage_evaluates_run_artifacts(yes_model, tmp_path):
    from medtune.eval.stage import evaluate

    config = RunConfig.model_validate({
        "name": "tiny", "output_dir": str(tmp_path), "data": {"files": ["x.jsonl"]}, "model": {"base": str(yes_model)},
        "eval": {"artifacts": ["base"], "modes": ["loglik"], "device": "cpu",
                 "benchmarks": [{"name": "pubmedqa", "path": str(PUBMEDQA_DIR), "limit": 5}]},
    })
    result = evaluate(config, RunDir.of(config))
    assert result.out_dir == tmp_path / "tiny" / "eval"
    assert {p.name for p in result.out_dir.iterdir()} == {"results.json", "report.md", "accuracy.png", "predictions"}
    assert list(result.figures()["accuracy"]) == ["base/pubmedqa/loglik"]
    config.eval.artifacts = ["base", "merged"]
    with pytest.raises(ArtifactError, match="run `medtune merge` first"):
        evaluate(config, RunDir.of(config))
    with pytest.raises(ValueError, match="unknown benchmark"):
        RunConfig.model_validate({"name": "t", "data": {"files": ["x"]}, "eval": {"benchmarks": [{"name": "mmlu"}]}})


@needs_pubmedqa
def test_adapter_folder_is_evaluated_on_its_base(yes_model, tmp_path):
    """A PEFT adapter folder names its base; --model on it loads base + adapter through peft."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from medtune.config import BenchmarkSpec, EvalConfig
    from medtune.eval.stage import evaluate_model, model_target

    base = AutoModelForCausalLM.from_pretrained(str(yes_model))
    adapter = tmp_path / "adapter"
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter)
    target = model_target(str(adapter))
    assert target.adapter == adapter and target.model_cfg.base == str(yes_model)
    spec = BenchmarkSpec(name="pubmedqa", path=str(PUBMEDQA_DIR), limit=4)
    result = evaluate_model(str(adapter), [spec], EvalConfig(benchmarks=[spec], device="cpu"), tmp_path / "out")
    items = load_items("pubmedqa", PUBMEDQA_DIR, limit=4)
    # LoRA B starts at zero: base + adapter still answers "yes" to everything
    assert result.rows[0].accuracy == pytest.approx(sum(i.answer == "yes" for i in items) / 4)


def test_interrupted_eval_resumes_with_finished_artifacts(yes_model, tmp_path, monkeypatch):
    """Kill after the first artifact: the rerun (resume) keeps its saved results without reopening
    it and scores only the rest; a fresh run (no resume) discards the leftovers."""
    from medtune.errors import ModelError
    from medtune.eval import stage

    config = RunConfig.model_validate({
        "name": "tiny", "output_dir": str(tmp_path), "data": {"files": ["x.jsonl"]}, "model": {"base": str(yes_model)},
        "eval": {"artifacts": ["base", "merged"], "device": "cpu", "benchmarks": [{"name": "medtune_sample"}]},
    })
    merged = config.run_dir / "merged"
    merged.mkdir(parents=True)
    (merged / "config.json").write_text("{}")  # passes run_targets' check, fails to load: the "kill"
    with pytest.raises(ModelError):
        stage.evaluate(config, RunDir.of(config))
    partial = config.run_dir / "eval-partial"
    assert [p.name for p in partial.iterdir()] == ["base.json"]
    assert not (config.run_dir / "eval").exists()

    for file in yes_model.iterdir():
        if file.is_file():
            (merged / file.name).write_bytes(file.read_bytes())
    opened = []
    real_open = stage._open
    monkeypatch.setattr(stage, "_open", lambda target, *a: opened.append(target.label) or real_open(target, *a))
    result = stage.evaluate(config, RunDir.of(config), resume=True)
    assert opened == ["merged"]
    assert [r.artifact for r in result.rows] == ["base", "merged"]
    assert {p.name for p in (result.out_dir / "predictions").iterdir()} == {
        "base__medtune_sample__loglik.jsonl", "merged__medtune_sample__loglik.jsonl"}
    assert not partial.exists()
    # Both artifacts are the same always-"yes" model: no difference, and the report says so.
    assert [(c["artifact"], c["versus"], c["difference"], c["ci95"]) for c in result.comparisons] == [
        ("merged", "base", 0.0, [0.0, 0.0])]
    assert "| merged | base | medtune_sample | loglik | +0.0 |" in (result.out_dir / "report.md").read_text()

    partial.mkdir()
    (partial / "base.json").write_text('{"rows": [], "predictions": {}}')  # stale: another attempt's
    opened.clear()
    stage.evaluate(config, RunDir.of(config))
    assert opened == ["base", "merged"]


def test_cot_artifacts_limit_generation_to_the_chosen_artifacts(yes_model, tmp_path):
    """modes [loglik, cot] with cot_artifacts [merged]: base is scored in loglik only, merged in both."""
    from medtune.eval.stage import evaluate

    config = RunConfig.model_validate({
        "name": "tiny", "output_dir": str(tmp_path), "data": {"files": ["x.jsonl"]}, "model": {"base": str(yes_model)},
        "eval": {"artifacts": ["base", "merged"], "modes": ["loglik", "cot"], "cot_artifacts": ["merged"],
                 "max_new_tokens": 4, "device": "cpu", "benchmarks": [{"name": "medtune_sample", "limit": 3}]},
    })
    merged = config.run_dir / "merged"
    merged.mkdir(parents=True)
    for file in yes_model.iterdir():
        if file.is_file():
            (merged / file.name).write_bytes(file.read_bytes())
    result = evaluate(config, RunDir.of(config))
    assert [(r.artifact, r.mode) for r in result.rows] == [("base", "loglik"), ("merged", "loglik"), ("merged", "cot")]
    # cot has no base row to compare with, so only the loglik pair is reported
    assert [(c["artifact"], c["versus"], c["mode"]) for c in result.comparisons] == [("merged", "base", "loglik")]
    assert json.loads((result.out_dir / "results.json").read_text())["cot_artifacts"] == ["merged"]


@pytest.mark.parametrize(("section", "message"), [
    ({"cot_artifacts": ["merged"]}, "eval.modes has no cot"),
    ({"modes": ["cot"], "artifacts": ["base"], "cot_artifacts": ["merged"]}, "does not evaluate"),
    ({"modes": ["cot"], "cot_artifacts": ["weights"]}, "unknown artifact"),
])
def test_cot_artifacts_must_name_evaluated_artifacts(section, message):
    with pytest.raises(ValueError, match=message):
        RunConfig.model_validate({"name": "t", "data": {"files": ["x"]}, "eval": section})


def test_cot_artifacts_select_gguf_files_the_way_artifacts_does(tmp_path):
    """gguf:TYPE in cot_artifacts picks the same files as in artifacts (case-insensitive quant type)."""
    from medtune.config import EvalConfig, ModelConfig
    from medtune.eval.stage import Target, target_modes

    eval_cfg = EvalConfig(modes=["loglik", "cot"], artifacts=["base", "gguf"], cot_artifacts=["base", "gguf:q8_0"])
    gguf = lambda stem: Target(f"gguf:{stem}", "gguf", ModelConfig(), gguf=tmp_path / f"{stem}.gguf")  # noqa: E731
    assert target_modes(Target("base", "hf", ModelConfig()), eval_cfg) == ["loglik", "cot"]
    assert target_modes(gguf("run-Q8_0"), eval_cfg) == ["loglik", "cot"]
    assert target_modes(gguf("run-Q4_K_M"), eval_cfg) == ["loglik"]
    assert target_modes(Target("merged", "hf", ModelConfig()), EvalConfig(modes=["cot"])) == ["cot"]


def test_model_targets_come_from_open_artifact(tmp_path, yes_model):
    """--model on a run folder evaluates its merged model and GGUF files (labelled by quant type); on a
    folder of GGUF files, each file; on a path that is not a model, a message naming what is accepted."""
    from medtune.eval.stage import model_targets

    run = RunDir(tmp_path / "demo")
    run.gguf.mkdir(parents=True)
    run.config_file.write_text("name: demo\n")
    for quant in ("Q8_0", "Q4_K_M"):
        run.gguf_file(quant).write_bytes(b"GGUF" + b"\0" * 16)
    for file in yes_model.iterdir():
        if file.is_file():
            run.merged.mkdir(exist_ok=True)
            (run.merged / file.name).write_bytes(file.read_bytes())
    targets = model_targets(str(run.root))
    assert [(t.label, t.kind) for t in targets] == [("merged", "hf"), ("gguf:Q4_K_M", "gguf"), ("gguf:Q8_0", "gguf")]
    assert all(t.tokenizer_dir == run.merged for t in targets[1:])  # prompts rendered by the run's own tokenizer
    assert [t.label for t in model_targets(str(run.gguf))] == ["gguf:Q4_K_M", "gguf:Q8_0"]
    assert model_targets("HuggingFaceTB/SmolLM2-135M-Instruct")[0].model_cfg.base == "HuggingFaceTB/SmolLM2-135M-Instruct"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="not a .gguf file, a run directory, a merged model folder"):
        model_targets(str(tmp_path / "empty"))
    with pytest.raises(ArtifactError, match="does not exist"):
        model_targets(str(tmp_path / "missing.gguf"))
