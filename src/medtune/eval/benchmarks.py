"""The benchmark registry: one small definition per benchmark, registered in one place.

A benchmark says where its items come from (a hub dataset, or local files in the benchmark's
original release format), how one item is turned into a user message, and what the answer labels
are. Everything here is plain Python (no torch), so data preparation can import it for
decontamination:

    from medtune.eval.benchmarks import load_items
    items = load_items("pubmedqa", "../shared/data/pubmedqa")   # list[Item]

Adding a benchmark = one `register(Benchmark(...))` call at the bottom of this file.
"""

from __future__ import annotations

import ast
import csv
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtune.errors import ConfigError, DataError

LETTERS = ("A", "B", "C", "D")
YES_NO_MAYBE = ("yes", "no", "maybe")


@dataclass(frozen=True)
class Item:
    """One evaluation question.

    `options` maps each answer label to its text (letters for multiple choice; for PubMedQA the
    labels are yes/no/maybe and map to themselves); `answer` is the correct label; `context` holds
    the passage a question is about (PubMedQA's abstract), empty otherwise.
    """

    id: str
    question: str
    options: dict[str, str]
    answer: str
    context: str = ""
    benchmark: str = ""


@dataclass(frozen=True)
class Benchmark:
    """How to load and prompt one benchmark."""

    name: str
    title: str
    hub_id: str
    hub_config: str | None
    hub_split: str
    choices: tuple[str, ...]
    load_local: Callable[[Path], list[Item]]
    from_hub_record: Callable[[dict[str, Any], int], Item]
    local_format: str = field(default="", compare=False)  # one line for error messages and --help
    default_path: str | None = None  # used when no path is given (benchmarks shipped with medtune)

    def load_hub(self) -> list[Item]:
        """Load the benchmark from the Hugging Face hub (needs network or a warm datasets cache)."""
        try:
            from datasets import load_dataset

            dataset = load_dataset(self.hub_id, self.hub_config, split=self.hub_split)
        except Exception as exc:  # datasets raises many unrelated types for "cannot fetch"
            raise DataError(
                f"benchmark {self.name}: cannot load {self.hub_id}"
                f"{'/' + self.hub_config if self.hub_config else ''} ({self.hub_split}) from the hub: {exc}; "
                f"without network pass a local copy with path ({self.local_format})"
            ) from exc
        return [self.from_hub_record(dict(record), index) for index, record in enumerate(dataset)]


REGISTRY: dict[str, Benchmark] = {}
# Group names that expand to several registered benchmarks.
GROUPS: dict[str, tuple[str, ...]] = {}


def register(benchmark: Benchmark) -> Benchmark:
    if benchmark.name in REGISTRY or benchmark.name in GROUPS:
        raise ValueError(f"benchmark {benchmark.name!r} registered twice")
    REGISTRY[benchmark.name] = benchmark
    return benchmark


def benchmark_names() -> list[str]:
    """Every registered benchmark and group name."""
    return sorted([*REGISTRY, *GROUPS])


def expand(name: str) -> list[str]:
    """Registered benchmark names behind `name` (a benchmark or a group such as mmlu_medical)."""
    if name in REGISTRY:
        return [name]
    if name in GROUPS:
        return list(GROUPS[name])
    raise ConfigError(f"unknown benchmark {name!r}; known: {', '.join(benchmark_names())}")


def get_benchmark(name: str) -> Benchmark:
    if name not in REGISTRY:
        expand(name)  # raises with the list of names
        raise ConfigError(f"{name!r} is a group of benchmarks ({', '.join(GROUPS[name])}); evaluate its members")
    return REGISTRY[name]


def load_items(name: str, path: str | Path | None = None, limit: int | None = None, seed: int = 0) -> list[Item]:
    """The evaluation items of a benchmark (or group), in a stable order.

    `path`: local data in the benchmark's original release format (a file or a folder); None loads
    from the hub. `limit`: a fixed subset of N items drawn with `seed` (the same N and seed always
    give the same items, kept in their original order). For a group, `limit` applies per member.
    Raises ConfigError for unknown names, DataError for missing or malformed files.
    """
    if path is not None and not str(path).startswith("builtin:") and not Path(path).exists():
        raise DataError(f"benchmark {name}: {path} does not exist (give a file or folder in the original release format)")
    items: list[Item] = []
    for member in expand(name):
        benchmark = REGISTRY[member]
        source = path if path is not None else benchmark.default_path
        if source is not None and str(source).startswith("builtin:"):
            from medtune.data.loading import builtin_path

            source = builtin_path(str(source))  # a data file shipped with medtune
        loaded = benchmark.load_local(Path(source)) if source is not None else benchmark.load_hub()
        if not loaded:
            raise DataError(f"benchmark {member}: no items found in {path or benchmark.hub_id}")
        items.extend(subset(loaded, limit, seed))
    return items


def subset(items: list[Item], limit: int | None, seed: int = 0) -> list[Item]:
    """A seeded random subset of `limit` items in their original order (all items if limit is None)."""
    if limit is None or limit >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


# --- prompts ---------------------------------------------------------------------------------------

LOGLIK_ANSWER_PREFIX = "The answer is"
"""Written at the start of the assistant turn in loglik mode; candidates (' yes', ' B') follow it."""


def user_message(item: Item, mode: str) -> str:
    """The user turn for an item: passage, question, options and the answer instruction for `mode`."""
    labels = list(item.options)
    yes_no = labels == list(YES_NO_MAYBE)
    parts = []
    if item.context:
        parts.append(f"Abstract:\n{item.context}")
    parts.append(f"Question: {item.question}")
    if not yes_no:
        parts.append("Options:\n" + "\n".join(f"{label}. {text}" for label, text in item.options.items()))
    choice_words = "yes, no, or maybe" if yes_no else "the letter of the correct option"
    if mode == "cot":
        final = "yes, no or maybe" if yes_no else "the option letter"
        parts.append(
            f"Think step by step, then finish with the sentence \"The answer is X.\" where X is {final}."
        )
    else:
        parts.append(f"Answer with {choice_words}.")
    return "\n\n".join(parts)


# --- PubMedQA ---------------------------------------------------------------------------------------

PUBMEDQA_FILES = ("ori_pqal.json", "test_ground_truth.json")


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}): {exc.msg}") from exc


def _pubmedqa_contexts(value: Any) -> list[str]:
    # Some copies store CONTEXTS as the repr of a Python list; the original release has a JSON list.
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            value = [value]
    return [str(v) for v in value]


def _pubmedqa_item(pmid: str, question: str, contexts: list[str], decision: str, where: str) -> Item:
    decision = str(decision).strip().lower()
    if decision not in YES_NO_MAYBE:
        raise DataError(f"{where}: record {pmid}: final decision {decision!r} is not yes/no/maybe")
    return Item(
        id=str(pmid),
        question=question.strip(),
        options={label: label for label in YES_NO_MAYBE},
        answer=decision,
        context="\n".join(c.strip() for c in contexts),
        benchmark="pubmedqa",
    )


def load_pubmedqa_local(path: Path) -> list[Item]:
    """PQA-L test split from the original release: `ori_pqal.json` + `test_ground_truth.json`.

    `path` is the folder holding both files, or `ori_pqal.json` itself (its folder must hold the
    ground truth). The labels come from test_ground_truth.json, in its order (500 items).
    """
    folder = path if path.is_dir() else path.parent
    records = _read_json(folder / PUBMEDQA_FILES[0])
    truth = _read_json(folder / PUBMEDQA_FILES[1])
    if not isinstance(records, dict) or not isinstance(truth, dict):
        raise DataError(f"{folder}: expected JSON objects keyed by PubMed id in {' and '.join(PUBMEDQA_FILES)}")
    items = []
    for pmid, decision in truth.items():
        record = records.get(pmid)
        if record is None:
            raise DataError(f"{folder / PUBMEDQA_FILES[1]}: id {pmid} is not in {PUBMEDQA_FILES[0]}")
        try:
            question, contexts = record["QUESTION"], _pubmedqa_contexts(record["CONTEXTS"])
        except (KeyError, TypeError) as exc:
            raise DataError(f"{folder / PUBMEDQA_FILES[0]}: record {pmid} lacks QUESTION/CONTEXTS") from exc
        items.append(_pubmedqa_item(pmid, question, contexts, decision, str(folder / PUBMEDQA_FILES[1])))
    return items


def pubmedqa_from_hub(record: dict[str, Any], index: int) -> Item:
    context = record.get("context") or {}
    return _pubmedqa_item(
        str(record["pubid"]), record["question"], list(context.get("contexts", [])), record["final_decision"],
        "qiaojin/PubMedQA",
    )


# --- multiple choice (MedQA, MedMCQA, MMLU) --------------------------------------------------------


def _mc_item(benchmark: str, item_id: str, question: str, options: list[str], answer: str, where: str) -> Item:
    if len(options) != 4 or any(not str(o).strip() for o in options):
        raise DataError(f"{where}: item {item_id}: expected 4 non-empty options, got {options!r}")
    answer = str(answer).strip().upper()
    if answer not in LETTERS:
        raise DataError(f"{where}: item {item_id}: answer {answer!r} is not one of A, B, C, D")
    return Item(
        id=item_id,
        question=str(question).strip(),
        options={letter: str(text).strip() for letter, text in zip(LETTERS, options)},
        answer=answer,
        benchmark=benchmark,
    )


def _find_file(path: Path, patterns: tuple[str, ...], what: str) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        for pattern in patterns:
            found = sorted(path.glob(pattern))
            if found:
                return found[0]
    raise DataError(f"{path}: no {what} found (looked for {', '.join(patterns)})")


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid JSON: {exc.msg}") from exc
    return rows


def _medqa_options(options: Any, where: str) -> list[str]:
    if isinstance(options, dict):
        try:
            return [options[letter] for letter in LETTERS]
        except KeyError as exc:
            raise DataError(f"{where}: options lack key {exc}; expected A, B, C, D") from exc
    if isinstance(options, list):  # hub copies store [{"key": "A", "value": ...}, ...]
        mapping = {o.get("key"): o.get("value") for o in options if isinstance(o, dict)}
        return [mapping.get(letter, "") for letter in LETTERS]
    raise DataError(f"{where}: options must be an object {{A: ..., D: ...}}")


def load_medqa_local(path: Path) -> list[Item]:
    """MedQA (USMLE, 4 options) JSONL: `question`, `options` {A..D}, `answer_idx` per line.

    `path` is the JSONL file or a folder holding `*test*.jsonl`.
    """
    file = _find_file(path, ("test.jsonl", "*test*.jsonl", "**/*4_options*/**/*test*.jsonl"), "MedQA test JSONL")
    items = []
    for number, row in _read_jsonl(file):
        where = f"{file}:{number}"
        try:
            options = _medqa_options(row["options"], where)
            items.append(_mc_item("medqa", f"medqa-{number}", row["question"], options, row["answer_idx"], where))
        except KeyError as exc:
            raise DataError(f"{where}: missing field {exc}; expected question, options, answer_idx") from exc
    return items


def medqa_from_hub(record: dict[str, Any], index: int) -> Item:
    where = f"GBaker/MedQA-USMLE-4-options test row {index}"
    return _mc_item("medqa", f"medqa-{index + 1}", record["question"], _medqa_options(record["options"], where),
                    record["answer_idx"], where)


def _medmcqa_answer(cop: Any, one_based: bool, where: str) -> str:
    if isinstance(cop, str) and cop.strip().upper() in LETTERS:
        return cop.strip().upper()
    try:
        index = int(cop) - (1 if one_based else 0)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: cop {cop!r} is not an option number") from exc
    if not 0 <= index < 4:
        raise DataError(f"{where}: cop {cop!r} is out of range ({'1-4' if one_based else '0-3'})")
    return LETTERS[index]


def load_medmcqa_local(path: Path) -> list[Item]:
    """MedMCQA original release `dev.json` (one JSON object per line): `question`, `opa`..`opd`, `cop`.

    In the original release `cop` is 1-4 (1 = opa); the hub copy uses 0-3. `path` is the file or a
    folder holding dev.json / validation*.jsonl.
    """
    file = _find_file(path, ("dev.json", "validation*.json*", "*dev*.json*"), "MedMCQA dev.json")
    items = []
    for number, row in _read_jsonl(file):
        where = f"{file}:{number}"
        try:
            options = [row["opa"], row["opb"], row["opc"], row["opd"]]
            answer = _medmcqa_answer(row["cop"], one_based=True, where=where)
            items.append(_mc_item("medmcqa", str(row.get("id") or f"medmcqa-{number}"), row["question"], options,
                                  answer, where))
        except KeyError as exc:
            raise DataError(f"{where}: missing field {exc}; expected question, opa, opb, opc, opd, cop") from exc
    return items


def medmcqa_from_hub(record: dict[str, Any], index: int) -> Item:
    where = f"openlifescienceai/medmcqa validation row {index}"
    options = [record["opa"], record["opb"], record["opc"], record["opd"]]
    answer = _medmcqa_answer(record["cop"], one_based=False, where=where)
    return _mc_item("medmcqa", str(record.get("id") or f"medmcqa-{index + 1}"), record["question"], options, answer, where)


MMLU_MEDICAL = (
    "anatomy",
    "clinical_knowledge",
    "college_biology",
    "college_medicine",
    "medical_genetics",
    "professional_medicine",
)


def _mmlu_loader(subject: str) -> Callable[[Path], list[Item]]:
    def load(path: Path) -> list[Item]:
        """MMLU original release CSV without header: question, A, B, C, D, answer letter.

        `path` is the CSV, a folder holding `<subject>_test.csv`, or the release root (data/test/).
        """
        name = f"{subject}_test.csv"
        file = _find_file(path, (name, f"test/{name}", f"data/test/{name}"), f"MMLU {name}")
        items = []
        with open(file, encoding="utf-8", newline="") as handle:
            for number, row in enumerate(csv.reader(handle), 1):
                if not row:
                    continue
                where = f"{file}:{number}"
                if len(row) != 6:
                    raise DataError(f"{where}: expected 6 columns (question, A, B, C, D, answer), got {len(row)}")
                items.append(_mc_item(f"mmlu_{subject}", f"mmlu_{subject}-{number}", row[0], row[1:5], row[5], where))
        return items

    return load


def _mmlu_from_hub(subject: str) -> Callable[[dict[str, Any], int], Item]:
    def convert(record: dict[str, Any], index: int) -> Item:
        answer = record["answer"]
        letter = LETTERS[answer] if isinstance(answer, int) else answer
        return _mc_item(f"mmlu_{subject}", f"mmlu_{subject}-{index + 1}", record["question"], list(record["choices"]),
                        letter, f"cais/mmlu {subject} test row {index}")

    return convert


# --- the registry ------------------------------------------------------------------------------------

register(Benchmark(
    name="pubmedqa",
    title="PubMedQA (PQA-L test)",
    # The hub copy has no split column: all 1,000 labelled items load from it; the standard 500-item
    # test split needs the original test_ground_truth.json (pass the release folder as path).
    hub_id="qiaojin/PubMedQA",
    hub_config="pqa_labeled",
    hub_split="train",
    choices=YES_NO_MAYBE,
    load_local=load_pubmedqa_local,
    from_hub_record=pubmedqa_from_hub,
    local_format="folder with ori_pqal.json and test_ground_truth.json",
))
register(Benchmark(
    name="medqa",
    title="MedQA (USMLE, 4 options, test)",
    hub_id="GBaker/MedQA-USMLE-4-options",
    hub_config=None,
    hub_split="test",
    choices=LETTERS,
    load_local=load_medqa_local,
    from_hub_record=medqa_from_hub,
    local_format="JSONL with question, options {A..D}, answer_idx",
))
register(Benchmark(
    name="medmcqa",
    title="MedMCQA (validation)",
    hub_id="openlifescienceai/medmcqa",
    hub_config=None,
    hub_split="validation",
    choices=LETTERS,
    load_local=load_medmcqa_local,
    from_hub_record=medmcqa_from_hub,
    local_format="dev.json lines with question, opa..opd, cop (1-4)",
))
for _subject in MMLU_MEDICAL:
    register(Benchmark(
        name=f"mmlu_{_subject}",
        title=f"MMLU {_subject.replace('_', ' ')} (test)",
        hub_id="cais/mmlu",
        hub_config=_subject,
        hub_split="test",
        choices=LETTERS,
        load_local=_mmlu_loader(_subject),
        from_hub_record=_mmlu_from_hub(_subject),
        local_format=f"headerless {_subject}_test.csv (question,A,B,C,D,answer) or the MMLU data folder",
    ))
GROUPS["mmlu_medical"] = tuple(f"mmlu_{s}" for s in MMLU_MEDICAL)


# --- ReasonMed-style multiple choice (medtune's shipped held-out set, or any such JSONL) -------------

_OPTION_LINE = re.compile(r"^\s*([A-D])[.)]\s*(.+?)\s*$")
_FINAL_ANSWER = re.compile(r"The answer is \(?([A-D])\)?\.?\s*$")


def load_reasonmed_mcq_local(path: Path) -> list[Item]:
    """Multiple-choice records in ReasonMed's schema: options "A. ..." as lines of `input` (or of
    `instruction`), the answer from the final "The answer is X." of `output`. medtune ships one
    such set, `builtin:reasonmed-heldout`."""
    items = []
    for line_no, record in _read_jsonl(Path(path)):
        where = f"{path}:{line_no}"
        text = f"{record.get('instruction', '')}\n{record.get('input', '')}"
        options = [m.group(2) for m in map(_OPTION_LINE.match, text.splitlines()) if m]
        question = "\n".join(l for l in str(record.get("instruction", "")).splitlines() if not _OPTION_LINE.match(l))
        answer = _FINAL_ANSWER.search(str(record.get("output", "")).strip())
        if not answer:
            raise DataError(f"{where}: output does not end with 'The answer is X.'")
        items.append(_mc_item("medtune_sample", f"{Path(path).stem}-{line_no}", question, options, answer.group(1), where))
    return items


def _no_hub_record(record: dict[str, Any], index: int) -> Item:
    raise DataError("medtune_sample has no hub copy: it ships with medtune (path builtin:reasonmed-heldout)")


register(Benchmark(
    name="medtune_sample",
    title="medtune held-out sample (16 original MCQs)",
    hub_id="",
    hub_config=None,
    hub_split="",
    choices=LETTERS,
    load_local=load_reasonmed_mcq_local,
    from_hub_record=_no_hub_record,
    default_path="builtin:reasonmed-heldout",
    local_format="ReasonMed-style JSONL (options as 'A. ...' lines, output ending 'The answer is X.'), or builtin:reasonmed-heldout",
))
