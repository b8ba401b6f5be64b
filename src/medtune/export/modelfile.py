"""An Ollama Modelfile derived from the model's own Jinja chat template (export writes gguf/Modelfile).

Ollama templates are Go templates, so the Jinja template cannot be copied. Instead it is rendered
with marker strings to recover, per role, the text before and after each message (plus the BOS
text, the generation prompt and any default system prompt the template injects). Those pieces are
assembled into a Go template over `.Messages`, which is then checked by rendering the same
conversations both ways (Go semantics emulated here) and comparing. Role-structured templates
(ChatML, Llama 3, Gemma, Phi, Mistral-style ...) decompose this way; a template that does not is
reported, and the Modelfile then omits TEMPLATE so Ollama falls back to the GGUF's own metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

_U1, _A1, _U2, _A2, _S = "MEDTUNEUSERONE", "MEDTUNEASSISTANTONE", "MEDTUNEUSERTWO", "MEDTUNEASSISTANTTWO", "MEDTUNESYSTEM"


@dataclass
class ChatPieces:
    """Text around each role's content in a rendered conversation."""

    bos: str
    system_prefix: str
    system_suffix: str
    user_prefix: str
    user_suffix: str
    assistant_prefix: str  # also the generation prompt
    assistant_suffix: str
    default_system: str | None  # system prompt the template adds when none is given


class TemplateNotDerivable(ValueError):
    """The chat template is not a per-role prefix/suffix template."""


def _render(tokenizer, messages, add_generation_prompt=False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _cut(text: str, *markers: str) -> list[str]:
    """Split `text` at the markers, in order; raise if one is missing."""
    parts, rest = [], text
    for marker in markers:
        if marker not in rest:
            raise TemplateNotDerivable(f"marker {marker} not rendered")
        before, rest = rest.split(marker, 1)
        parts.append(before)
    parts.append(rest)
    return parts


def derive_pieces(tokenizer) -> ChatPieces:
    """Recover the per-role prefixes/suffixes of the tokenizer's chat template."""
    user = lambda c: {"role": "user", "content": c}  # noqa: E731
    assistant = lambda c: {"role": "assistant", "content": c}  # noqa: E731
    try:
        convo = _render(tokenizer, [user(_U1), assistant(_A1), user(_U2), assistant(_A2)])
        head, mid_ua, mid_au, mid_ua2, tail = _cut(convo, _U1, _A1, _U2, _A2)
        prompt_only = _render(tokenizer, [user(_U1)])
        prompt_gen = _render(tokenizer, [user(_U1)], add_generation_prompt=True)
        with_system = _render(tokenizer, [{"role": "system", "content": _S}, user(_U1), assistant(_A1)])
    except TemplateNotDerivable:
        raise
    except Exception as exc:  # jinja errors: e.g. templates that reject system messages
        raise TemplateNotDerivable(f"template does not render a plain conversation: {exc}") from exc
    if mid_ua != mid_ua2 or not prompt_gen.startswith(prompt_only):
        raise TemplateNotDerivable("turns are not rendered the same way each time")
    generation = prompt_gen[len(prompt_only) :]
    assistant_suffix = tail
    if not generation or not mid_ua.endswith(generation):
        raise TemplateNotDerivable("the generation prompt is not the assistant prefix")
    user_suffix = mid_ua[: len(mid_ua) - len(generation)]
    if not mid_au.startswith(assistant_suffix):
        raise TemplateNotDerivable("assistant turns do not end the same way")
    user_prefix = mid_au[len(assistant_suffix) :]
    if not head.endswith(user_prefix):
        raise TemplateNotDerivable("the first user turn is rendered differently")
    head = head[: len(head) - len(user_prefix)]
    # Only a template that writes {{ bos_token }} emits BOS (ChatML's <|im_start|> may equal bos_token).
    emits_bos = "bos_token" in (tokenizer.chat_template or "")
    bos = tokenizer.bos_token if emits_bos and tokenizer.bos_token and head.startswith(tokenizer.bos_token) else ""
    sys_head, sys_mid, _ = _cut(with_system, _S, _U1)
    if not sys_mid.endswith(user_prefix) or not sys_head.startswith(bos):
        raise TemplateNotDerivable("the system turn is not followed by a normal user turn")
    system_prefix, system_suffix = sys_head[len(bos) :], sys_mid[: len(sys_mid) - len(user_prefix)]
    default_system = None
    rest = head[len(bos) :]
    if rest:
        if not (rest.startswith(system_prefix) and rest.endswith(system_suffix)):
            raise TemplateNotDerivable("text before the first turn is not a system turn")
        default_system = rest[len(system_prefix) : len(rest) - len(system_suffix)]
    return ChatPieces(bos, system_prefix, system_suffix, user_prefix, user_suffix, generation, assistant_suffix, default_system)


def go_template(pieces: ChatPieces, *, include_bos: bool) -> str:
    """An Ollama (Go) TEMPLATE over .Messages built from the pieces."""
    esc = _go_literal
    bos = esc(pieces.bos) if include_bos else ""
    return (
        f"{bos}"
        "{{- range $i, $_ := .Messages }}"
        "{{- $last := eq (len (slice $.Messages $i)) 1 }}"
        f'{{{{- if eq .Role "system" }}}}{esc(pieces.system_prefix)}{{{{ .Content }}}}{esc(pieces.system_suffix)}'
        f'{{{{- else if eq .Role "user" }}}}{esc(pieces.user_prefix)}{{{{ .Content }}}}{esc(pieces.user_suffix)}'
        f"{{{{- if $last }}}}{esc(pieces.assistant_prefix)}{{{{ end }}}}"
        f'{{{{- else if eq .Role "assistant" }}}}{esc(pieces.assistant_prefix)}{{{{ .Content }}}}'
        f"{{{{- if not $last }}}}{esc(pieces.assistant_suffix)}{{{{ end }}}}"
        "{{- end }}{{- end }}"
    )


def _go_literal(text: str) -> str:
    # "{{- " trims whitespace before it, so literal text must not end in whitespace that would be
    # eaten... it is emitted through a Go string constant instead whenever it has whitespace.
    if not text:
        return ""
    if text != text.strip() or "{{" in text:
        return "{{ " + _go_string(text) + " }}"
    return text


def _go_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'


def emulate(pieces: ChatPieces, messages: list[dict[str, str]], *, include_bos: bool) -> str:
    """What the Go template renders for `messages` (mirrors go_template, used for the self-check)."""
    out = [pieces.bos if include_bos else ""]
    for i, message in enumerate(messages):
        last = i == len(messages) - 1
        if message["role"] == "system":
            out += [pieces.system_prefix, message["content"], pieces.system_suffix]
        elif message["role"] == "user":
            out += [pieces.user_prefix, message["content"], pieces.user_suffix, pieces.assistant_prefix if last else ""]
        elif message["role"] == "assistant":
            out += [pieces.assistant_prefix, message["content"], "" if last else pieces.assistant_suffix]
    return "".join(out)


def check_pieces(tokenizer, pieces: ChatPieces) -> None:
    """Compare the derived template with the Jinja one on realistic conversations; raise if different."""
    system = {"role": "system", "content": "You are a careful medical assistant."}
    turns = [
        {"role": "user", "content": "What causes scurvy?"},
        {"role": "assistant", "content": "Vitamin C deficiency."},
        {"role": "user", "content": "And rickets?"},
    ]
    for messages in (turns, [system, *turns]):
        expected = _render(tokenizer, messages, add_generation_prompt=True)
        shown = messages if messages[0]["role"] == "system" or pieces.default_system is None else [
            {"role": "system", "content": pieces.default_system}, *messages]  # Ollama sends SYSTEM as a message
        got = emulate(pieces, shown, include_bos=True)
        if got != expected:
            raise TemplateNotDerivable(f"derived template renders {got[:120]!r}, the model's renders {expected[:120]!r}")


@dataclass
class Modelfile:
    text: str
    template: str  # "derived from the chat template" or why it was omitted
    stop: list[str]


def build_modelfile(
    tokenizer,
    gguf_name: str,
    *,
    end_of_turn: str,
    runtime_adds_bos: bool,
    license_text: str | None = None,
    others: list[str] | None = None,
    adapter: str | None = None,
) -> Modelfile:
    """The Modelfile text for `gguf_name` (a file in the same folder) and the tokenizer's template.

    runtime_adds_bos: whether llama.cpp/Ollama prepend BOS themselves (GGUF add_bos_token), in which
    case the template must not emit it too (double BOS). adapter: a GGUF LoRA adapter in the same
    folder that Ollama applies to `gguf_name` (an ADAPTER line; the base must be the model it was
    trained on).
    """
    stop = [end_of_turn]
    if tokenizer.eos_token and tokenizer.eos_token not in stop:
        stop.append(tokenizer.eos_token)
    lines = [
        f"# Ollama Modelfile written by medtune. Use: ollama create <name> -f {Path('Modelfile')} && ollama run <name>",
    ]
    if others:
        lines.append(f"# Other files of this model (change FROM to use one): {', '.join(others)}")
    lines.append(f"FROM ./{gguf_name}")
    if adapter:
        lines.append(f"ADAPTER ./{adapter}")
    try:
        pieces = derive_pieces(tokenizer)
        check_pieces(tokenizer, pieces)
    except TemplateNotDerivable as exc:
        template_note = f"omitted ({exc}); Ollama reads the GGUF's chat template"
    else:
        template = go_template(pieces, include_bos=not runtime_adds_bos)
        lines.append(f'TEMPLATE """{template}"""')
        if pieces.default_system is not None:
            lines.append(f'SYSTEM """{pieces.default_system}"""')
        template_note = "derived from the chat template and checked against it"
        # Llama 3's <|start_header_id|> is an added special token but not a named one (all_special_tokens).
        added = [t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special]
        specials = [*tokenizer.all_special_tokens, *added]
        opener = next((t for t in specials if t and pieces.user_prefix.startswith(t)), None)
        if opener and opener not in stop:
            stop.append(opener)  # a model that starts a new turn has finished its answer
    stop = [s for s in stop if s]
    lines += [f"PARAMETER stop {_go_string(s)}" for s in stop]
    lines += ["PARAMETER temperature 0.7", "PARAMETER top_p 0.9"]
    if license_text:
        lines.append(f'LICENSE """{license_text}"""')
    return Modelfile("\n".join(lines) + "\n", template_note, stop)


def choose_modelfile_type(types: list[str], wanted: str | None) -> str:
    """The GGUF type the Modelfile's FROM names: export.modelfile_type, else Q4_K_M when made, else
    the first quant, else the 16-bit file (types[0])."""
    if wanted:
        return wanted.upper()
    if "Q4_K_M" in types:
        return "Q4_K_M"
    return (types[1] if len(types) > 1 else types[0]).upper()
