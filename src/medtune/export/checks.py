"""Checks on the GGUF files export writes, each aimed at a way exported chat models break.

- metadata, read back two ways: with gguf-py's GGUFReader (`check_metadata`, the 16-bit file) and
  as the llama.cpp runtime reads it (`answer_test_question`, every file); both through one rule,
  `metadata_problems`: general.name is the run's, EOS is the end-of-turn token, the chat template
  is the merged model's;
- the runtime's own chat path (GGUF template + llama.cpp tokenizer) gives exactly the tokens
  transformers gives for the same conversation: no double BOS, no tokenizer drift
  (`check_chat_prompt`);
- a greedy answer to the seed test question that must end by EOS, and the 16-bit file's agreement
  with the merged model (`check_16bit_file`);
- a note when the base model is itself a quantized GGUF (`quantized_base_note`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtune import llamacpp
from medtune.config import RunConfig
from medtune.errors import ArtifactError
from medtune.tokenizer import resolve_model_source
from medtune.verify import encode_prompt


@dataclass
class SeedAnswer:
    """A file's greedy answer to the test question."""

    text: str
    tokens: int
    stopped_on_eos: bool
    bits_per_weight: float


def metadata_problems(path: Path, *, name: Any, eos_token_id: Any, chat_template: Any, run_name: str, eot_id: int,
                      end_of_turn: str, expected_template: str | None) -> list[str]:
    """What is wrong with a GGUF's name, EOS id and chat template as read back from `path` (empty: nothing)."""
    problems = []
    if name != run_name:
        problems.append(f"general.name is {name!r}, expected {run_name!r}")
    if str(eos_token_id) != str(eot_id):  # GGUFReader gives an int, the runtime's metadata a string
        problems.append(f"EOS id is {eos_token_id}, not the end-of-turn token {end_of_turn!r} ({eot_id}): generation would not stop")
    if chat_template != expected_template:
        problems.append("tokenizer.chat_template is missing or differs from the merged model's template")
    return problems


def raise_problems(path: Path, problems: list[str]) -> None:
    if problems:
        raise ArtifactError(f"{path.name}: " + "; ".join(problems))


def check_metadata(config: RunConfig, path: Path, tokenizer, end_of_turn: str, eot_id: int) -> dict[str, Any]:
    """Read the file back with GGUFReader, check what chat front ends rely on, and return what it found.
    Raises ArtifactError naming every problem."""
    from gguf import GGUFReader  # the converter's gguf-py; parses the whole vocabulary (seconds)

    reader = GGUFReader(str(path))

    def field(key: str) -> Any:
        item = reader.fields.get(key)
        return item.contents() if item is not None else None

    found = {
        "name": field("general.name"),
        "license": field("general.license"),
        "base_model": field("general.base_model.0.name"),
        "eos_token_id": field("tokenizer.ggml.eos_token_id"),
        "bos_token_id": field("tokenizer.ggml.bos_token_id"),
        "add_bos_token": field("tokenizer.ggml.add_bos_token"),
        "end_of_turn": end_of_turn,
        "chat_template_matches": field("tokenizer.chat_template") == tokenizer.chat_template,
    }
    raise_problems(path, metadata_problems(
        path, name=found["name"], eos_token_id=found["eos_token_id"], chat_template=field("tokenizer.chat_template"),
        run_name=config.name, eot_id=eot_id, end_of_turn=end_of_turn, expected_template=tokenizer.chat_template))
    return found


def check_chat_prompt(path: Path, tokenizer, messages: list[dict[str, str]], threads: int) -> dict[str, Any]:
    """The runtime's chat path (llama-cpp-python: GGUF template, then llama.cpp tokenizer) vs transformers.
    Raises ArtifactError on a double BOS or any token that differs."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter  # the optional runtime, loaded by open_gguf

    llm = llamacpp.open_gguf(path, n_ctx=256, n_threads=threads)
    try:
        template = llm.metadata.get("tokenizer.chat_template", "")
        bos_id, eos_id = llm.token_bos(), llm.token_eos()
        formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=llm._model.token_get_text(eos_id) if eos_id >= 0 else "",
            bos_token=llm._model.token_get_text(bos_id) if bos_id >= 0 else "",
        )
        rendered = formatter(messages=messages)
        runtime_ids = llm.tokenize(rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True)
        runtime_adds_bos = llm.tokenize(b"x", add_bos=True, special=True)[:1] == [bos_id] and bos_id >= 0
    finally:
        llm.close()
    expected = encode_prompt(tokenizer, tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    leading_bos = next((i for i, t in enumerate(runtime_ids) if t != bos_id), len(runtime_ids)) if bos_id >= 0 else 0
    if leading_bos > 1:
        raise ArtifactError(f"{path.name}: the runtime's chat prompt starts with {leading_bos} BOS tokens (double BOS)")
    if runtime_ids[: len(expected)] != expected:
        diverge = next((i for i, (a, b) in enumerate(zip(runtime_ids, expected)) if a != b), min(len(runtime_ids), len(expected)))
        raise ArtifactError(
            f"{path.name}: llama.cpp's chat prompt differs from transformers' at token {diverge} "
            f"({runtime_ids[diverge:diverge + 3]} vs {expected[diverge:diverge + 3]}): tokenizer or template was not converted faithfully"
        )
    return {"chat_prompt_matches_hf": True, "leading_bos": leading_bos, "runtime_adds_bos": runtime_adds_bos}


def answer_test_question(config: RunConfig, path: Path, tokenizer, end_of_turn: str, eot_id: int,
                         messages: list[dict[str, str]], threads: int) -> SeedAnswer:
    """Greedy chat answer through the runtime's own chat path. Also checks the metadata as llama.cpp
    reads it from this file (`metadata_problems`); raises ArtifactError when it is wrong."""
    max_tokens = config.export.answer_max_tokens
    llm = llamacpp.open_gguf(path, n_ctx=max_tokens + 512, n_threads=threads)
    try:
        meta = llm.metadata
        raise_problems(path, metadata_problems(
            path, name=meta.get("general.name"), eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
            chat_template=meta.get("tokenizer.chat_template"), run_name=config.name, eot_id=eot_id,
            end_of_turn=end_of_turn, expected_template=tokenizer.chat_template))
        bpw = 8.0 * llm._model.size() / max(llm._model.n_params(), 1)
        reply = llm.create_chat_completion(messages=messages, temperature=0.0, max_tokens=max_tokens, repeat_penalty=1.0)
    finally:
        llm.close()
    choice = reply["choices"][0]
    tokens = int(reply["usage"]["completion_tokens"])
    stopped = choice["finish_reason"] == "stop" and tokens < max_tokens
    return SeedAnswer((choice["message"]["content"] or "").strip(), tokens, stopped, bpw)


def check_16bit_file(config: RunConfig, file: str, top1_agreement: float, stopped_on_eos: bool, end_of_turn: str) -> None:
    """The 16-bit file must predict what the merged model predicts and (export.require_eos_stop) stop
    by itself. Raises ArtifactError saying which setting to change."""
    export = config.export
    if top1_agreement < export.min_f16_top1:
        raise ArtifactError(
            f"{file}: next-token agreement with the merged model is {top1_agreement:.2%}, below "
            f"export.min_f16_top1={export.min_f16_top1:.0%}: the llama.cpp conversion changed the model"
        )
    if export.require_eos_stop and not stopped_on_eos:
        raise ArtifactError(
            f"{file}: the answer to the test question ran to export.answer_max_tokens="
            f"{export.answer_max_tokens} without an EOS ({end_of_turn!r}): the model does not stop. "
            "Check that training labelled the end-of-turn token, or raise answer_max_tokens / set export.require_eos_stop=false"
        )


def gguf_weight_type(path: Path) -> str | None:
    """The GGUF's main weight type (F16, Q4_1, Q4_K_M...) from general.file_type, None if unknown."""
    try:
        from gguf import GGUFReader, LlamaFileType  # optional: the converter's gguf-py

        reader = GGUFReader(str(path))
        field_ = reader.fields.get("general.file_type")
        if field_ is None:
            return None
        name = LlamaFileType(int(field_.parts[field_.data[0]][0])).name
    except Exception:  # noqa: BLE001 - unreadable header or unknown enum value
        return None
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def quantized_base_note(config: RunConfig, quant_types: list[str]) -> str | None:
    """A note when the base model is a quantized GGUF (the embedded SmolLM2 is Q4_1).

    Its weights already sit on that type's grid; the merged model is that grid plus a small LoRA
    delta, so another quant type rounds them a second time and lands further from F16 than its
    bits suggest (BENCHMARKS.md: Q4_1 KL 0.026 vs Q5_K_M 0.091 on the demo model).
    """
    try:
        source = resolve_model_source(config.model.base)
    except Exception:  # noqa: BLE001 - a note is optional; the base was loaded fine earlier
        return None
    if source.kind != "gguf":
        return None
    base_type = gguf_weight_type(Path(source.path) / source.gguf_file)
    if base_type is None or base_type in ("F32", "F16", "BF16"):
        return None
    # 6- and 8-bit grids are fine enough that the second rounding hardly shows (Q8_0 KL 0.006).
    similar = [t for t in quant_types if t != base_type and t.startswith(("Q2", "Q3", "Q4", "Q5", "IQ"))]
    if not similar:
        return None
    return (f"the base model is a {base_type} GGUF, so its weights are already rounded to {base_type}; "
            f"{', '.join(similar)} round{'s' if len(similar) == 1 else ''} them a second time and can land further "
            f"from F16 than their size suggests. {base_type} itself avoids that: add it to export.quant_types "
            f"and compare the KL column above.")
