"""The shared workload of the peer comparison: the Llama shapes, the adapter shapes, the synthetic
examples (medtune.train.measure's length mix, the same token ids for every system), the held-out
loss every system is scored with, the one random-weight base every arm loads (`make-base`), and a
collator wrapper that counts real tokens for the systems that do not count them themselves."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from medtune.train.measure import count_params, synthetic_examples

SEED = 0
N_EXAMPLES = 2048  # as ../shared/bench; 1.08M tokens, more than every arm's budget
N_HELDOUT = 24
TOKENS_PER_MICRO_BATCH = 16384
ACCUMULATION = 4
LEARNING_RATE = 2e-4
BOS, EOT, PAD = 128000, 128009, 128004
LORA_SHAPES = {
    "qkvo-r8": dict(r=8, alpha=16, dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    "all-r16": dict(r=16, alpha=32, dropout=0.05,
                    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
}
SHAPES = {  # Llama 3.x shapes; N is counted from the built model
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=True, rope_factor=32.0),
    "3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
               num_key_value_heads=8, tie_word_embeddings=True, rope_factor=32.0),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=False, rope_factor=8.0),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True, rope_factor=32.0),
}


def lora_shape(args) -> dict:
    """The adapter of --lora, with --lora-dropout over its dropout when given."""
    shape = dict(LORA_SHAPES[args.lora])
    if args.lora_dropout is not None:
        shape["dropout"] = args.lora_dropout
    return shape


def log(message: str) -> None:
    print(message, flush=True)


def llama_config(shape: str):
    from transformers import LlamaConfig

    spec = dict(SHAPES[shape])
    factor = spec.pop("rope_factor")
    tiny = shape == "tiny"
    return LlamaConfig(
        vocab_size=1024 if tiny else 128256,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": factor, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        bos_token_id=1 if tiny else BOS,
        eos_token_id=2 if tiny else EOT,
        pad_token_id=0 if tiny else PAD,
        use_cache=False,
        **spec,
    )


def special_ids(tiny: bool) -> tuple[int, int, int]:
    return (1, 2, 0) if tiny else (BOS, EOT, PAD)



def workload(args, vocab: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(training examples, held-out examples); --tiny shortens both for a CPU check."""
    max_len = 256 if args.tiny else None
    train = synthetic_examples(args.examples, vocab, SEED, max_len)
    heldout = synthetic_examples(N_HELDOUT, vocab, SEED + 100, 256 if args.tiny else 1024)
    return train, heldout


def micro_batch_tokens(args) -> int:
    return args.tokens_per_micro_batch or (2048 if args.tiny else TOKENS_PER_MICRO_BATCH)


@torch.no_grad()
def heldout_loss(model, heldout: list[np.ndarray], device: torch.device) -> float:
    """Token-weighted next-token loss over the held-out examples, each run alone (no packing)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    for tokens in heldout:
        ids = torch.as_tensor(tokens, device=device)[None]
        with autocast:
            logits = model(input_ids=ids).logits[0, :-1].float()
        total += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
        count += ids.shape[1] - 1
    model.train(was_training)
    return total / count


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def device_for(args) -> torch.device:
    return torch.device("cpu" if args.tiny else "cuda")


# --------------------------------------------------------------------------- make-base


def synthetic_tokenizer(vocab: int, tiny: bool):
    """A word-level fast tokenizer over the whole vocabulary ("t<id>"), with Llama 3's special ids.

    The benchmarks feed token ids directly; the peers' loaders still want a tokenizer in the folder.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    bos, eot, pad = special_ids(tiny)
    names = {bos: "<|begin_of_text|>", eot: "<|eot_id|>", pad: "<|finetune_right_pad_id|>", 3: "<unk>"}
    vocabulary = {names.get(i, f"t{i}"): i for i in range(vocab)}
    core = Tokenizer(models.WordLevel(vocab=vocabulary, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=names[bos], eos_token=names[eot],
                                        pad_token=names[pad], unk_token="<unk>")
    tokenizer.add_special_tokens({"additional_special_tokens": [names[bos], names[eot], names[pad]]})
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}{{ m['role'] + ' ' + m['content'] + eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}assistant {% endif %}"
    )
    tokenizer.model_max_length = 131072
    return tokenizer


def make_base(args) -> None:
    """The one random-weight base every arm loads: bf16 safetensors + synthetic tokenizer in --dir."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    started = time.perf_counter()
    config = llama_config(args.shape)
    torch.manual_seed(SEED)
    with torch.device(device_for(args)):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                               pad_token_id=config.pad_token_id)
    out = Path(args.dir)
    model.save_pretrained(out, safe_serialization=True)
    synthetic_tokenizer(config.vocab_size, args.shape == "tiny").save_pretrained(out)
    size = sum(p.stat().st_size for p in out.iterdir()) / 2**30
    log(f"base {args.shape}: {count_params(model):,} parameters, {size:.2f} GiB in {out} ({time.perf_counter() - started:.1f} s)")


# --------------------------------------------------------------------------- token counting for peers


class CountingCollator:
    """Wraps a collator and counts real (non-pad) tokens of every batch it builds.

    accelerate's data loader builds one batch ahead, so `real` runs one micro-batch ahead of
    training (a shift of the timing window, not a longer one); `trained(n)` counts the first n.
    """

    def __init__(self, inner, pad_id: int, attention_key: str = "attention_mask"):
        self.inner, self.pad_id, self.attention_key, self.real = inner, pad_id, attention_key, 0
        self.batches: list[int] = []

    def __call__(self, features):
        batch = self.inner(features)
        if self.attention_key in batch:
            count = int(batch[self.attention_key].sum())
        else:  # padding-free: one row, no pad ids inside the data
            count = int((batch["input_ids"] != self.pad_id).sum())
        self.real += count
        self.batches.append(count)
        return batch

    def trained(self, micro_batches: int) -> int:
        return sum(self.batches[:micro_batches])

    def __getattr__(self, name):
        return getattr(self.inner, name)

def full_param_count(config) -> int:
    """N of the full-precision model of `config` (a 4-bit model's own count is of packed bytes)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return count_params(AutoModelForCausalLM.from_config(config))

