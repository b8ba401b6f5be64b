"""Several processes: data parallel against one process with the same global batch; FSDP's set-up.

On CPU, torch.distributed runs on gloo, so the real launcher path (`torchrun -m medtune.cli
train`) is tested with 2 processes of a tiny model. accelerate enables its FSDP plugin only on
GPUs: on CPU the tests check what medtune hands it (the TrainingArguments and the plugin built
from them) and that CPU runs are refused with a clear error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from medtune.config import TrainConfig
from medtune.errors import ConfigError
from medtune.train.trainer import decoder_layer_classes, fsdp_arguments, plan_training
from train_fixtures import write_prepared

REPO = Path(__file__).resolve().parents[1]


def test_fsdp_only_with_several_gpu_processes(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert plan_training(TrainConfig(distributed="fsdp"), device_type="cuda", world_size=1).fsdp is False
    plan = plan_training(TrainConfig(distributed="fsdp"), device_type="cuda", world_size=2)
    assert plan.fsdp and plan.describe()["distributed"] == "fsdp" and plan.compile is False
    assert plan_training(TrainConfig(), device_type="cuda", world_size=2).describe()["distributed"] == "ddp"
    with pytest.raises(ConfigError, match="on CPU use ddp"):
        plan_training(TrainConfig(distributed="fsdp"), device_type="cpu", world_size=2)
    with pytest.raises(ValueError, match="distributed"):
        TrainConfig(distributed="zero3")


def test_fsdp_arguments_name_the_decoder_layers(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, TrainingArguments

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir))
    assert decoder_layer_classes(model) == ["LlamaDecoderLayer"]
    fields = fsdp_arguments(model, gradient_checkpointing=True)
    config = fields["fsdp_config"]
    assert config["version"] == 2 and config["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    assert config["state_dict_type"] == "FULL_STATE_DICT" and config["activation_checkpointing"] is True
    # transformers turns these into accelerate's FullyShardedDataParallelPlugin arguments
    args = TrainingArguments(output_dir="unused", use_cpu=True, report_to="none", **fields)
    assert args.fsdp_plugin_args["fsdp_version"] == 2
    assert args.fsdp_plugin_args["transformer_cls_names_to_wrap"] == "LlamaDecoderLayer"
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)  # what the Trainer hands to Accelerator
    assert plugin.fsdp_version == 2 and plugin.activation_checkpointing
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)
    with pytest.raises(ConfigError, match="DecoderLayer"):
        fsdp_arguments(torch.nn.Linear(2, 2), gradient_checkpointing=False)


def _write_run(root: Path, model_dir: Path, tokenizer, name: str, **train) -> Path:
    from medtune.artifacts import record_stage

    config = {
        "name": name, "output_dir": str(root), "data": {"files": ["unused.jsonl"]}, "model": {"base": str(model_dir)},
        "lora": {"dropout": 0.0},  # dropout masks differ between one process and two
        "train": {"max_steps": 4, "batch_size": 4, "learning_rate": 1e-3, "logging_steps": 1, "eval_steps": 4,
                  "save_steps": 4, "test_question": False, **train},
    }
    write_prepared(root / name, tokenizer, n_train=32, n_val=8)
    record_stage(root / name, "prepare", {"status": "done", "outputs_digest": "test"})
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _train(config: Path, processes: int, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command = (launcher if processes > 1 else [sys.executable]) + ["-m", "medtune.cli", "train", str(config)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _losses(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "adapter" / "train_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tiny_llama_dir, smollm2_tokenizer, tmp_path):
    """Global batch 8 either way: 1 process x 4 examples x 2 accumulation == 2 processes x 4 x 1.

    `torchrun --nproc-per-node 2 -m medtune.cli train` (data parallel on gloo): the loss curve and
    the trained adapter agree with one process (float32 on CPU: to rounding).
    """
    one = _write_run(tmp_path, tiny_llama_dir, smollm2_tokenizer, "one", gradient_accumulation_steps=2)
    two = _write_run(tmp_path, tiny_llama_dir, smollm2_tokenizer, "two", gradient_accumulation_steps=1)
    _train(one, 1, tmp_path)
    _train(two, 2, tmp_path)
    reference, weights = _losses(tmp_path / "one"), _adapter(tmp_path / "one")
    assert len(reference) == 4
    assert _losses(tmp_path / "two") == pytest.approx(reference, rel=1e-4)
    other = _adapter(tmp_path / "two")
    assert other.keys() == weights.keys() and weights
    for key in weights:
        torch.testing.assert_close(other[key], weights[key], rtol=1e-4, atol=1e-6)
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())["stages"]["train"]
    assert manifest["plan_distributed"] == "ddp" and manifest["plan_processes"] == 2
