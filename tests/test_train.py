"""The train stage on tiny models: choices, end-of-turn training, resume equivalence, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medtune.config import RunConfig, TrainConfig
from medtune.errors import ConfigError, TrainingError
from medtune.train.attention import VARLEN
from medtune.train.precision import resolve_precision
from medtune.rundir import RunDir
from medtune.train.trainer import checkpoint_step, latest_checkpoint, plan_training, resume_message
from train_fixtures import make_examples, poison_gradient_at, write_prepared


def test_precision_on_cpu():
    assert resolve_precision("auto", "cpu").name == "fp32"
    assert resolve_precision("fp32", "cpu").model_dtype == torch.float32
    with pytest.raises(ConfigError, match="fp16"):
        resolve_precision("fp16", "cpu")


def test_plan_on_cpu_defaults_and_packing():
    plan = plan_training(TrainConfig(), device_type="cpu")
    assert (plan.precision.name, plan.packing, plan.attention, plan.compile) == ("fp32", False, "sdpa", False)
    packed = plan_training(TrainConfig(packing="on"), device_type="cpu")
    assert packed.packing and packed.attention == VARLEN
    with pytest.raises(ConfigError, match="cannot keep packed examples apart"):
        plan_training(TrainConfig(packing="on", attention="sdpa"), device_type="cpu")


def test_yaml_switches_accept_booleans():
    cfg = TrainConfig.model_validate({"packing": True, "compile": False, "liger_kernels": "off"})
    assert (cfg.packing, cfg.compile, cfg.liger_kernels) == ("on", "off", "off")


def test_latest_checkpoint_skips_incomplete(tmp_path):
    run = RunDir(tmp_path)
    assert checkpoint_step(run) is None and resume_message(None) == "no checkpoint yet, starting over"
    (run.checkpoints / "checkpoint-4").mkdir(parents=True)
    (run.checkpoints / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (run.checkpoints / "checkpoint-8").mkdir()  # interrupted while saving: no trainer_state.json yet
    assert latest_checkpoint(run.checkpoints).name == "checkpoint-4"
    assert latest_checkpoint(tmp_path / "missing") is None
    assert checkpoint_step(run) == 4 and resume_message(4) == "resuming from step 4"


def test_fa4_is_chosen_only_where_it_runs():
    """auto never picks FlashAttention-4 on CPU; asking for it there names the GPUs it needs."""
    plan = plan_training(TrainConfig(packing="on"), device_type="cpu")
    assert plan.describe()["attention"] == "varlen (torch)"
    with pytest.raises(ConfigError, match="fa4"):
        plan_training(TrainConfig(packing="on", attention="fa4"), device_type="cpu")
    with pytest.raises(ConfigError, match="packed batches"):
        plan_training(TrainConfig(packing="off", attention="fa4"), device_type="cpu")


def _eot_only_labels(example, eot_id):
    labels = torch.full((len(example["input_ids"]),), -100)
    for i, (tok, lab) in enumerate(zip(example["input_ids"], example["labels"])):
        if lab == eot_id and tok == eot_id:
            labels[i] = eot_id
    return labels


def test_end_of_turn_labels_survive_batching(smollm2_tokenizer):
    """The reply's <|im_end|> is a label in both batch layouts (the seed's pad = EOS lost it)."""
    from medtune.tokenizer import fix_pad_token
    from medtune.train.packing import PackedCollator, PaddedCollator

    eot = smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>")
    examples = make_examples(smollm2_tokenizer, 4)
    for ex in examples:
        ends = [i for i, tok in enumerate(ex["input_ids"]) if tok == eot]
        assert ex["labels"][ends[-1]] == eot  # the assistant's end of turn is trained ...
        assert all(ex["labels"][i] == -100 for i in ends[:-1])  # ... the prompt's are not
    rows = [{k: np.asarray(ex[k]) for k in ("input_ids", "labels")} for ex in examples]
    tokenizer = make_tokenizer_copy(smollm2_tokenizer)
    fix_pad_token(tokenizer)
    padded = PaddedCollator(tokenizer.pad_token_id)(rows)
    packed = PackedCollator()([rows])
    for batch in (padded, packed):
        assert int((batch["labels"] == eot).sum()) == len(examples)
        assert tokenizer.pad_token_id not in batch["labels"].tolist()[0]


def make_tokenizer_copy(tokenizer):
    import copy

    return copy.deepcopy(tokenizer)


@pytest.mark.slow
def test_end_of_turn_is_trained(tiny_llama_dir, smollm2_tokenizer, tmp_path):
    """The gradient of the end-of-turn loss reaches the LoRA weights, and training lowers that loss."""
    from medtune.config import LoraConfig, ModelConfig
    from medtune.modeling import load_base_model
    from medtune.train.trainer import build_trainer, prepare_lora_model

    eot = smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>")
    examples = make_examples(smollm2_tokenizer, 8)

    base = load_base_model(ModelConfig(base=str(tiny_llama_dir)))
    # A random 64-wide model's logits are nearly flat (tied embeddings of std 0.02), so no LoRA can
    # move one token's loss much; scaled embeddings give it a peaked output a few steps can shift.
    with torch.no_grad():
        base.get_input_embeddings().weight.mul_(30.0)
    model = prepare_lora_model(base, LoraConfig(dropout=0.0))
    inputs = torch.tensor(examples[0]["input_ids"])[None]
    eot_labels = _eot_only_labels(examples[0], eot)[None]

    def eot_loss():
        return model(input_ids=inputs, labels=eot_labels).loss

    loss = eot_loss()
    loss.backward()
    grads = [p.grad.abs().sum().item() for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g > 0 for g in grads)
    model.zero_grad()
    before = loss.item()

    plan = plan_training(TrainConfig(), device_type="cpu")
    train = TrainConfig(max_steps=12, batch_size=4, gradient_accumulation_steps=1, learning_rate=1e-2, warmup_ratio=0,
                        save_steps=1000, logging_steps=100)
    trainer = build_trainer(model, examples, None, train=train, plan=plan, seed=0, output_dir=tmp_path / "ckpt",
                            pad_token_id=smollm2_tokenizer.pad_token_id)
    trainer.train()
    model.eval()
    with torch.no_grad():
        after = eot_loss().item()
    assert after < before - 5.0, (before, after)


def _config(root: Path, model_dir: Path, name: str, **train) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": name,
            "output_dir": str(root),
            "data": {"files": ["unused.jsonl"]},
            "model": {"base": str(model_dir)},
            "lora": {"dropout": 0.1},
            "train": {
                "max_steps": 6, "batch_size": 4, "gradient_accumulation_steps": 1, "learning_rate": 1e-3,
                "logging_steps": 1, "eval_steps": 3, "save_steps": 3, "test_question": False, **train,
            },
        }
    )


def _adapter_tensors(adapter_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / "adapter_model.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "train",
    [{}, {"packing": "on", "max_tokens_per_batch": 512, "fused_projections": "on"}],  # CPU defaults; the GPU's path
    ids=["padded", "packed-fused"],
)
def test_resume_gives_the_same_adapter_as_training_straight(tiny_llama_dir, smollm2_tokenizer, tmp_path, train):
    """6 steps straight == 3 steps, interrupt, --resume, 3 more (optimizer, scheduler, RNG, data position).
    Dropout is on (0.1), so the fused groups' shared dropout mask must resume with the RNG too."""
    from medtune.train.callbacks import StopAtStep, read_log
    from medtune.train.trainer import train_adapter

    straight = _config(tmp_path, tiny_llama_dir, "straight", **train)
    write_prepared(straight.run_dir, smollm2_tokenizer, n_train=20)
    train_adapter(straight, RunDir.of(straight))

    resumed = _config(tmp_path, tiny_llama_dir, "resumed", **train)
    run = RunDir.of(resumed)
    write_prepared(resumed.run_dir, smollm2_tokenizer, n_train=20)
    assert checkpoint_step(run) is None
    train_adapter(resumed, run, callbacks=[StopAtStep(3)])
    assert checkpoint_step(run) == 3 and latest_checkpoint(run.checkpoints).name == "checkpoint-3"
    result = train_adapter(resumed, run, resume=True)
    assert result.resumed_from_step == 3 and result.steps == 6
    assert result.plan["fused_projections"] is bool(train)

    a, b = _adapter_tensors(RunDir.of(straight).adapter), _adapter_tensors(run.adapter)
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    steps = [r["step"] for r in read_log(run.train_log) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]  # the interrupted run's records are kept, none duplicated


def test_the_gradient_guard_stops_on_nan_or_inf_and_passes_finite_gradients():
    from medtune.train.callbacks import NonFiniteGradientGuard, gradient_guards

    model = torch.nn.Linear(3, 2)
    guard = NonFiniteGradientGuard("train", "Lower train.learning_rate (0.001 now) and run again.")
    state = type("State", (), {"global_step": 6})()
    model(torch.ones(1, 3)).sum().backward()
    assert guard.on_pre_optimizer_step(None, state, "control", model=model) == "control"
    for bad in (float("nan"), float("inf")):
        model.weight.grad[0, 0] = bad
        with pytest.raises(TrainingError, match=r"^train: optimizer step 7: the gradient is not finite .*"
                                                r"Lower train.learning_rate \(0.001 now\) and run again"):
            guard.on_pre_optimizer_step(None, state, "control", model=model)
    # fp16 mixed precision: an inf gradient is the loss scaler's signal to skip a step, not a divergence
    assert [type(g) for g in gradient_guards("train", "fix", fp16=False)] == [NonFiniteGradientGuard]
    assert gradient_guards("train", "fix", fp16=True) == []


@pytest.mark.slow
def test_a_diverged_step_stops_training_before_it_is_applied_and_resume_goes_on(tiny_llama_dir, smollm2_tokenizer, tmp_path):
    """Step 5's gradient turns nan: training stops there with the step and the fix named (not with a log that
    hides the nan and an adapter of nan), checkpoint-3 stays, no adapter is written, and --resume finishes."""
    from medtune.train.trainer import train_adapter

    config = _config(tmp_path, tiny_llama_dir, "diverged")
    run = RunDir.of(config)
    write_prepared(config.run_dir, smollm2_tokenizer, n_train=20)
    with pytest.raises(TrainingError, match=r"train: optimizer step 5: .*train.learning_rate \(0.001 now\)"):
        train_adapter(config, run, callbacks=[poison_gradient_at(5)])
    assert latest_checkpoint(run.checkpoints).name == "checkpoint-3" and not run.adapter.exists()
    result = train_adapter(config, run, resume=True)
    assert result.resumed_from_step == 3 and result.steps == 6
    assert all(t.isfinite().all() for t in _adapter_tensors(run.adapter).values())


@pytest.mark.slow
def test_train_command_writes_the_adapter_folder(tiny_llama_dir, smollm2_tokenizer, tmp_path):
    """`medtune train CONFIG`: adapter + tokenizer + config + log + plot + test answer, manifest entry."""
    import yaml
    from typer.testing import CliRunner

    from medtune.artifacts import record_stage
    from medtune.cli import app

    config = _config(tmp_path, tiny_llama_dir, "cli", test_question=True, test_question_max_new_tokens=8)
    write_prepared(config.run_dir, smollm2_tokenizer)
    record_stage(config.run_dir, "prepare", {"status": "done", "outputs_digest": "test"})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    outcome = CliRunner().invoke(app, ["train", str(path)])
    assert outcome.exit_code == 0, outcome.output
    assert "val loss" in outcome.output

    adapter = config.run_dir / "adapter"
    names = {p.name for p in adapter.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "config.yaml", "train_log.jsonl",
            "loss_curve.png", "test_answer.json"} <= names
    assert (adapter / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    answer = json.loads((adapter / "test_answer.json").read_text())
    assert "Meningitis" in answer["question"] and answer["new_tokens"] <= 8
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter)
    assert tokenizer.pad_token != tokenizer.eos_token and tokenizer.chat_template
    records = [json.loads(line) for line in (adapter / "train_log.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "loss" in r]
    assert {"loss", "learning_rate", "grad_norm", "tokens_per_s", "peak_mem_gib"} <= set(train_records[-1])
    assert [r["step"] for r in records if "eval_loss" in r] == [0, 3, 6]
    entry = json.loads((config.run_dir / "manifest.json").read_text())["stages"]["train"]
    assert entry["status"] == "done" and entry["steps"] == 6
    assert any(o["path"].endswith("adapter_model.safetensors") for o in entry["outputs"])


@pytest.mark.parametrize(
    ("text", "choice"),
    [
        ("A. Migraine\n\nThe most likely diagnosis is Migraine. ... D. Sinusitis is an inflammation", "A"),
        ("Let me think. Neck stiffness suggests meningeal irritation. The answer is B.", "B"),
        ("The most likely diagnosis is meningitis, given the neck stiffness.", "B"),
        ("D. Sinusitis", "D"),
        ("I am not sure.", None),
    ],
)
def test_extract_choice(text, choice):
    from medtune.train.probe import extract_choice

    assert extract_choice(text) == choice


def test_logits_on_labelled_positions_only_give_the_same_loss_and_gradients(tiny_llama_dir, smollm2_tokenizer, tmp_path):
    """The padded CPU path projects onto the vocabulary only where a label is: same loss, same LoRA
    gradients as the full logits, over a padded batch with prompt and pad positions masked."""
    from medtune.config import LoraConfig, ModelConfig
    from medtune.modeling import load_base_model
    from medtune.train.trainer import build_trainer, prepare_lora_model

    examples = make_examples(smollm2_tokenizer, 4)
    base = load_base_model(ModelConfig(base=str(tiny_llama_dir)))
    with torch.no_grad():
        base.get_input_embeddings().weight.mul_(30.0)  # peaked logits, so a wrong position would show
    model = prepare_lora_model(base, LoraConfig(dropout=0.0))
    for name, param in model.named_parameters():
        if "lora_B" in name:  # B starts at zero: give the adapter a nonzero path so both factors get gradients
            torch.nn.init.normal_(param, std=0.02)
    plan = plan_training(TrainConfig(), device_type="cpu")
    trainer = build_trainer(model, examples, None, train=TrainConfig(batch_size=4, save_steps=1000), plan=plan, seed=0,
                            output_dir=tmp_path / "ckpt", pad_token_id=smollm2_tokenizer.pad_token_id)
    assert trainer.labels_only_logits
    batch = trainer.data_collator([dict(e) for e in examples])
    batch.pop("num_real_tokens", None)
    labels = batch["labels"]
    assert (labels == -100).float().mean() > 0.3 and (labels != -100).any()  # prompts and padding are masked
    n_items = int((labels[..., 1:] != -100).sum())

    def loss_and_grads(labels_only: bool):
        trainer.labels_only_logits = labels_only
        model.zero_grad()
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(n_items))
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full_loss, full_grads = loss_and_grads(False)
    kept_loss, kept_grads = loss_and_grads(True)
    assert kept_loss == pytest.approx(full_loss, rel=1e-5)
    assert set(kept_grads) == set(full_grads) and len(full_grads) > 0
    for name, grad in full_grads.items():
        torch.testing.assert_close(kept_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_liger_leaves_all_but_the_fused_loss_to_torch_compile():
    from medtune.train.trainer import TrainPlan, liger_kernel_config

    # The kernels Liger patches in depend on compiling only (precision plays no part: None here).
    compiled = TrainPlan("cuda", None, True, VARLEN, True, True)
    eager = TrainPlan("cuda", None, True, VARLEN, False, True)
    assert liger_kernel_config(compiled) == {"rms_norm": False, "swiglu": False, "rope": False}
    assert liger_kernel_config(eager) == {"rms_norm": True, "swiglu": True, "rope": True}
