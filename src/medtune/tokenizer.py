"""Loading the base model's tokenizer and making it fit for training.

Fix-ups, each for a known failure of naive recipes:
- pad must differ from EOS, or EOS positions get masked out of the loss and the model never learns
  to stop. A reserved token of the vocabulary is used (no embedding resize), e.g. Llama 3's
  `<|finetune_right_pad_id|>`.
- a chat template must be present: rendering and the exported GGUF both depend on it.
- a template that renders today's date (Llama 3.1/3.2's "Today Date: ..." via `strftime_now`) gets
  that date pinned, so the same conversation renders the same in prepare, eval, chat and serve
  whatever the day (see `pin_template_date`).
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from medtune.config import EMBEDDED_MODEL, ModelConfig
from medtune.embedded import smollm2_gguf_path
from medtune.errors import ModelError

# Reserved tokens that are never produced by chat templates, tried in order as the pad token.
PAD_CANDIDATES = (
    "<|finetune_right_pad_id|>",
    "<|pad|>",
    "<pad>",
    "[PAD]",
    "<|reserved_special_token_0|>",
    "<|endoftext|>",
    "<unk>",
)

# Chat templates shipped with medtune, for `model.chat_template: builtin:NAME`.
BUILTIN_TEMPLATE_PREFIX = "builtin:"
BUILTIN_TEMPLATES = {"llama3_2_instruct": "llama3_2_instruct.jinja"}

# The date a template's `strftime_now(...)` renders, whatever the day medtune runs: the hub Llama 3.x
# templates' own fallback when `strftime_now` is not available, so both branches agree.
PINNED_TEMPLATE_DATE = datetime.date(2024, 7, 26)
_STRFTIME_CALL = re.compile(r"""strftime_now\(\s*(["'])(.*?)\1\s*\)""")
_PINNED_NOTE = re.compile(r"medtune: strftime_now pinned to (\d{4}-\d{2}-\d{2})")


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights and tokenizer come from."""

    kind: str  # "hub", "local", "gguf"
    path: str  # hub id, directory, or the directory holding the .gguf
    gguf_file: str | None = None

    def load_kwargs(self) -> dict[str, str]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def resolve_model_source(base: str) -> ModelSource:
    """Classify `model.base`: the embedded default, a .gguf file, a local directory, or a hub id."""
    if base == EMBEDDED_MODEL:
        gguf = smollm2_gguf_path()
        return ModelSource("gguf", str(gguf.parent), gguf.name)
    path = Path(base).expanduser()
    if base.endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"model.base: GGUF file {base} does not exist")
        return ModelSource("gguf", str(path.resolve().parent), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model.base: {base} is a folder but has no config.json (not a Hugging Face model folder)")
        return ModelSource("local", str(path.resolve()))
    if path.exists() or base.startswith((".", "/", "~")) or base.count("/") > 1:
        raise ModelError(f"model.base: {base} is neither a model folder, a .gguf file, nor a hub id (owner/name)")
    return ModelSource("hub", base)


def load_tokenizer(model: ModelConfig):
    """Load the base model's tokenizer with a pad token distinct from EOS and a chat template.

    Raises ModelError if no chat template is available or no safe pad token can be chosen.
    """
    from transformers import AutoTokenizer

    source = resolve_model_source(model.base)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source.path,
            revision=model.revision,
            trust_remote_code=model.trust_remote_code,
            **source.load_kwargs(),
        )
    except OSError as exc:
        raise ModelError(f"model.base: cannot load the tokenizer of {model.base}: {exc}") from exc
    if model.chat_template:
        tokenizer.chat_template = read_chat_template(model.chat_template)
    if not tokenizer.chat_template:
        raise ModelError(
            f"the tokenizer of {model.base} has no chat template; use an instruct/chat model "
            "or set model.chat_template to a Jinja template file"
        )
    if isinstance(tokenizer.chat_template, str):
        tokenizer.chat_template = pin_template_date(tokenizer.chat_template)
    fix_pad_token(tokenizer, model.pad_token)
    tokenizer.padding_side = "right"
    return tokenizer


def read_chat_template(name: str) -> str:
    """The text of `model.chat_template`: a Jinja file, or `builtin:NAME` for one shipped with medtune
    (`builtin:llama3_2_instruct`: Meta's reference Llama 3.x Instruct format). Raises ModelError."""
    if name.startswith(BUILTIN_TEMPLATE_PREFIX):
        key = name.removeprefix(BUILTIN_TEMPLATE_PREFIX)
        if key not in BUILTIN_TEMPLATES:
            raise ModelError(f"model.chat_template: no built-in template {key!r} (built in: {', '.join(BUILTIN_TEMPLATES)})")
        return resources.files("medtune.templates").joinpath(BUILTIN_TEMPLATES[key]).read_text(encoding="utf-8")
    template_path = Path(name).expanduser()
    if not template_path.is_file():
        raise ModelError(f"model.chat_template: file {template_path} does not exist")
    return template_path.read_text(encoding="utf-8")


def pin_template_date(template: str, day: datetime.date = PINNED_TEMPLATE_DATE) -> str:
    """Replace each `strftime_now("FORMAT")` call of a chat template by that day's date as a string literal.

    Llama 3.1/3.2's hub templates write "Today Date: <strftime_now('%d %b %Y')>" into every system
    message: trained on one day, evaluated on another and served by llama.cpp or Ollama on a third,
    the prompts would differ silently. The pinned template travels with the tokenizer into the
    merged model and the GGUF, so every runtime renders the same text. A note naming the date opens
    the pinned template (`template_pinned_date` reads it back). A template without `strftime_now`
    comes back unchanged. Raises ModelError for a call whose format is not a string literal.
    """
    if "strftime_now" not in template or _PINNED_NOTE.search(template):
        return template
    pinned = _STRFTIME_CALL.sub(lambda call: '"' + day.strftime(call.group(2)) + '"', template)
    if re.search(r"strftime_now\s*\(", pinned):
        raise ModelError(
            "the chat template calls strftime_now with a format that is not a string literal, so medtune cannot "
            "pin its date; set model.chat_template to a template that does not render today's date"
        )
    # A comment with no whitespace control, so the template renders exactly what it did before.
    return f"{{# medtune: strftime_now pinned to {day.isoformat()} #}}" + pinned


def template_pinned_date(template: str | None) -> str | None:
    """The ISO date `pin_template_date` wrote into this template, or None if it renders no date."""
    found = _PINNED_NOTE.search(template or "")
    return found.group(1) if found else None


def fix_pad_token(tokenizer, requested: str | None = None) -> str:
    """Set a pad token that is in the vocabulary and is not the EOS token; return it."""
    eos = tokenizer.eos_token
    vocab = tokenizer.get_vocab()
    candidates = [requested] if requested else list(PAD_CANDIDATES)
    for token in candidates:
        if token and token in vocab and token != eos:
            tokenizer.pad_token = token
            return token
    if requested:
        raise ModelError(
            f"model.pad_token: {requested!r} is {'the EOS token' if requested == eos else 'not in the vocabulary'}; "
            "pick another reserved token"
        )
    raise ModelError(
        f"no reserved token to pad with in this vocabulary (EOS is {eos!r}); set model.pad_token to an unused token"
    )


def end_of_turn_token(tokenizer) -> str:
    """The token the chat template emits after each assistant reply (e.g. <|im_end|>, <|eot_id|>)."""
    probe = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": "MEDTUNE_PROBE"}], tokenize=False
    )
    tail = probe.split("MEDTUNE_PROBE", 1)[1]
    # Added special tokens (e.g. <|eot_id|> in some tokenizers) are not always named special tokens.
    added = [t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if getattr(t, "special", False)]
    for token in sorted({*tokenizer.all_special_tokens, *added}, key=len, reverse=True):
        if token and tail.lstrip().startswith(token):
            return token
    if tokenizer.eos_token and tokenizer.eos_token in tail:
        return tokenizer.eos_token
    raise ModelError("the chat template emits no special end-of-turn token after a reply; generation would never stop")
