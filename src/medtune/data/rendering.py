"""Chat-template rendering and assistant-only labels.

Labels come from the tokenizer's own chat template, without `{% generation %}` markers (many
templates, SmolLM2's among them, have none). For a conversation whose assistant turns are at
positions a_1..a_k, the template renders
  - the prompt before each reply: messages[:a_j] with the generation prompt, and
  - the conversation up to each reply: messages[:a_j + 1],
and each must be a prefix of the whole rendered conversation (the "prefix property"); otherwise
the template rewrites earlier turns and reply positions are ambiguous, which is an error. The
characters between a prompt and the end of its turn are the reply; after tokenizing the whole
conversation once, the reply must start on a token boundary, and its labels run through the
end-of-turn token the template writes after it (<|im_end|>, <|eot_id|>, ...), so the model learns
to stop. Everything else is -100.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from medtune.errors import ModelError
from medtune.tokenizer import end_of_turn_token

IGNORE_INDEX = -100
_BPE_CACHE_WORDS = 200_000
# Row status after tokenization.
KEPT, TRUNCATED, TOO_LONG, NO_FINAL_ANSWER = 0, 1, 2, 3
FINAL_ANSWER_MARKER = "The answer is"
"""With data.loss_on: final_answer, labels start at a reply's last occurrence of this sentence."""


class TemplateError(ModelError):
    """The chat template does not render conversations in a way that lets replies be located."""


@dataclass
class ChatRenderer:
    """Everything needed to render and tokenize chats; small and picklable for worker processes."""

    chat_template: str
    template_kwargs: dict[str, str]
    backend: object  # tokenizers.Tokenizer (the Rust fast tokenizer)
    eot_token: str
    eot_id: int
    control_tokens: list[str]

    @classmethod
    def from_tokenizer(cls, tokenizer) -> ChatRenderer:
        """Raises ModelError for a slow tokenizer or a template that emits no end-of-turn token."""
        backend = getattr(tokenizer, "_tokenizer", None)
        if backend is None or not getattr(tokenizer, "is_fast", False):
            raise ModelError("preparing data needs a fast (Rust) tokenizer; this model only has a slow one")
        template = tokenizer.chat_template
        if not isinstance(template, str) or not template:
            raise ModelError("the tokenizer has no chat template; set model.chat_template to a Jinja template file")
        eot = end_of_turn_token(tokenizer)
        control = sorted(
            {tok.content for tok in tokenizer.added_tokens_decoder.values() if tok.special}
            | set(tokenizer.all_special_tokens)
        )
        return cls(
            chat_template=template,
            template_kwargs={k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)},
            backend=_tokenizing_copy(backend),
            eot_token=eot,
            eot_id=tokenizer.convert_tokens_to_ids(eot),
            control_tokens=control,
        )

    def render(self, conversations: list[list[dict[str, str]]], add_generation_prompt: bool) -> list[str]:
        """Render with the chat template exactly as `tokenizer.apply_chat_template(tokenize=False)` does
        for plain role/content messages (the same compiled, sandboxed template and variables)."""
        template = self._compiled()
        return [
            template.render(
                messages=messages,
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **self.template_kwargs,
            )
            for messages in conversations
        ]

    def _compiled(self):
        # transformers' own compiler (cached per template): its sandbox, filters and globals.
        from transformers.utils.chat_template_utils import _compile_jinja_template

        return _compile_jinja_template(self.chat_template)

    def render_with_spans(
        self, conversations: list[list[dict[str, str]]], sources: list[str] | None = None
    ) -> tuple[list[str], list[list[tuple[int, int]]]]:
        """Render whole conversations and the character span of every reply (through its end-of-turn text).

        Raises TemplateError (naming the record) when the prefix property does not hold.
        """
        full = self.render(conversations, add_generation_prompt=False)
        prompt_requests, turn_requests, owners = [], [], []
        for index, messages in enumerate(conversations):
            replies = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
            for position, reply in enumerate(replies):
                owners.append((index, position == len(replies) - 1))
                prompt_requests.append(messages[:reply])
                if position < len(replies) - 1:
                    turn_requests.append(messages[: reply + 1])
        prompts = self.render(prompt_requests, add_generation_prompt=True)
        turns = iter(self.render(turn_requests, add_generation_prompt=False))
        spans: list[list[tuple[int, int]]] = [[] for _ in conversations]
        for (index, last), prompt in zip(owners, prompts):
            text = full[index]
            turn_end = len(text) if last else _prefix_end(next(turns), text, self, sources, index, "turn")
            start = _prefix_end(prompt, text, self, sources, index, "prompt")
            if start > turn_end:
                raise TemplateError(_template_message(sources, index, "a generation prompt runs past its reply"))
            spans[index].append((start, turn_end))
        return full, spans

    def encode(
        self, conversations: list[list[dict[str, str]]], sources: list[str] | None = None, *,
        label_from: str | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Token ids and labels (reply tokens + end-of-turn token; -100 elsewhere) per conversation.

        `label_from`: label only from the reply's last occurrence of this text (the token holding its
        first character) through the end-of-turn token, e.g. the final answer sentence; a
        conversation with a reply that lacks it gets no labels at all (the caller drops it).
        """
        texts, spans = self.render_with_spans(conversations, sources)
        encodings = _with_large_cache(self.backend).encode_batch(texts, add_special_tokens=False)
        out = []
        for index, (encoding, reply_spans) in enumerate(zip(encodings, spans)):
            ids = encoding.ids
            input_ids = np.asarray(ids, dtype=np.int32)
            labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int32)
            for start_char, end_char in reply_spans:
                first = encoding.char_to_token(start_char)
                if first is None or encoding.token_to_chars(first)[0] != start_char:
                    raise TemplateError(
                        _template_message(sources, index, "a reply does not start on a token boundary (the tokenizer "
                                          "merges the end of the prompt with the start of the reply)")
                    )
                try:
                    last = ids.index(self.eot_id, first)
                except ValueError:
                    last = -1
                if last < 0 or encoding.token_to_chars(last)[1] > end_char:
                    raise TemplateError(
                        _template_message(sources, index, f"no {self.eot_token} token closes a reply")
                    )
                if label_from is not None:
                    marker = texts[index].rfind(label_from, start_char, end_char)
                    if marker < 0:
                        labels[:] = IGNORE_INDEX
                        break
                    first = encoding.char_to_token(marker)
                labels[first : last + 1] = input_ids[first : last + 1]
            out.append((input_ids, labels))
        return out


def _tokenizing_copy(backend):
    """An independent copy of the Rust tokenizer (the caller's keeps its own cache and settings)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(backend.to_str())


_CACHE_RESIZED: set[int] = set()


def _with_large_cache(backend):
    """Give the tokenizer a large BPE word cache, once per process (pickling to a worker resets it).

    The default cache (10K words) is smaller than the vocabulary of a big medical corpus; 200K
    words save ~10% of the tokenizing time for ~20 MB per process.
    """
    if id(backend) not in _CACHE_RESIZED:
        resize = getattr(backend.model, "_resize_cache", None)
        if callable(resize):
            resize(_BPE_CACHE_WORDS)
        _CACHE_RESIZED.add(id(backend))
    return backend


def _prefix_end(prefix: str, text: str, renderer: ChatRenderer, sources, index: int, what: str) -> int:
    if not text.startswith(prefix):
        raise TemplateError(
            _template_message(
                sources, index, f"the rendered {what} before a reply is not a prefix of the rendered conversation"
            )
        )
    return len(prefix)


def _template_message(sources, index: int, problem: str) -> str:
    where = f" (record {sources[index]})" if sources else ""
    return (
        f"the chat template cannot be used for assistant-only labels{where}: {problem}. "
        "Set model.chat_template to a template that renders each turn the same way whatever follows it"
    )


def tokenize_table(batch: pa.Table, renderer: ChatRenderer, max_length: int, truncate: bool,
                   final_answer_only: bool = False) -> pa.Table:
    """`datasets.map` function (arrow format, batched): add input_ids, labels, length, full_length, status,
    label_tokens (how many tokens carry a label).

    Rows over `max_length` tokens are cut to it (truncate) or marked TOO_LONG; a truncated row whose
    reply tokens are all cut off is TOO_LONG too (nothing left to learn). With `final_answer_only`,
    labels cover only each reply's final "The answer is ..." sentence, and a row with a reply that has
    none is marked NO_FINAL_ANSWER.
    """
    conversations = [json.loads(text) for text in batch.column("messages").to_pylist()]
    sources = batch.column("source").to_pylist()
    encoded = renderer.encode(conversations, sources, label_from=FINAL_ANSWER_MARKER if final_answer_only else None)
    ids_parts, label_parts = [], []
    lengths = np.empty(len(encoded), dtype=np.int32)
    full_lengths = np.empty(len(encoded), dtype=np.int32)
    status = np.zeros(len(encoded), dtype=np.int8)
    labelled = np.zeros(len(encoded), dtype=np.int32)
    for row, (input_ids, labels) in enumerate(encoded):
        full_lengths[row] = len(input_ids)
        if final_answer_only and not (labels != IGNORE_INDEX).any():
            input_ids, labels = input_ids[:0], labels[:0]
            status[row] = NO_FINAL_ANSWER
        elif len(input_ids) > max_length:
            if truncate and (labels[:max_length] != IGNORE_INDEX).any():
                input_ids, labels = input_ids[:max_length], labels[:max_length]
                status[row] = TRUNCATED
            else:
                input_ids, labels = input_ids[:0], labels[:0]  # dropped later; keep nothing
                status[row] = TOO_LONG
        lengths[row] = len(input_ids)
        labelled[row] = np.count_nonzero(labels != IGNORE_INDEX)
        ids_parts.append(input_ids)
        label_parts.append(labels)
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat_ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int32)
    flat_labels = np.concatenate(label_parts) if label_parts else np.zeros(0, np.int32)
    return pa.table(
        {
            "input_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat_ids)),
            "labels": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat_labels)),
            "length": pa.array(lengths),
            "messages": batch.column("messages"),
            "source": batch.column("source"),
            "full_length": pa.array(full_lengths),
            "status": pa.array(status),
            "label_tokens": pa.array(labelled),
        }
    )
