"""loglik scoring on tiny models: a model built to prefer one answer must pick it; padding and
batching must not change a score; statistics and the report files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medtune.eval.backends import TransformersBackend
from medtune.eval.metrics import class_report
from medtune.eval.report import write_figure, write_report, write_results
from medtune.eval.rows import EvalRow
from medtune.rundir import EvalFiles
from medtune.eval.scoring import candidate_tokens, encode, prompt_text, score, score_loglik, stop_token_ids
from medtune.eval.stats import accuracy, bootstrap_ci
from medtune.tasks import Item

YNM = {k: k for k in ("yes", "no", "maybe")}
MC = {"A": "Ulnar", "B": "Radial", "C": "Median", "D": "Axillary"}


def make_biased_model(tokenizer, out_dir: Path, favourite: str) -> Path:
    """A tiny Llama that, after any prompt, puts almost all probability on the token ' <favourite>'.

    Every input embedding is the same vector and the blocks add nothing, so the final hidden state
    is that vector (normalised) whatever the prompt; the output row of the favourite token points
    along it and every other row is zero.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    target = tokenizer(" " + favourite, add_special_tokens=False)["input_ids"]
    assert len(target) == 1
    with torch.no_grad():
        direction = torch.ones(config.hidden_size)
        model.model.embed_tokens.weight.copy_(direction.expand_as(model.model.embed_tokens.weight))
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        model.lm_head.weight[target[0]] = direction * 3.0
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def random_backend(tiny_llama_dir, smollm2_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32).eval()
    smollm2_tokenizer.pad_token = "<|endoftext|>"
    return TransformersBackend(model, smollm2_tokenizer, batch_size=3)


def _items(n: int, options: dict[str, str], answers: list[str]) -> list[Item]:
    return [Item(str(i), "Is it so? " * (1 + 3 * i), dict(options), answers[i % len(answers)], context="ctx " * i)
            for i in range(n)]


def test_biased_model_picks_its_answer(tmp_path, smollm2_tokenizer):
    from transformers import AutoModelForCausalLM

    folder = make_biased_model(smollm2_tokenizer, tmp_path / "biased", "B")
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    backend = TransformersBackend(model, smollm2_tokenizer, batch_size=2)
    items = _items(5, MC, ["B", "A", "B", "C", "D"])
    predictions = score_loglik(backend, items)
    assert [p.predicted for p in predictions] == ["B"] * 5
    assert [p.correct for p in predictions] == [True, False, True, False, False]
    assert all(p.scores["B"] > -0.5 > p.scores["A"] for p in predictions)


def test_scores_do_not_depend_on_padding_or_batch(random_backend):
    items = _items(5, YNM, ["yes", "no", "maybe"])
    batched = score_loglik(random_backend, items)
    random_backend.batch_size = 1
    try:
        alone = score_loglik(random_backend, items)
    finally:
        random_backend.batch_size = 3
    for a, b in zip(batched, alone):
        assert a.scores == pytest.approx(b.scores, abs=1e-3)


def test_first_token_scores_equal_full_continuation(random_backend):
    tokenizer = random_backend.tokenizer
    items = _items(3, YNM, ["yes"])
    prompts = [encode(tokenizer, prompt_text(tokenizer, item, "loglik")) for item in items]
    candidates = candidate_tokens(tokenizer, prompt_text(tokenizer, items[0], "loglik"), list(YNM))
    assert all(len(c) == 1 for c in candidates)
    first = random_backend.next_token_logprobs(prompts, [c[0] for c in candidates])
    for k, cand in enumerate(candidates):
        full = random_backend.continuation_logprobs(prompts, [cand] * len(prompts))
        assert full == pytest.approx([row[k] for row in first], abs=1e-4)


def test_prompt_uses_the_chat_template_once(random_backend):
    tokenizer = random_backend.tokenizer
    item = _items(1, MC, ["A"])[0]
    text = prompt_text(tokenizer, item, "loglik")
    assert text.count("<|im_start|>assistant\n") == 1 and text.endswith("<|im_start|>assistant\nThe answer is")
    assert "<|im_end|>" not in text.split("assistant\n")[-1]
    assert prompt_text(tokenizer, item, "cot").endswith("<|im_start|>assistant\n")
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(tokenizer)


def test_cot_mode_generates_and_counts_unparsed(random_backend):
    predictions = score(random_backend, _items(2, YNM, ["yes"]), "cot", max_new_tokens=4)
    assert len(predictions) == 2 and all(isinstance(p.output, str) for p in predictions)
    assert all(p.correct == (p.predicted == "yes") for p in predictions)


def test_bootstrap_ci_brackets_the_accuracy():
    correct = [True] * 60 + [False] * 40
    low, high = bootstrap_ci(correct, samples=2000, seed=0)
    assert accuracy(correct) == 0.6
    assert 0.49 < low < 0.6 < high < 0.71
    assert bootstrap_ci(correct, samples=2000, seed=0) == (low, high)
    assert bootstrap_ci([]) == (0.0, 0.0)


def test_report_files(tmp_path):
    rows = [
        EvalRow.from_json({
            "artifact": artifact, "backend": "transformers", "benchmark": "pubmedqa", "mode": "loglik", "n": 10,
            "correct": 5, "accuracy": acc, "ci95": [acc - 0.1, acc + 0.1], "parse_failures": 0,
            "parse_failure_rate": 0.0, "seconds": 1.0, "items_per_second": 10.0, "chance": 1 / 3,
            "option_counts": {"3": 10},
            **class_report(["yes"] * 6 + ["no"] * 4, ["yes"] * 5 + ["no"] * 5, ("yes", "no", "maybe"))})
        for artifact, acc in (("base", 0.5), ("gguf:Q8_0", 0.45))
    ]
    files = EvalFiles(tmp_path)
    write_results(files, rows, {"run": "x"})
    write_report(files, rows, {"bootstrap_samples": 1000})
    write_figure(files, rows)
    assert files.accuracy_plot.stat().st_size > 1000
    assert json.loads(files.results.read_text())["results"][1]["artifact"] == "gguf:Q8_0"
    report = files.report.read_text()
    assert "| base | transformers | pubmedqa | loglik | 50.0 | 40.0–60.0 | 0.899 | yes 83% / no 100% / maybe — | yes 5 / no 5 / maybe 0 **(50.0% is below the majority-label line (60.0%): worse than always giving one answer)** | 10 |" in report
    # the majority baseline and chance (three options per item)
    assert "| pubmedqa | 10 | 3 options | yes 6 / no 4 / maybe 0 | yes | 60.0 | 0.375 | 33.3 |" in report


def test_paired_difference_counts_only_disagreements():
    from medtune.eval.stats import paired_difference

    same = paired_difference([True, False] * 50, [True, False] * 50)
    assert same == {"n": 100, "difference": 0.0, "ci95": [0.0, 0.0], "only_a": 0, "only_b": 0}
    # A fixes 20 of B's errors and breaks 5 of its successes: +15 points, interval clear of zero.
    b = [True] * 50 + [False] * 50
    a = [True] * 45 + [False] * 5 + [True] * 20 + [False] * 30
    result = paired_difference(a, b, samples=2000, seed=1)
    assert result["difference"] == 0.15 and result["only_a"] == 20 and result["only_b"] == 5
    assert 0.05 < result["ci95"][0] < 0.15 < result["ci95"][1] < 0.25
    assert paired_difference(a, b, samples=2000, seed=1) == result  # deterministic for a seed
    with pytest.raises(ValueError, match="same items"):
        paired_difference([True], [True, False])


def test_each_artifact_is_compared_with_the_one_it_was_made_from():
    from medtune.eval.compare import paired_comparisons, reference_of

    labels = ["base", "merged", "gguf:F16", "gguf:Q4_K_M", "gguf:Q8_0"]
    assert [reference_of(label, labels) for label in labels] == [None, "base", "merged", "gguf:F16", "gguf:F16"]
    assert reference_of("gguf:Q8_0", ["base", "gguf:Q8_0"]) == "base"
    assert reference_of("adapter", ["adapter"]) is None

    def rows_and_predictions(label, answers):
        key = f"{label.replace(':', '-')}__pubmedqa__loglik"
        preds = [{"id": str(i), "correct": ok} for i, ok in enumerate(answers)]
        row = EvalRow(label, "transformers", "m", "pubmedqa", "loglik", n=len(answers), correct=sum(answers),
                      accuracy=sum(answers) / len(answers), ci95=(0.0, 1.0))
        return row, {key: preds}

    base_row, base_preds = rows_and_predictions("base", [False, False, True, True])
    merged_row, merged_preds = rows_and_predictions("merged", [True, True, True, False])
    comparisons = paired_comparisons([base_row, merged_row], {**base_preds, **merged_preds})
    assert len(comparisons) == 1
    c = comparisons[0]
    assert (c["artifact"], c["versus"], c["n"], c["difference"]) == ("merged", "base", 4, 0.25)
    assert (c["only_artifact_right"], c["only_versus_right"]) == (2, 1)
