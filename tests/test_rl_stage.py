"""The rl stage on a tiny random model, through the pipeline: prepare -> train -> rl (two GRPO steps),
killed after its first checkpoint and resumed by `run_pipeline`; merge then folds in the RL adapter."""

from __future__ import annotations

import dataclasses
import json

import pytest
from transformers import TrainerCallback

from medtune import pipeline
from medtune.config import RunConfig
from medtune.data.prepare import read_report
from medtune.errors import TrainingError
from medtune.merge import merged_adapter
from medtune.report import write_html_report
from medtune.rl.stage import rl_stage
from medtune.rundir import RunDir
from medtune.train.trainer import latest_checkpoint
from train_fixtures import poison_gradient_at


class KilledAfterCheckpoint(Exception):
    pass


class KillAfterSave(TrainerCallback):
    """Raises once the checkpoint of `step` is on disk: what a kill -9 right after it leaves behind."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            raise KilledAfterCheckpoint()


def _config(tmp_path, model_dir) -> RunConfig:
    return RunConfig.model_validate({
        "name": "rl-tiny",
        "output_dir": str(tmp_path / "runs"),
        "data": {"files": ["builtin:reasonmed-sample"], "limit": 16, "val_size": 4},
        "model": {"base": str(model_dir)},
        "lora": {"r": 4, "alpha": 8},
        "train": {"max_steps": 2, "batch_size": 4, "gradient_accumulation_steps": 1, "test_question": False,
                  "logging_steps": 1, "eval_steps": 2, "save_steps": 2},
        "rl": {"num_generations": 2, "prompts_per_step": 2, "max_completion_length": 8, "max_steps": 2,
               "val_size": 2, "limit": 4, "save_steps": 1, "length_weight": 0.1, "hold_out_of_sft": True,
               "val_samples": 3},
    })


@pytest.mark.slow
def test_two_rl_steps_through_the_pipeline_resume_after_a_kill(tmp_path, tiny_llama_dir, monkeypatch):
    config = _config(tmp_path, tiny_llama_dir)
    run = RunDir.of(config)
    assert [s.name for s in pipeline.active_stages(config)][:4] == ["prepare", "train", "rl", "merge"]
    pipeline.run_pipeline(config, until="train")
    # RL's 6 prompts (4 to train on, 2 held out) are kept out of SFT's data, counted by prepare.
    assert read_report(run)["rl_held_out"]["prompts"] == 6

    # The first attempt dies right after checkpoint 1; the manifest says "running".
    killed = dataclasses.replace(pipeline.stage_by_name("rl"),
                                 run=lambda c, r, resume=False: rl_stage(c, r, resume=resume, callbacks=[KillAfterSave(1)]))
    monkeypatch.setattr(pipeline, "STAGES", tuple(killed if s.name == "rl" else s for s in pipeline.STAGES))
    with pytest.raises(KilledAfterCheckpoint):
        pipeline.run_stage(config, "rl")
    assert run.stage_entry("rl")["status"] == "running"
    assert (run.rl_checkpoints / "checkpoint-1").is_dir() and not run.rl_adapter.exists()

    # The resumed attempt's step 2 diverges (a nan gradient): it stops before applying it, naming the fix,
    # and leaves checkpoint 1 to resume from (not CUDA's sampling assert a step later, nor an adapter of nan).
    diverged = dataclasses.replace(pipeline.stage_by_name("rl"),
                                   run=lambda c, r, resume=False: rl_stage(c, r, resume=resume, callbacks=[poison_gradient_at(2)]))
    monkeypatch.setattr(pipeline, "STAGES", tuple(diverged if s.name == "rl" else s for s in pipeline.STAGES))
    with pytest.raises(TrainingError, match=r"rl: optimizer step 2: the gradient is not finite.*rl.learning_rate"):
        pipeline.run_stage(config, "rl")
    assert latest_checkpoint(run.rl_checkpoints).name == "checkpoint-1" and not run.rl_adapter.exists()
    monkeypatch.undo()

    events = []
    outcomes = pipeline.run_pipeline(config, until="rl", on_event=lambda stage, message: events.append((stage, message)))
    rl = outcomes[-1]
    assert rl.name == "rl" and rl.action == "resumed"
    assert ("rl", "resuming from step 1") in events
    assert rl.figures["rl_steps"] == 2 and rl.figures["resumed_from_step"] == 1
    assert rl.figures["rl_val_prompts"] == 2 and rl.figures["rl_val_reward_difference"]["n"] == 2
    sampled = rl.figures["rl_val_sampled"]  # 3 sampled replies a held-out prompt: shares in thirds
    assert sampled["samples_per_prompt"] == 3 and sampled["difference"]["n"] == 2
    assert all(0 <= sampled[k] <= 1 and abs(sampled[k] * 6 - round(sampled[k] * 6)) < 1e-3 for k in ("before", "after"))
    log = [json.loads(line) for line in run.rl_log.read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all("reward" in r and "rewards/correct/mean" in r for r in log)
    assert run.reward_curve.stat().st_size > 1000 and run.rl_summary.is_file()
    assert (run.rl_adapter / "adapter_model.safetensors").is_file() and not (run.rl_adapter / "ref").exists()
    assert run.stage_entry("rl")["status"] == "done"
    # merge folds in the RL adapter, and its fingerprint follows the rl stage's output
    assert merged_adapter(config, run) == run.rl_adapter
    assert pipeline.is_current(config, "rl")[0]
    page = write_html_report(run).read_text()
    assert "Reinforcement learning (GRPO)" in page and "held-out reward change, sampled" in page
