"""Packed batches: exact collator output, and packed logits equal to each example run alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medtune.train.packing import IGNORE_INDEX, ExampleRows, PackedCollator, PackedDataset, PaddedCollator, pack_by_length


def test_pack_by_length_uses_every_example_once_within_budget():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 300, size=500).tolist()
    bins = pack_by_length(lengths, 1024, seed=3)
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 1024 for b in bins)
    # best-fit decreasing leaves little room: total bins within 3% of the lower bound
    assert len(bins) <= int(np.ceil(sum(lengths) / 1024) * 1.03) + 1
    assert bins == pack_by_length(lengths, 1024, seed=3)  # deterministic: resumable data position


def test_pack_by_length_gives_oversized_example_its_own_bin():
    bins = pack_by_length([10, 5000, 20], 1024)
    assert [1] in bins and sorted(i for b in bins for i in b) == [0, 1, 2]


def _example(ids, labels):
    return {"input_ids": np.array(ids, dtype=np.int64), "labels": np.array(labels, dtype=np.int64)}


def test_packed_collator_output_exactly():
    a = _example([5, 6, 7], [-100, 6, 7])
    b = _example([8, 9], [8, 9])  # first label is masked by the collator: it would be predicted from `a`
    c = _example([10, 11, 12, 13], [-100, -100, 12, 13])
    batch = PackedCollator()([[a, b, c]])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10, 11, 12, 13]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9, IGNORE_INDEX, IGNORE_INDEX, 12, 13]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 5, 9]
    assert batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["cu_seq_lens_k"].tolist() == [0, 3, 5, 9]
    assert batch["max_length_q"] == batch["max_length_k"] == 4
    assert batch["num_real_tokens"] == 9
    assert "attention_mask" not in batch  # padding-free: nothing to mask


def test_padded_collator_pads_with_pad_id_and_ignores_pads_in_loss():
    batch = PaddedCollator(pad_token_id=99)([_example([1, 2, 3], [-100, 2, 3]), _example([4], [4])])
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 99, 99]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["num_real_tokens"] == 4


def test_packed_dataset_items_are_bins_of_rows():
    rows = [_example(list(range(n)), list(range(n))) for n in (3, 4, 5, 6)]
    ds = PackedDataset(ExampleRows(rows), max_tokens=9, seed=0)
    seen = sorted(len(ex["input_ids"]) for i in range(len(ds)) for ex in ds[i])
    assert seen == [3, 4, 5, 6]
    assert all(sum(len(ex["input_ids"]) for ex in ds[i]) <= 9 for i in range(len(ds)))


@pytest.fixture(scope="module")
def tiny_model_and_examples(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    rng = np.random.default_rng(1)
    vocab = model.config.vocab_size
    examples = [_example(ids, ids) for ids in (rng.integers(10, vocab, size=n).tolist() for n in (7, 13, 4, 9))]
    return model, examples


def _separate_logits(model, examples):
    with torch.no_grad():
        return [model(input_ids=torch.as_tensor(ex["input_ids"])[None]).logits[0] for ex in examples]


def test_packed_logits_equal_per_example_logits(tiny_model_and_examples):
    """No cross-contamination: each example in a packed row sees only itself, at positions from 0."""
    from medtune.train.attention import register_varlen_attention

    model, examples = tiny_model_and_examples
    expected = _separate_logits(model, examples)
    batch = PackedCollator()([examples])
    batch.pop("num_real_tokens")
    model.set_attn_implementation(register_varlen_attention())
    try:
        with torch.no_grad():
            packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
            # the training path: loss of the packed row equals the token-weighted per-example loss
            packed_loss = model(**batch).loss
    finally:
        model.set_attn_implementation("sdpa")
    bounds = batch["cu_seq_lens_q"].tolist()
    for ex_logits, start, end in zip(expected, bounds[:-1], bounds[1:]):
        torch.testing.assert_close(packed[start:end], ex_logits, rtol=1e-4, atol=1e-4)
    # and the check has teeth: without the boundaries, later examples attend to earlier ones
    with torch.no_grad():
        leaky = model(input_ids=batch["input_ids"]).logits[0]
    assert not torch.allclose(leaky[bounds[1] : bounds[2]], expected[1], atol=1e-3)
    losses, counts = [], []
    for ex, logits in zip(examples, expected):
        targets = torch.as_tensor(ex["labels"][1:])
        losses.append(torch.nn.functional.cross_entropy(logits[:-1], targets, reduction="sum"))
        counts.append(len(targets))
    torch.testing.assert_close(packed_loss, sum(losses) / sum(counts), rtol=1e-4, atol=1e-4)


def test_varlen_attention_matches_reference_with_gqa():
    """The varlen function (CPU reference kernel here) equals per-example causal SDPA, GQA 4/2 heads."""
    import torch.nn.functional as F

    from medtune.train.attention import register_varlen_attention, varlen_attention_forward

    register_varlen_attention()
    torch.manual_seed(0)
    lengths = [5, 1, 8]
    total = sum(lengths)
    q = torch.randn(1, 4, total, 16)
    k = torch.randn(1, 2, total, 16)
    v = torch.randn(1, 2, total, 16)
    cu = torch.tensor([0, 5, 6, 14], dtype=torch.int32)
    out, _ = varlen_attention_forward(None, q, k, v, None, scaling=0.25, cu_seq_lens_q=cu, max_length_q=8)
    assert out.shape == (1, total, 4, 16)
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
        ref = F.scaled_dot_product_attention(
            q[:, :, start:end], k[:, :, start:end].repeat_interleave(2, 1), v[:, :, start:end].repeat_interleave(2, 1),
            is_causal=True, scale=0.25,
        )
        torch.testing.assert_close(out[0, start:end], ref[0].transpose(0, 1), rtol=1e-5, atol=1e-5)
    # boundaries derived from restarting position ids give the same result
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 0, 1, 2, 3, 4, 5, 6, 7]])
    out2, _ = varlen_attention_forward(None, q, k, v, None, scaling=0.25, position_ids=positions)
    torch.testing.assert_close(out2, out)
