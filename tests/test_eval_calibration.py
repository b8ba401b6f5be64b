"""Contextual calibration (Zhao et al. 2021): the arithmetic checked by hand, a tiny model whose
answer does not depend on its input (so calibration must flatten it), and the eval stage's extra
row beside the raw one."""

from __future__ import annotations

import json
import math

import pytest
import torch

from medtune.config import BenchmarkSpec, EvalConfig, ModelConfig
from medtune.eval.backends import TransformersBackend
from medtune.eval.calibration import (
    CALIBRATED_MODE,
    calibrate,
    calibrated_predictions,
    content_free_items,
    content_free_prior,
)
from medtune.eval.scoring import Prediction, prompt_text, score_loglik
from medtune.tasks import Item
from tests.test_eval_scoring import make_biased_model

YNM = {k: k for k in ("yes", "no", "maybe")}
MC = {"A": "Ulnar", "B": "Radial", "C": "Median", "D": "Axillary"}


def test_calibration_arithmetic_by_hand():
    # p = softmax(-0.2, -1.8, -3.0) = (0.8140, 0.1643, 0.0217... ) ; divided by the prior (0.9, 0.05, 0.05):
    # yes 0.8187/0.9 = 0.910, no 0.1653/0.05 = 3.306, maybe 0.0498/0.05 = 0.996 (before renormalising) -> "no".
    raw = Prediction("1", "no", "yes", False, scores={"yes": -0.2, "no": -1.8, "maybe": -3.0})
    (calibrated,) = calibrate([raw], {"yes": 0.9, "no": 0.05, "maybe": 0.05})
    assert calibrated.predicted == "no" and calibrated.correct
    q = [math.exp(-0.2) / 0.9, math.exp(-1.8) / 0.05, math.exp(-3.0) / 0.05]
    assert calibrated.scores == pytest.approx({k: math.log(v / sum(q)) for k, v in zip(YNM, q)}, abs=1e-4)
    assert raw.predicted == "yes"  # the raw prediction is left as it was
    # A uniform prior changes nothing.
    (same,) = calibrate([raw], {"yes": 1 / 3, "no": 1 / 3, "maybe": 1 / 3})
    assert same.predicted == "yes"
    with pytest.raises(ValueError, match="no loglik scores"):
        calibrate([Prediction("2", "yes", "yes", True)], {"yes": 1.0})


def test_content_free_items_keep_layout_and_labels(smollm2_tokenizer):
    pubmedqa = Item("9", "Does X help?", dict(YNM), "yes", context="An abstract.", benchmark="pubmedqa")
    fillers = content_free_items(pubmedqa)
    assert [i.question for i in fillers] == ["N/A", "", "[MASK]"]
    assert [i.context for i in fillers] == ["N/A", "", "[MASK]"] and all(i.options == YNM for i in fillers)
    mcq = content_free_items(Item("3", "Which nerve?", dict(MC), "B", benchmark="medtune_sample"))
    assert mcq[0].options == {"A": "N/A", "B": "N/A", "C": "N/A", "D": "N/A"} and mcq[0].context == ""
    text = prompt_text(smollm2_tokenizer, mcq[0], "loglik")
    assert "Question: N/A" in text and "A. N/A" in text and text.endswith("The answer is")


def test_input_blind_model_is_flattened(tmp_path, smollm2_tokenizer):
    """A model that puts most probability on ' B' whatever it reads carries no information about the
    question: its content-free prior equals every item's label distribution, so after calibration
    each item's four labels are equally likely (log 1/4 each)."""
    from transformers import AutoModelForCausalLM

    folder = make_biased_model(smollm2_tokenizer, tmp_path / "biased", "B")
    backend = TransformersBackend(AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval(),
                                  smollm2_tokenizer, batch_size=2)
    items = [Item(str(k), f"Question {k}?", dict(MC), "ABCD"[k], benchmark="medtune_sample") for k in range(4)]
    raw = score_loglik(backend, items)
    assert [p.predicted for p in raw] == ["B"] * 4
    prior = content_free_prior(backend, items[0])
    assert prior["B"] > 0.5 and sum(prior.values()) == pytest.approx(1.0)
    calibrated, reported = calibrated_predictions(backend, items, raw)
    assert reported == pytest.approx(prior, abs=1e-6)
    for p in calibrated:
        assert p.scores == pytest.approx({label: math.log(0.25) for label in MC}, abs=1e-3)


def test_eval_stage_adds_a_calibrated_row(tmp_path, tiny_llama_dir, smollm2_tokenizer):
    from medtune.eval.stage import Target, evaluate_targets

    biased = make_biased_model(smollm2_tokenizer, tmp_path / "biased", "B")
    spec = BenchmarkSpec(name="medtune_sample", limit=6)
    cfg = EvalConfig(benchmarks=[spec], artifacts=["base", "merged"], device="cpu", dtype="fp32", calibrate=True)
    targets = [Target("base", "hf", ModelConfig(base=str(tiny_llama_dir))),
               Target("merged", "hf", ModelConfig(base=str(tiny_llama_dir)), merged=biased)]
    result = evaluate_targets(targets, [spec], cfg, tmp_path / "eval")
    modes = [(r.artifact, r.mode) for r in result.rows]
    assert modes == [("base", "loglik"), ("base", CALIBRATED_MODE), ("merged", "loglik"), ("merged", CALIBRATED_MODE)]
    calibrated = result.rows[3]
    assert set(calibrated.content_free_prior) == set(MC) and calibrated.n == 6
    assert result.rows[2].predicted["B"] == 6  # raw: the biased model always says B
    assert {c["mode"] for c in result.comparisons} == {"loglik", CALIBRATED_MODE}  # merged vs base, each mode
    out = tmp_path / "eval"
    lines = (out / "predictions" / f"merged__medtune_sample__{CALIBRATED_MODE}.jsonl").read_text().splitlines()
    assert len(lines) == 6 and "scores" in json.loads(lines[0])
    report = (out / "report.md").read_text()
    assert f"| merged | transformers | medtune_sample | {CALIBRATED_MODE} |" in report and "Zhao et al. 2021" in report
    assert json.loads((out / "results.json").read_text())["calibrate"] is True


def test_config_fields():
    assert EvalConfig().calibrate is False and EvalConfig().prompt_style == "chat"
    with pytest.raises(ValueError, match="loglik only"):
        EvalConfig(prompt_style="lm_eval", modes=["loglik", "cot"])
    assert EvalConfig(prompt_style="lm_eval").modes == ["loglik"]
