"""Chat with a model medtune made: a GGUF file (llama.cpp runtime), a merged folder, or an adapter.

Every backend uses the model's own chat template and stops at its end-of-turn token: the GGUF
through llama.cpp's chat path (template and EOS from the file's metadata), the Hugging Face
backends through `apply_chat_template` and generation_config's EOS ids.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtune import llamacpp
from medtune.config import ModelConfig
from medtune.errors import ArtifactError, ModelError
from medtune.rundir import RunDir, open_artifact
from medtune.tokenizer import end_of_turn_token


@dataclass
class Sampling:
    """Sampling settings; temperature 0 means greedy decoding."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 1024


@dataclass
class Reply:
    """How the last reply ended (filled in while it streams)."""

    tokens: int = 0
    stopped_on_eos: bool = False


def chat_target(target: str | Path) -> tuple[str, Path]:
    """('gguf' | 'merged' | 'adapter', path) for a chat target, through `rundir.open_artifact`.

    Raises ArtifactError for what open_artifact refuses (missing path, a .gguf file that is not
    GGUF, a folder with no model) and for what chat cannot take whole: a folder of several GGUF
    files or a run directory (both name the files to pick from)."""
    artifact = open_artifact(target)
    if artifact.kind == "gguf" and len(artifact.gguf_files) == 1:
        return "gguf", artifact.gguf_files[0]
    if artifact.kind == "gguf":
        files = ", ".join(f.name for f in artifact.gguf_files)
        raise ArtifactError(f"{artifact.path} is a folder of GGUF files; pick one: {files}")
    if artifact.kind == "run":
        run = artifact.run
        choices = [str(f) for f in run.gguf_files()] + [str(f) for f in (run.merged, run.adapter) if f.is_dir()]
        listed = ", ".join(choices) or f"none yet (run `medtune run {run.config_file}`)"
        raise ArtifactError(f"{artifact.path} is a run directory; chat with one of its models: {listed}")
    return artifact.kind, artifact.path


class ChatModel:
    """A loaded chat model that streams replies to a list of messages."""

    def __init__(self, target: str | Path, *, n_ctx: int = 4096, n_threads: int | None = None):
        self.kind, self.target = chat_target(target)
        self.n_ctx = n_ctx
        if self.kind == "gguf":
            self._llm = llamacpp.open_gguf(self.target, n_ctx=n_ctx, n_threads=n_threads)
        else:
            self._model, self._tokenizer = _load_hf(self.target, self.kind)

    def stream(self, messages: list[dict[str, str]], sampling: Sampling, reply: Reply | None = None) -> Iterator[str]:
        """Yield the reply's text piece by piece; `reply` records token count and whether EOS ended it."""
        reply = reply if reply is not None else Reply()
        if self.kind == "gguf":
            yield from self._stream_gguf(messages, sampling, reply)
        else:
            yield from self._stream_hf(messages, sampling, reply)

    @property
    def context_length(self) -> int | None:
        """The longest prompt + reply in tokens: the GGUF's n_ctx, or the HF model's max_position_embeddings."""
        if self.kind == "gguf":
            return self._llm.n_ctx()
        return getattr(self._model.config, "max_position_embeddings", None)

    @property
    def device(self) -> str:
        """Where the model runs: "cpu" (every GGUF chat: llama-cpp-python is built for the CPU), else
        the transformers model's device, e.g. "cuda:0"."""
        return "cpu" if self.kind == "gguf" else str(self._model.device)

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """How many tokens `messages` take once rendered with the model's chat template (with the generation prompt)."""
        if self.kind == "gguf":
            return gguf_prompt_tokens(self._llm, messages)
        text = self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def close(self) -> None:
        if self.kind == "gguf":
            self._llm.close()

    def _stream_gguf(self, messages, sampling: Sampling, reply: Reply) -> Iterator[str]:
        chunks = self._llm.create_chat_completion(
            messages=messages,
            stream=True,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            repeat_penalty=1.0,
        )
        for chunk in chunks:
            choice = chunk["choices"][0]
            text = choice.get("delta", {}).get("content")
            if text:
                reply.tokens += 1
                yield text
            if choice.get("finish_reason"):
                reply.stopped_on_eos = choice["finish_reason"] == "stop"

    def _stream_hf(self, messages, sampling: Sampling, reply: Reply) -> Iterator[str]:
        import torch
        from transformers import (
            StoppingCriteria,
            StoppingCriteriaList,
            TextIteratorStreamer,
        )

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool, device=input_ids.device)

        # A consumer that stops reading (a closed stream, a client gone) closes this generator; the
        # flag then ends model.generate at the next token instead of letting it run to max_tokens.
        cancelled = threading.Event()
        tokenizer, model = self._tokenizer, self._model
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = tokenizer(text, add_special_tokens=False, return_tensors="pt").to(model.device)
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        eos = _eos_ids(model, tokenizer)
        kwargs: dict[str, Any] = {
            **inputs,
            "streamer": streamer,
            "max_new_tokens": sampling.max_tokens,
            "eos_token_id": eos,
            "pad_token_id": tokenizer.pad_token_id,
            "stopping_criteria": StoppingCriteriaList([_Cancelled()]),
        }
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        result: dict[str, Any] = {}

        def run() -> None:
            with torch.inference_mode():
                result["ids"] = model.generate(**kwargs)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        try:
            yield from streamer
        finally:
            cancelled.set()
            worker.join()
            if "ids" in result:  # also when stopped early: the tokens made so far
                new = result["ids"][0, inputs["input_ids"].shape[1] :].tolist()
                reply.tokens = len(new)
                reply.stopped_on_eos = bool(new) and new[-1] in eos


def gguf_prompt_tokens(llm, messages: list[dict[str, str]]) -> int:
    """Prompt length in tokens of `messages` for a llama.cpp model, counted as its chat path counts it.

    llama-cpp-python renders the file's `tokenizer.chat_template` with its Jinja2ChatFormatter and
    tokenizes the text with special tokens and no extra BOS; this does the same, so a vocab-only
    `Llama` is enough. Raises ArtifactError when the file has no chat template.
    """
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise ArtifactError(f"{llm.model_path}: the GGUF has no chat template (tokenizer.chat_template)")
    eos, bos = llm.token_eos(), llm.token_bos()
    text = llm._model.token_get_text  # what llama-cpp-python passes its formatter as eos/bos text
    formatter = _gguf_formatter(template, text(eos) if eos != -1 else "", text(bos) if bos != -1 else "")
    prompt = formatter(messages=messages).prompt
    return len(llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True))


@functools.lru_cache(maxsize=16)
def _gguf_formatter(template: str, eos_token: str, bos_token: str):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    return Jinja2ChatFormatter(template=template, eos_token=eos_token, bos_token=bos_token)


def _eos_ids(model, tokenizer) -> list[int]:
    configured = model.generation_config.eos_token_id
    ids = configured if isinstance(configured, list) else [configured]
    try:
        ids = [tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer)), *ids]
    except ModelError:
        pass
    return list(dict.fromkeys(i for i in ids if i is not None))


def _load_hf(target: Path, kind: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(str(target))
    if not tokenizer.chat_template:
        raise ArtifactError(f"{target}: the tokenizer has no chat template")
    if kind == "merged":
        model = AutoModelForCausalLM.from_pretrained(str(target), dtype=dtype).to(device)
    else:
        from peft import PeftModel

        from medtune.modeling import load_base_model  # imports torch and transformers

        base = load_base_model(_adapter_base(target), dtype=dtype, device=device)
        model = PeftModel.from_pretrained(base, str(target))
    return model.eval(), tokenizer


def _adapter_base(adapter: Path):
    """The base model of an adapter: the saved config of the run holding it (runs/<name>/adapter or
    rl-adapter), else adapter_config.json's base_model_name_or_path."""
    raw = RunDir(adapter.resolve().parent).saved_config()
    if isinstance(raw.get("model"), dict):
        return ModelConfig.model_validate(raw["model"])
    base = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ArtifactError(f"{adapter}: cannot tell the base model (no run config.yaml beside it, no base_model_name_or_path)")
    return ModelConfig(base=base)
