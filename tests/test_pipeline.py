"""The orchestrator's skip / force / until / resume logic, on stand-in stages that write files.

The real stages are exercised end to end in tests/test_run_e2e.py; here the point is the
bookkeeping: fingerprints, output verification and which stages rerun."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from medtune import pipeline
from medtune.artifacts import read_manifest, record_stage
from medtune.config import RunConfig
from medtune.rundir import RunDir

CALLS: list[str] = []


@dataclass
class Wrote:
    stage: str

    def figures(self) -> dict:
        return {"wrote": self.stage}


def _writer(stage_name: str):
    def run(config, run: RunDir, **kwargs):
        CALLS.append(stage_name + (":resume" if kwargs.get("resume") else ""))
        out = run.stage_folder(stage_name)
        out.mkdir(parents=True, exist_ok=True)
        (out / "artifact.txt").write_text(f"{stage_name} {config.export.quant_types}")
        return Wrote(stage_name)

    return run


@pytest.fixture
def fake_stages(monkeypatch):
    stages = tuple(dataclasses.replace(stage, run=_writer(stage.name)) for stage in pipeline.STAGES)
    monkeypatch.setattr(pipeline, "STAGES", stages)
    monkeypatch.setattr(pipeline, "write_model_card", lambda config, run: None)
    monkeypatch.setattr(pipeline, "write_html_report", lambda run: None)
    CALLS.clear()
    return CALLS


def _config(tmp_path, **export) -> RunConfig:
    return RunConfig.model_validate(
        {"name": "t", "output_dir": str(tmp_path), "data": {"files": ["builtin:reasonmed-sample"]}, "export": export}
    )


def test_second_run_skips_every_stage(tmp_path, fake_stages):
    config = _config(tmp_path)
    pipeline.run_pipeline(config)
    assert fake_stages == ["prepare", "train", "merge", "export", "eval"]
    outcomes = pipeline.run_pipeline(config)
    assert [o.action for o in outcomes] == ["skipped"] * 5
    assert fake_stages == ["prepare", "train", "merge", "export", "eval"]


def test_changing_quant_types_redoes_only_export_and_eval(tmp_path, fake_stages):
    pipeline.run_pipeline(_config(tmp_path))
    fake_stages.clear()
    pipeline.run_pipeline(_config(tmp_path, quant_types=["Q8_0"]))
    assert fake_stages == ["export", "eval"]


def test_force_redoes_stage_and_everything_after(tmp_path, fake_stages):
    config = _config(tmp_path)
    pipeline.run_pipeline(config)
    fake_stages.clear()
    pipeline.run_pipeline(config, force="merge")
    assert fake_stages == ["merge", "export", "eval"]


def test_until_stops_early(tmp_path, fake_stages):
    pipeline.run_pipeline(_config(tmp_path), until="train")
    assert fake_stages == ["prepare", "train"]


def test_tampered_output_is_redone(tmp_path, fake_stages):
    config = _config(tmp_path)
    pipeline.run_pipeline(config)
    (RunDir.of(config).merged / "artifact.txt").write_text("corrupted")
    fake_stages.clear()
    pipeline.run_pipeline(config)
    # merge's outputs changed digest after rerun? Its content is rewritten identically, so later
    # stages' inputs are unchanged and they are skipped.
    assert fake_stages == ["merge"]


def test_interrupted_training_resumes_from_checkpoints(tmp_path, fake_stages):
    config = _config(tmp_path)
    pipeline.run_pipeline(config, until="prepare")
    # Simulate a kill during training: the manifest says running, checkpoints exist.
    manifest = read_manifest(config.run_dir)
    fp = pipeline.stage_fingerprint(config, pipeline.stage_by_name("train"), manifest)
    record_stage(config.run_dir, "train", {"status": "running", "fingerprint": fp})
    (RunDir.of(config).checkpoints / "checkpoint-5").mkdir(parents=True)
    fake_stages.clear()
    events = []
    pipeline.run_pipeline(config, until="train", on_event=lambda stage, message: events.append((stage, message)))
    assert fake_stages == ["train:resume"]
    # No complete checkpoint (no trainer_state.json in it): the rerun says it starts over.
    assert ("train", "no checkpoint yet, starting over") in events


def test_interrupted_eval_keeps_finished_results_only_for_the_same_inputs(tmp_path, fake_stages):
    config = _config(tmp_path)
    pipeline.run_pipeline(config, until="export")
    manifest = read_manifest(config.run_dir)
    fp = pipeline.stage_fingerprint(config, pipeline.stage_by_name("eval"), manifest)
    record_stage(config.run_dir, "eval", {"status": "running", "fingerprint": fp})
    RunDir.of(config).eval_partial.mkdir()
    fake_stages.clear()
    pipeline.run_pipeline(config)
    assert fake_stages == ["eval:resume"]

    # Interrupted again, but the rerun asks for other quant types: export and eval start afresh.
    record_stage(config.run_dir, "eval", {"status": "running", "fingerprint": fp})
    RunDir.of(config).eval_partial.mkdir(exist_ok=True)
    fake_stages.clear()
    pipeline.run_pipeline(_config(tmp_path, quant_types=["Q4_K_M"]))
    assert fake_stages == ["export", "eval"]
    assert not RunDir.of(config).eval_partial.exists()


def test_unknown_stage_names_are_config_errors(tmp_path, fake_stages):
    from medtune.errors import ConfigError

    with pytest.raises(ConfigError, match="stages are: prepare"):
        pipeline.run_pipeline(_config(tmp_path), force="quantize")


def test_editing_a_local_data_file_redoes_prepare(tmp_path, fake_stages):
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    config = RunConfig.model_validate({"name": "t", "output_dir": str(tmp_path), "data": {"files": [str(data)]}})
    pipeline.run_pipeline(config)
    data.write_text('{"prompt": "a", "completion": "c"}\n')
    fake_stages.clear()
    pipeline.run_pipeline(config)
    assert fake_stages[0] == "prepare"


def test_speed_only_settings_redo_nothing(tmp_path, fake_stages):
    pipeline.run_pipeline(_config(tmp_path))
    faster = _config(tmp_path, n_threads=3)
    faster = faster.model_copy(update={"eval": faster.eval.model_copy(update={"n_threads": 5})})
    outcomes = pipeline.run_pipeline(faster)
    assert [o.action for o in outcomes] == ["skipped"] * 5


def test_a_feature_added_later_leaves_fingerprints_alone_while_off(tmp_path, fake_stages):
    # eval.guard came after run folders existed: off, it is not part of eval's fingerprint.
    config = _config(tmp_path)
    manifest = read_manifest(config.run_dir)
    eval_stage = pipeline.stage_by_name("eval")
    before = pipeline.stage_fingerprint(config, eval_stage, manifest)
    assert "guard" not in pipeline._result_fields(config, "eval")
    guarded = config.model_copy(update={"eval": config.eval.model_copy(update={"guard": config.eval.guard.model_copy(update={"enabled": True})})})
    assert pipeline.stage_fingerprint(guarded, eval_stage, manifest) != before


def test_holding_rl_prompts_out_of_sft_redoes_prepare_and_is_absent_while_off(tmp_path, fake_stages):
    # rl.hold_out_of_sft came after runs with an rl section existed: off, the rl fingerprint leaves it out and
    # prepare does not read the rl section at all; on, what picks RL's prompts is an input of prepare.
    config = RunConfig.model_validate({"name": "t", "output_dir": str(tmp_path), "data": {"files": ["builtin:reasonmed-sample"]},
                                       "rl": {"val_size": 2}})
    prepare = pipeline.stage_by_name("prepare")
    plain = pipeline.stage_fingerprint(config.model_copy(update={"rl": None}), prepare, {})
    assert pipeline.stage_fingerprint(config, prepare, {}) == plain
    assert "hold_out_of_sft" not in pipeline._result_fields(config, "rl")
    assert "val_samples" not in pipeline._result_fields(config, "rl")  # rl.val_samples, same rule: 0 is off
    sampled = config.model_copy(update={"rl": config.rl.model_copy(update={"val_samples": 8})})
    assert pipeline._result_fields(sampled, "rl")["val_samples"] == 8

    def held(**rl):
        return config.model_copy(update={"rl": config.rl.model_copy(update={"hold_out_of_sft": True, **rl})})

    assert "hold_out_of_sft" in pipeline._result_fields(held(), "rl")
    on = pipeline.stage_fingerprint(held(), prepare, {})
    assert on != plain and pipeline.stage_fingerprint(held(limit=3), prepare, {}) != on
