"""Derived training sources: data sets in another release format, turned into chat JSONL once.

An entry `data.files: ["pubmedqa-train:../shared/data/pubmedqa"]` names a converter and its input.
The converter writes a JSONL (chat `messages`, or ReasonMed's instruction/input/output) into
medtune's cache, named by the hash of its inputs and of the converter's version, so the data stage
reads it like any local file and its fingerprint follows the source files.
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
from medtune.tasks import YES_NO_MAYBE, Item, user_message

PUBMEDQA_FILES = ("ori_pqal.json", "test_ground_truth.json")
# Bump when a converter writes something different for the same inputs (the cache is keyed on it).
CONVERTER_VERSION = "2"


def cache_dir() -> Path:
    root = os.environ.get("MEDTUNE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "medtune"
    return Path(root) / "derived"


def _pubmedqa_train_pool(folder: Path, source: str) -> tuple[list[tuple[str, Item, str]], str]:
    """The PQA-L records outside the standard test split as (pmid, Item, LONG_ANSWER), and a digest
    of the two release files. Raises DataError when a file is missing or a record is malformed."""
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    paths = [folder / name for name in PUBMEDQA_FILES]
    for path in paths:
        if not path.is_file():
            raise DataError(f"data.files: {source}:{folder}: {path.name} not found (the original PQA-L release)")
    digest = hashlib.sha256((CONVERTER_VERSION + "".join(sha256_file(p) for p in paths)).encode()).hexdigest()[:16]
    try:
        records = json.loads(paths[0].read_text(encoding="utf-8"))
        test_ids = set(json.loads(paths[1].read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:
        raise DataError(f"data.files: {source}:{folder}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    pool = []
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
        pool.append((pmid, item, reasoning))
    if not pool:
        raise DataError(f"{folder}: no PubMedQA records outside the test split")
    return pool, digest


def _write_cached(name: str, digest: str, lines: list[str]) -> Path:
    out = cache_dir() / f"{name}-{digest}.jsonl"
    if not out.is_file():
        atomic_write_text(out, "\n".join(lines) + "\n")
    return out


def pubmedqa_train(folder: Path) -> Path:
    """PubMedQA PQA-L records that are NOT in the standard 500-item test split, as chat examples.

    Each record gives two examples with the same prompts the evaluation uses
    (`medtune.tasks.user_message`): a step-by-step one (the abstract's conclusion,
    LONG_ANSWER, as the reasoning, then "The answer is X.") and a direct one ("The answer is X.").
    Raises DataError when the files are missing or malformed.
    """

    pool, digest = _pubmedqa_train_pool(folder, "pubmedqa-train")
    lines = []
    for pmid, item, reasoning in pool:
        final = f"The answer is {item.answer}."
        for mode, reply in (("cot", f"{reasoning}\n\n{final}"), ("loglik", final)):
            messages = [{"role": "user", "content": user_message(item, mode)}, {"role": "assistant", "content": reply}]
            lines.append(json.dumps({"messages": messages, "id": f"{pmid}-{mode}"}))  # ASCII: no U+2028 line breaks
    return _write_cached("pubmedqa-train", digest, lines)


def pubmedqa_reasoning(folder: Path) -> Path:
    """The same PQA-L train pool in ReasonMed's own schema: one record per question, reasoning first.

    `instruction` is the evaluation's step-by-step prompt (abstract, question, and the instruction to
    finish with "The answer is X."), `input` is empty, and `output` is the abstract's conclusion
    (LONG_ANSWER) as the reasoning followed by "The answer is X." — question -> reasoning -> answer,
    as ReasonMed's records are, so a model trained on it reasons, then answers, in cot mode.
    Read with `data.format: reasonmed` (or auto). Raises DataError for missing or malformed files.
    """

    pool, digest = _pubmedqa_train_pool(folder, "pubmedqa-reasoning")
    lines = [
        json.dumps({"id": pmid, "instruction": user_message(item, "cot"), "input": "",
                    "output": f"{reasoning}\n\nThe answer is {item.answer}."})
        for pmid, item, reasoning in pool
    ]
    return _write_cached("pubmedqa-reasoning", digest, lines)


SOURCES: dict[str, Callable[[Path], Path]] = {"pubmedqa-train": pubmedqa_train, "pubmedqa-reasoning": pubmedqa_reasoning}


def resolve_source(entry: str) -> Path | None:
    """The JSONL path for a `NAME:PATH` derived-source entry, or None if `entry` is not one."""
    name, sep, argument = entry.partition(":")
    if not sep or name not in SOURCES:
        return None
    return SOURCES[name](Path(argument).expanduser())
