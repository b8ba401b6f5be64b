"""The llama.cpp backend on a GGUF of the tiny model gives the scores transformers gives."""

from __future__ import annotations

import pytest

from medtune import llamacpp
from medtune.tasks import Item

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not llamacpp.runtime_available(), reason="llama.cpp runtime not installed (scripts/setup-llama-cpp.sh)"),
]

YNM = {k: k for k in ("yes", "no", "maybe")}


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama_dir, tmp_path_factory):
    try:
        llamacpp.find_converter()
    except Exception as exc:  # noqa: BLE001 - skip with the set-up hint
        pytest.skip(str(exc))
    return llamacpp.convert_to_gguf(tiny_llama_dir, tmp_path_factory.mktemp("gguf") / "tiny-F16.gguf", "f16")


def _items() -> list[Item]:
    return [Item(str(i), "Does it work? " * (1 + 2 * i), dict(YNM), "yes", context="Some abstract. " * i) for i in range(4)]


def test_llamacpp_scores_match_transformers(tiny_llama_dir, tiny_gguf):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medtune.eval.backends import TransformersBackend, open_llamacpp
    from medtune.eval.scoring import score, score_loglik

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    tokenizer.pad_token = "<|endoftext|>"
    hf = TransformersBackend(AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir)).eval(), tokenizer, batch_size=4)
    gguf = open_llamacpp(tiny_gguf, tokenizer, n_ctx=512, n_threads=2)
    try:
        items = _items()
        expected = score_loglik(hf, items)
        got = score_loglik(gguf, items)
        again = score_loglik(gguf, list(reversed(items)))  # prefix reuse between prompts must not leak state
        for e, g, a in zip(expected, got, reversed(again)):
            assert g.scores == pytest.approx(e.scores, abs=0.02)
            assert a.scores == pytest.approx(g.scores, abs=1e-3)
            assert g.predicted == e.predicted
        tokens = [gguf.tokenizer(" yes", add_special_tokens=False)["input_ids"]]
        prompts = [gguf.tokenizer("Hello there", add_special_tokens=False)["input_ids"]]
        assert gguf.continuation_logprobs(prompts, tokens)[0] == pytest.approx(
            hf.continuation_logprobs(prompts, tokens)[0], abs=0.02)
        replies_gguf = score(gguf, items[:2], "cot", max_new_tokens=6)
        replies_hf = score(hf, items[:2], "cot", max_new_tokens=6)
        assert [r.output for r in replies_gguf] == [r.output for r in replies_hf]  # greedy, same tokens
    finally:
        gguf.close()


def test_gguf_targets_beside_transformers_targets_give_the_same_results(tiny_llama_dir, tiny_gguf, tmp_path, monkeypatch):
    """eval.parallel_gguf: the llama.cpp thread beside the transformers targets changes no figure and no
    row order (forced on here: it is only chosen when transformers runs on a GPU)."""
    from medtune.config import BenchmarkSpec, EvalConfig, ModelConfig
    from medtune.eval import stage

    targets = [stage.Target("gguf:F16", "gguf", ModelConfig(base=str(tiny_llama_dir)), gguf=tiny_gguf,
                            tokenizer_dir=tiny_llama_dir),
               stage.Target("base", "hf", ModelConfig(base=str(tiny_llama_dir)))]
    specs = [BenchmarkSpec(name="medtune_sample", limit=6)]
    eval_cfg = EvalConfig(benchmarks=specs, device="cpu", dtype="fp32", n_threads=1)
    one_by_one = stage.evaluate_targets(targets, specs, eval_cfg, tmp_path / "sequential")
    threads = []
    real = stage._evaluate_target
    monkeypatch.setattr(stage, "_side_by_side", lambda targets, cfg: [0])
    monkeypatch.setattr(stage, "_evaluate_target", lambda target, *a: threads.append(
        (target.label, __import__("threading").current_thread().name)) or real(target, *a))
    side = stage.evaluate_targets(targets, specs, eval_cfg, tmp_path / "side")
    assert dict(threads)["gguf:F16"].startswith("llama.cpp") and dict(threads)["base"] == "MainThread"
    strip = lambda rows: [{k: v for k, v in r.to_json().items() if k not in ("seconds", "items_per_second")} for r in rows]  # noqa: E731
    assert strip(side.rows) == strip(one_by_one.rows) and [r.artifact for r in side.rows] == ["gguf:F16", "base"]
    assert side.comparisons == one_by_one.comparisons
