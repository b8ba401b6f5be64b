"""Model backends for evaluation: transformers (base, base + adapter, merged) and llama.cpp (GGUF).

Both take token ids rendered by the same Hugging Face tokenizer and chat template, so every
artifact sees identical prompts, and both answer the same three questions:
- `next_token_logprobs`: log-probabilities of given tokens right after each prompt (loglik mode);
- `continuation_logprobs`: summed log-probability of a multi-token continuation;
- `generate`: a greedy reply (cot mode), stopping at the end-of-turn token.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtune.errors import ModelError, ToolError
from medtune.tokenizer import fix_pad_token, load_tokenizer, resolve_model_source


@dataclass
class TransformersBackend:
    """A transformers causal LM; batches are left-padded with explicit position ids, so padding
    never changes a score and the last position of every row is its own last token."""

    model: Any
    tokenizer: Any
    device: str = "cpu"
    batch_size: int = 8
    name: str = "transformers"

    def _batch(self, prompts: Sequence[Sequence[int]]):
        import torch

        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
            mask[row, width - len(prompt):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return ids.to(self.device), mask.to(self.device), positions.to(self.device)

    def _last_logits(self, prompts: Sequence[Sequence[int]], keep: int):
        import torch

        ids, mask, positions = self._batch(prompts)
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep, use_cache=False)
        return torch.log_softmax(out.logits.float(), dim=-1)

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], tokens: Sequence[int]) -> list[list[float]]:
        """For each prompt, the log-probability of each of `tokens` as the next token."""
        logprobs = self._last_logits(prompts, keep=1)[:, -1, :]
        return logprobs[:, list(tokens)].tolist()

    def continuation_logprobs(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]) -> list[float]:
        """Summed log-probability of continuations[i] after prompts[i]."""
        longest = max(len(c) for c in continuations)
        rows = [list(p) + list(c) for p, c in zip(prompts, continuations)]
        logprobs = self._last_logits(rows, keep=longest + 1)
        totals = []
        for row, cont in enumerate(continuations):
            # logits at position t predict token t+1; the continuation is the last len(cont) tokens.
            start = logprobs.shape[1] - 1 - len(cont)
            totals.append(sum(float(logprobs[row, start + k, token]) for k, token in enumerate(cont)))
        return totals

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_ids: Sequence[int]) -> list[str]:
        """Greedy replies, stopping at any of `stop_ids` (or after max_new_tokens)."""
        import torch

        ids, mask, _ = self._batch(prompts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else stop_ids[0]
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=list(stop_ids),
                pad_token_id=pad,
            )
        return [self.tokenizer.decode(row[ids.shape[1]:], skip_special_tokens=True) for row in out]

    def close(self) -> None:
        self.model = None


@dataclass
class LlamaCppBackend:
    """A GGUF file in llama.cpp (llama-cpp-python), one prompt at a time.

    Consecutive prompts reuse the KV cache of their common prefix (the system prompt and
    instruction), which llama.cpp keeps between calls.
    """

    llm: Any
    tokenizer: Any
    batch_size: int = 1
    name: str = "llama.cpp"

    def _eval(self, tokens: Sequence[int]) -> None:
        tokens = list(tokens)
        if len(tokens) > self.llm.n_ctx():
            raise ToolError(f"prompt of {len(tokens)} tokens exceeds the llama.cpp context ({self.llm.n_ctx()})")
        done = self.llm.input_ids[: self.llm.n_tokens].tolist()
        common = 0
        for a, b in zip(done, tokens):
            if a != b:
                break
            common += 1
        # Keep the shared prefix in the KV cache (eval() drops everything after n_tokens), but
        # re-evaluate at least the last token so its logits are fresh.
        self.llm.n_tokens = min(common, len(tokens) - 1)
        self.llm.eval(tokens[self.llm.n_tokens:])

    def _last_logprobs(self):
        import llama_cpp
        import numpy as np

        # Without logits_all llama-cpp-python keeps no scores; read the last row from the context.
        pointer = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        logits = np.ctypeslib.as_array(pointer, shape=(self.llm.n_vocab(),)).astype(np.float64)
        top = logits.max()
        return logits - (top + math.log(np.exp(logits - top).sum()))

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], tokens: Sequence[int]) -> list[list[float]]:
        results = []
        for prompt in prompts:
            self._eval(prompt)
            logprobs = self._last_logprobs()
            results.append([float(logprobs[t]) for t in tokens])
        return results

    def continuation_logprobs(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]) -> list[float]:
        totals = []
        for prompt, cont in zip(prompts, continuations):
            self._eval(prompt)
            total = 0.0
            for token in cont:
                total += float(self._last_logprobs()[token])
                self.llm.eval([token])
            totals.append(total)
        return totals

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_ids: Sequence[int]) -> list[str]:
        replies = []
        stops = set(stop_ids) | {int(self.llm.token_eos())}
        for prompt in prompts:
            self._eval(prompt)
            produced: list[int] = []
            for _ in range(max_new_tokens):
                token = int(self._last_logprobs().argmax())
                if token in stops:
                    break
                produced.append(token)
                if self.llm.n_tokens + 1 >= self.llm.n_ctx():
                    break
                self.llm.eval([token])
            replies.append(self.tokenizer.decode(produced, skip_special_tokens=True))
        return replies

    def close(self) -> None:
        if self.llm is not None and hasattr(self.llm, "close"):
            self.llm.close()
        self.llm = None


# --- loading --------------------------------------------------------------------------------------


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'. Raises ModelError for cuda without a GPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError("eval.device is cuda but no GPU is visible; use --device cpu")
    return device


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with bf16 matrix instructions (AVX512-BF16 or AMX-BF16), where torch's oneDNN
    runs bf16 matrix products several times faster than fp32 (8x measured on a 2-core AMD EPYC
    with AVX512-BF16); without them bf16 is emulated and slower than fp32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_dtype(dtype: str, device: str):
    """'auto': bf16 on GPUs that support it and on CPUs with bf16 instructions, else fp32."""
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]


def _load_causal_lm(model_cfg, torch_dtype, device: str):
    """The base model through medtune.modeling when present, else directly through transformers."""
    try:
        from medtune.modeling import (
            load_base_model,  # heavy: torch, imported when a model is loaded
        )
    except ImportError:
        load_base_model = None
    if load_base_model is not None:
        return load_base_model(model_cfg, dtype=torch_dtype, device=device).eval()
    from transformers import AutoModelForCausalLM

    source = resolve_model_source(model_cfg.base)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.path, dtype=torch_dtype, revision=model_cfg.revision,
            trust_remote_code=model_cfg.trust_remote_code, **source.load_kwargs(),
        )
    except OSError as exc:
        raise ModelError(f"cannot load model {model_cfg.base}: {exc}") from exc
    return model.to(device).eval()


def _eval_tokenizer(model_cfg, folder: Path | None = None):
    """The tokenizer rendering prompts: the artifact's own when it ships one, else the base model's."""
    if folder is not None and (folder / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        if not tokenizer.chat_template:
            raise ModelError(f"{folder}: the tokenizer has no chat template")
        if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
            fix_pad_token(tokenizer)
        return tokenizer
    return load_tokenizer(model_cfg)


def open_transformers(model_cfg, *, adapter: Path | None = None, merged: Path | None = None,
                      device: str = "cpu", dtype: str = "auto", batch_size: int = 8) -> TransformersBackend:
    """A transformers backend for the base model, base + `adapter` (PEFT folder), or a `merged` folder.

    Raises ModelError when a folder is missing or cannot be loaded.
    """
    torch_dtype = resolve_dtype(dtype, device)
    if merged is not None:
        if not (merged / "config.json").is_file():
            raise ModelError(f"{merged}: no merged model here (config.json missing); run `medtune merge` first")
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch_dtype).to(device).eval()
        except (OSError, ValueError) as exc:
            raise ModelError(f"{merged}: cannot load the merged model ({exc}); redo it with `medtune run --force merge`") from exc
        tokenizer = _eval_tokenizer(model_cfg, merged)
    else:
        model = _load_causal_lm(model_cfg, torch_dtype, device)
        tokenizer = _eval_tokenizer(model_cfg, adapter)
        if adapter is not None:
            if not (adapter / "adapter_config.json").is_file():
                raise ModelError(f"{adapter}: no PEFT adapter here (adapter_config.json missing); run `medtune train` first")
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter)).to(device).eval()
    return TransformersBackend(model, tokenizer, device=device, batch_size=batch_size)


def open_llamacpp(gguf: Path, tokenizer, *, n_ctx: int = 4096, n_threads: int | None = None) -> LlamaCppBackend:
    """A llama.cpp backend for one GGUF file, opened with medtune's safe settings.

    `tokenizer` renders the prompts (the HF tokenizer of the same model). Raises ToolError when
    the llama.cpp runtime is not installed or the file cannot be loaded.
    """
    try:
        from medtune import llamacpp
    except ImportError as exc:
        raise ToolError("medtune.llamacpp is missing: the llama.cpp runtime support is not installed") from exc
    opener = getattr(llamacpp, "open_gguf", None)
    if opener is None:
        raise ToolError("medtune.llamacpp has no open_gguf(); cannot open GGUF files safely")
    threads = n_threads or int(os.environ.get("MEDTUNE_THREADS", 0)) or None
    llm = opener(Path(gguf), n_ctx=n_ctx, logits_all=False, n_threads=threads)
    return LlamaCppBackend(llm, tokenizer)


def gguf_tokenizer(gguf: Path):
    """The HF tokenizer stored inside a GGUF file (with a pad token distinct from EOS)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as exc:  # transformers raises several types for unsupported GGUF tokenizers
        raise ModelError(f"{gguf}: cannot read its tokenizer: {exc}") from exc
    if not tokenizer.chat_template:
        raise ModelError(f"{gguf}: the GGUF carries no chat template; evaluate the model folder it came from instead")
    fix_pad_token(tokenizer)
    return tokenizer
