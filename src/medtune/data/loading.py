"""Reading raw records from local files (.jsonl / .json / .parquet) or the Hugging Face hub.

Every record comes with its location (`path:line`, `path:row N`, or `dataset[split]#N`) so that
problems can be reported where they are. Records that cannot even be read (bad UTF-8, bad JSON)
come out as `RawRecord`s carrying a `RecordProblem` instead of data, to be counted like any other
bad record.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtune.artifacts import sha256_file
from medtune.config import DataConfig
from medtune.data.sources import resolve_source
from medtune.data.validation import RecordProblem
from medtune.errors import DataError
from medtune.sample_data import BUILTIN, builtin_path  # noqa: F401  (re-exported for callers)

SUFFIXES = (".jsonl", ".json", ".parquet")
REASONMED_HUB_ID = "lingshu-medical-mllm/ReasonMed"
# ReasonMed's hub repository holds three JSON arrays (stored in LFS) of {instruction, input, output}
# over the same ~370K questions. Its card declares no configs, so without data_files `datasets`
# would read all three files into one split: every question three times, in three styles.
REASONMED_SUBSETS = {
    "ReasonMed.json": "chain of thought, then a concise answer summary (the paper's best recipe, ReasonMed-7B)",
    "CoTMed.json": "the chain of thought only",
    "ResponseMed.json": "the concise answer summary only",
}
_SURROGATE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8, kept by 'surrogateescape'


@dataclass
class RawRecord:
    location: str
    record: dict[str, Any] | None
    problem: RecordProblem | None = None
    source: str = ""  # the file (or dataset) it came from, for per-source format detection


def resolve_files(files: list[str]) -> list[Path]:
    """Turn `data.files` entries into existing paths. Raises DataError for missing or unsupported files."""
    paths = []

    for entry in files:
        derived = resolve_source(entry)  # e.g. pubmedqa-train:FOLDER, converted once into the cache
        path = derived or (builtin_path(entry) if entry.startswith("builtin:") else Path(entry).expanduser())
        if not path.is_file():
            raise DataError(f"data.files: {entry} does not exist (give .jsonl, .json or .parquet files)")
        if path.suffix.lower() not in SUFFIXES:
            raise DataError(f"data.files: {entry} has an unsupported extension; use one of {', '.join(SUFFIXES)}")
        paths.append(path)
    return paths


def iter_records(data: DataConfig) -> Iterator[RawRecord]:
    """All raw records of the configured source, in order."""
    if data.dataset:
        yield from iter_hub_records(data)
        return
    for path in resolve_files(data.files):
        suffix = path.suffix.lower()
        reader = iter_jsonl if suffix == ".jsonl" else iter_json if suffix == ".json" else iter_parquet
        count = 0
        for raw in reader(path):
            count += 1
            yield raw
        if count == 0:
            raise DataError(f"{path}: {_no_records(path)} (give it records, or remove it from data.files)")


def _no_records(path: Path) -> str:
    """Why a file that was read yielded no records, in a few words."""
    if path.suffix.lower() == ".parquet":
        return "a Parquet file with no rows, no records"
    text = path.read_bytes().decode("utf-8", errors="replace").lstrip("\ufeff").strip()
    return "an empty JSON array, no records" if re.fullmatch(r"\[\s*\]", text) else "empty file, no records"


def iter_jsonl(path: Path) -> Iterator[RawRecord]:
    """One JSON object per line; blank lines are not records."""
    source = str(path)
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            location = f"{source}:{number}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield RawRecord(location, None, RecordProblem("invalid_utf8", f"byte {exc.start}: {exc.reason}"), source)
                continue
            if number == 1:
                text = text.lstrip("\ufeff")
            # Without its line break, a JSON error at the end of the line keeps its real column
            # (json counts the break as the start of a line 2 of the text, column 1).
            yield _parsed(location, text.rstrip("\r\n"), source)


def _parsed(location: str, text: str, source: str) -> RawRecord:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        detail = f"{exc.msg.removesuffix(' at')} at column {exc.colno}"
        if not text[exc.pos:].strip():
            detail += " (the line ends early)"
        return RawRecord(location, None, RecordProblem("invalid_json", detail), source)
    if not isinstance(value, dict):
        return RawRecord(
            location, None, RecordProblem("invalid_json", f"expected a JSON object, got {type(value).__name__}"), source
        )
    return RawRecord(location, value, None, source)


def iter_json(path: Path) -> Iterator[RawRecord]:
    """A JSON array of objects (as ReasonMed.json on the hub), a single object, or JSON lines named .json."""
    source = str(path)
    # Undecodable bytes survive as lone surrogates, so the one bad record is caught, not the whole file.
    text = path.read_bytes().decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    decoder = json.JSONDecoder()
    position = _skip_space(text, 0)
    if position < len(text) and text[position] == "[":
        yield from _iter_array(text, position + 1, decoder, source)
        return
    try:
        value, end = decoder.raw_decode(text, position)
    except json.JSONDecodeError as exc:
        raise DataError(f"{source}:{_error_position(text, exc)}: not valid JSON ({_error_message(text, exc)})") from None
    if _skip_space(text, end) < len(text):  # more after the first value: JSON lines in a .json file
        yield from iter_jsonl(path)
        return
    yield _checked(f"{source}:1", value, text[position:end], source)


def _iter_array(text: str, position: int, decoder: json.JSONDecoder, source: str) -> Iterator[RawRecord]:
    """The elements of a top-level JSON array; each record's location names its line and its
    element index (0-based, as in data[3]), so a bad record can be found either way."""
    line, counted = 1, 0
    for index in itertools.count():
        position = _skip_space(text, position)
        if position < len(text) and text[position] == "]":
            return
        line += text.count("\n", counted, position)
        counted = position
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            # A broken array cannot be resynchronised record by record.
            raise DataError(
                f"{source}:{_error_position(text, exc)}: not valid JSON ({_error_message(text, exc)}) in element [{index}] "
                "of the array; a .json file must hold one JSON array (or use JSON lines in a .jsonl file)"
            ) from None
        yield _checked(f"{source}:{line} (element [{index}])", value, text[position:end], source)
        position = _skip_space(text, end)
        if position < len(text) and text[position] == ",":
            position += 1
        elif position >= len(text) or text[position] != "]":
            line += text.count("\n", counted, min(position, len(text.rstrip())))
            ending = "the file ends" if position >= len(text) else "found something else"
            raise DataError(
                f"{source}:{line}: not valid JSON (expected ',' or ']' after element [{index}] of the array; {ending})"
            )


def _error_position(text: str, exc: json.JSONDecodeError) -> str:
    """line:column of a JSON error; at the end of the file, just after its last character (json
    would name the start of the line after the final line break)."""
    if text[exc.pos:].strip():
        return f"{exc.lineno}:{exc.colno}"
    end = len(text.rstrip())
    line = text.count("\n", 0, end) + 1
    return f"{line}:{end - (text.rfind(chr(10), 0, end) + 1) + 1}"


def _error_message(text: str, exc: json.JSONDecodeError) -> str:
    return exc.msg if text[exc.pos:].strip() else f"{exc.msg}: the file ends early"


def _checked(location: str, value: Any, span: str, source: str) -> RawRecord:
    if _SURROGATE.search(span):
        return RawRecord(location, None, RecordProblem("invalid_utf8", "contains bytes that are not UTF-8"), source)
    if not isinstance(value, dict):
        problem = RecordProblem("invalid_json", f"expected a JSON object, got {type(value).__name__}")
        return RawRecord(location, None, problem, source)
    return RawRecord(location, value, None, source)


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def iter_parquet(path: Path) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    source = str(path)
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{source}: not a readable Parquet file ({exc})") from None
    row = 0
    for batch in parquet.iter_batches(batch_size=4096):
        for record in batch.to_pylist():
            row += 1
            yield RawRecord(f"{source}:row {row}", record, None, source)


def load_hub_dataset(data: DataConfig):
    """`datasets.load_dataset` for `data.dataset` (e.g. lingshu-medical-mllm/ReasonMed with
    data_files [ReasonMed.json]). Raises DataError when the dataset cannot be loaded."""
    import datasets

    check_reasonmed_subset(data)
    try:
        return datasets.load_dataset(
            data.dataset,
            data.dataset_config,
            split=data.split,
            data_files=data.data_files,
            revision=data.revision,
        )
    except Exception as exc:  # hub, network, auth and builder errors have no common base class
        raise DataError(
            f"data.dataset: cannot load {data.dataset!r} (config {data.dataset_config!r}, split {data.split!r}, "
            f"data_files {data.data_files}): {type(exc).__name__}: {exc}. Check the id and your network/login "
            "(`huggingface-cli login` for gated sets), or download the files and list them in data.files"
        ) from exc


def check_reasonmed_subset(data: DataConfig) -> None:
    """For ReasonMed on the hub, `data.data_files` must pick subsets by their file names. Raises DataError."""
    if data.dataset != REASONMED_HUB_ID or data.dataset_config:
        return
    choices = "; ".join(f"{name}: {what}" for name, what in REASONMED_SUBSETS.items())
    if not data.data_files:
        raise DataError(
            f"data.data_files: {REASONMED_HUB_ID} holds three subsets of the same questions and would be read as one; "
            f"pick one, e.g. data_files: [ReasonMed.json] ({choices})"
        )
    unknown = [name for name in data.data_files if name not in REASONMED_SUBSETS]
    if unknown:
        raise DataError(
            f"data.data_files: {', '.join(unknown)} is not a file of {REASONMED_HUB_ID}; its subsets are {choices}"
        )


def iter_hub_records(data: DataConfig, dataset=None) -> Iterator[RawRecord]:
    dataset = dataset if dataset is not None else load_hub_dataset(data)
    source = f"{data.dataset}[{data.split}]"
    row = 0
    for batch in dataset.iter(batch_size=4096):
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns)):
            yield RawRecord(f"{source}#{row}", dict(zip(columns, values)), None, source)
            row += 1


def source_digest(data: DataConfig, dataset=None) -> list[dict[str, Any]]:
    """What the source's content is: sha256 of each local file, or the hub dataset's identity and
    `datasets` fingerprint (which changes with the downloaded files)."""
    if data.dataset:
        fingerprint = getattr(dataset, "_fingerprint", None)
        return [
            {
                "dataset": data.dataset,
                "config": data.dataset_config,
                "split": data.split,
                "data_files": data.data_files,
                "revision": data.revision,
                "fingerprint": fingerprint,
            }
        ]
    return [{"path": str(path), "sha256": sha256_file(path), "bytes": path.stat().st_size} for path in resolve_files(data.files)]
