"""Derived training sources: data sets in another release format, turned into chat JSONL once.

An entry `data.files: ["pubmedqa-train:../shared/data/pubmedqa"]` names a converter and its input.
The converter writes a `messages` JSONL into medtune's cache, named by the hash of its inputs, so
the data stage reads it like any local file and its fingerprint follows the source files.
Adding a source = one converter function registered in `SOURCES`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from medtune.artifacts import atomic_write_text, sha256_file
from medtune.errors import DataError

PUBMEDQA_FILES = ("ori_pqal.json", "test_ground_truth.json")


def cache_dir() -> Path:
    root = os.environ.get("MEDTUNE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "medtune"
    return Path(root) / "derived"


def pubmedqa_train(folder: Path) -> Path:
    """PubMedQA PQA-L records that are NOT in the standard 500-item test split, as chat examples.

    Each record gives two examples with the same prompts the evaluation uses
    (`medtune.tasks.user_message`): a step-by-step one (the abstract's conclusion,
    LONG_ANSWER, as the reasoning, then "The answer is X.") and a direct one ("The answer is X.").
    Raises DataError when the files are missing or malformed.
    """
    from medtune.tasks import YES_NO_MAYBE, Item, user_message

    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    paths = [folder / name for name in PUBMEDQA_FILES]
    for path in paths:
        if not path.is_file():
            raise DataError(f"data.files: pubmedqa-train:{folder}: {path.name} not found (the original PQA-L release)")
    digest = hashlib.sha256("".join(sha256_file(p) for p in paths).encode()).hexdigest()[:16]
    out = cache_dir() / f"pubmedqa-train-{digest}.jsonl"
    if out.is_file():
        return out
    records = json.loads(paths[0].read_text(encoding="utf-8"))
    test_ids = set(json.loads(paths[1].read_text(encoding="utf-8")))
    lines = []
    for pmid, record in records.items():
        if pmid in test_ids:
            continue
        decision = str(record.get("final_decision", "")).strip().lower()
        reasoning = str(record.get("LONG_ANSWER", "")).strip()
        if decision not in YES_NO_MAYBE or not reasoning:
            raise DataError(f"{paths[0]}: record {pmid} lacks a yes/no/maybe final_decision or a LONG_ANSWER")
        item = Item(
            id=pmid,
            question=str(record["QUESTION"]).strip(),
            options={label: label for label in YES_NO_MAYBE},
            answer=decision,
            context="\n".join(str(c).strip() for c in record["CONTEXTS"]),
            benchmark="pubmedqa",
        )
        final = f"The answer is {decision}."
        for mode, reply in (("cot", f"{reasoning}\n\n{final}"), ("loglik", final)):
            messages = [{"role": "user", "content": user_message(item, mode)}, {"role": "assistant", "content": reply}]
            lines.append(json.dumps({"messages": messages, "id": f"{pmid}-{mode}"}))  # ASCII: no U+2028 line breaks
    if not lines:
        raise DataError(f"{folder}: no PubMedQA records outside the test split")
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out


SOURCES: dict[str, Callable[[Path], Path]] = {"pubmedqa-train": pubmedqa_train}


def resolve_source(entry: str) -> Path | None:
    """The JSONL path for a `NAME:PATH` derived-source entry, or None if `entry` is not one."""
    name, sep, argument = entry.partition(":")
    if not sep or name not in SOURCES:
        return None
    return SOURCES[name](Path(argument).expanduser())
