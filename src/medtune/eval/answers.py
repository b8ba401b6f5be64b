"""Finding the final answer in a generated (chain-of-thought) reply.

Patterns are tried from the most explicit to the least; the last match in the text wins, since a
reply may discuss several options before concluding. An answer that cannot be found is None, which
counts as wrong (and as a parse failure in the report).
"""

from __future__ import annotations

import re

_LETTER = r"\(?\*{0,2}\[?([A-J])\]?\*{0,2}\)?"  # A-J: an item has 2-10 options (tasks.OPTION_LETTERS)
_WORD = r"\(?\*{0,2}(yes|no|maybe)\*{0,2}\)?"

# Explicit conclusions: "The answer is B", "Answer: (B)", "final answer is **B**", "\boxed{B}".
_EXPLICIT = (
    r"(?:final\s+answer|correct\s+answer|the\s+answer|answer)\s*(?:is|would\s+be|:|=|-)?\s*(?:option\s*|choice\s*)?:?\s*{x}(?![\w'-])",
    r"\\boxed\{{\s*(?:\\text\{{)?\s*{x}\s*\}}?\s*\}}",
    r"(?:correct\s+option|option|choice)\s+(?:is\s+)?{x}\s+is\s+(?:the\s+)?correct",
    r"(?:correct\s+option|best\s+option|correct\s+choice|best\s+choice)\s*(?:is|:)\s*{x}(?![\w'-])",
)


def extract_answer(text: str, options: dict[str, str]) -> str | None:
    """The option label a reply settles on, or None if it does not say.

    `options` maps labels to texts: letters (A-D, A-E, ... as the item has) for multiple choice, or yes/no/maybe (mapping to
    themselves) for PubMedQA. Recognised: "The answer is B.", "Answer: (B)", "**Answer:** B",
    "\\boxed{B}", a final line "B. Meningitis" or "(B)", "The answer is Meningitis" (option text),
    and for yes/no/maybe "The answer is yes", "Answer: no", or a reply that is just the word.
    """
    if not text or not text.strip():
        return None
    labels = list(options)
    letters = all(re.fullmatch(r"[A-Z]", label) for label in labels)
    token = _LETTER if letters else _WORD
    cleaned = text.replace("\u2019", "'").replace("*", "")  # markdown bold around answers
    for pattern in _EXPLICIT:
        found = _last(pattern.format(x=token), cleaned, labels)
        if found:
            return found
    by_text = _by_option_text(cleaned, options)
    if by_text:
        return by_text
    return _final_line(cleaned, labels, letters)


def _last(pattern: str, text: str, labels: list[str]) -> str | None:
    # Case-insensitive for the words around the answer ("ANSWER:"); a captured lower-case letter
    # is an article ("the answer is a ..."), rejected by _label, so earlier matches are tried.
    for match in reversed(list(re.finditer(pattern, text, re.IGNORECASE))):
        label = _label(match.group(1), labels)
        if label:
            return label
    return None


def _label(found: str, labels: list[str]) -> str | None:
    if found in labels:
        return found
    lowered = {label.lower(): label for label in labels}
    # Lower-case letters are ordinary words ("a"), not answers; yes/no/maybe may have any case.
    if found.lower() in lowered and not re.fullmatch(r"[a-z]", found):
        return lowered[found.lower()]
    return None


def _normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def _by_option_text(text: str, options: dict[str, str]) -> str | None:
    """'The answer is Meningitis' / 'Answer: meningitis.': the concluding phrase names one option."""
    conclusions = re.findall(r"(?:the\s+answer\s+is|answer\s*:)\s*([^\n]+)", text, re.IGNORECASE)
    if not conclusions:
        return None
    said = _normalise(conclusions[-1])
    if not said:
        return None
    hits = [label for label, option in options.items() if _normalise(option) and _normalise(option) == said]
    if not hits:
        hits = [label for label, option in options.items()
                if len(_normalise(option)) > 2 and re.search(rf"\b{re.escape(_normalise(option))}\b", said)]
    return hits[0] if len(hits) == 1 else None


def _final_line(text: str, labels: list[str], letters: bool) -> str | None:
    """The reply's last non-empty line is just the answer: 'B', '(B)', 'B. Meningitis', 'Yes.'."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    last = lines[-1].strip("*_ ") if lines else ""
    if letters:
        match = re.fullmatch(r"\(?([A-J])\)?(?:[.):]\s*.*)?", last)
        return match.group(1) if match and match.group(1) in labels else None
    match = re.fullmatch(r"(yes|no|maybe)[.!]?", last, re.IGNORECASE)
    return _label(match.group(1), labels) if match else None
