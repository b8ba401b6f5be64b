"""The data stage: load -> normalise -> validate -> deduplicate -> render -> tokenize -> split.

Writes `runs/<name>/data/` atomically:
  train/, val/        datasets Arrow (save_to_disk) with columns input_ids, labels (-100 except
                      reply tokens and their end-of-turn token), length, messages (the normalised
                      chat as a JSON string)
  dataset_dict.json   so `datasets.load_from_disk` (and `load_prepared`) reads both splits
  report.json         records read, kept, dropped by reason with file:line examples, truncated,
                      token-length stats, and the fingerprint of everything that shaped the data

A rerun with an unchanged fingerprint (source contents, data settings, chat template,
tokenizer, seed) reuses the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medtune.artifacts import atomic_dir, atomic_write_json, fingerprint
from medtune.config import RunConfig
from medtune.data import formats, loading
from medtune.data.decontaminate import question_text
from medtune.data.rendering import NO_FINAL_ANSWER, TOO_LONG, TRUNCATED, ChatRenderer, tokenize_table
from medtune.data.validation import (
    REASONS,
    RecordProblem,
    Tally,
    check_messages,
    control_token_pattern,
    reject,
    with_system_prompt,
)
from medtune.errors import ArtifactError, DataError

DATA_DIR = "data"
REPORT = "report.json"
SPLITS = ("train", "val")
COLUMNS = ("input_ids", "labels", "length", "messages")
# Bump when the output for the same inputs changes (labelling rules, columns, split method).
PREPARE_VERSION = 2
_WRITE_BATCH = 8192
_MAP_BATCH = 512
# Below this many records, worker start-up costs more than it saves.
_MIN_RECORDS_PER_WORKER = 4000


@dataclass
class PrepareResult:
    """What the data stage made: where, the report (counts, reasons, length stats), and whether it was reused."""

    data_dir: Path
    report: dict[str, Any]
    reused: bool = False
    seconds: float = 0.0

    def figures(self) -> dict[str, Any]:
        report = self.report
        return {
            "records_read": report["records_read"],
            "kept": report["kept"],
            "train": report["train"],
            "val": report["val"],
            "dropped": report["dropped"],
            "truncated": report["truncated"],
            "tokens_p50": report["token_lengths"]["p50"],
            "tokens_max": report["token_lengths"]["max"],
            "reused": self.reused,
        }


def prepare_data(config: RunConfig, force: bool = False) -> PrepareResult:
    """Build the tokenized train/val data of a run from `config.data` with the base model's tokenizer.

    Returns a PrepareResult. Raises DataError (missing files, a bad record under invalid=error,
    nothing left to train on), ModelError (tokenizer or chat template unusable).
    """
    from medtune.tokenizer import load_tokenizer

    started = time.perf_counter()
    data = config.data
    run_dir = config.run_dir
    data_dir = run_dir / DATA_DIR
    tokenizer = load_tokenizer(config.model)
    renderer = ChatRenderer.from_tokenizer(tokenizer)
    hub_dataset = loading.load_hub_dataset(data) if data.dataset else None
    sources = loading.source_digest(data, hub_dataset)
    decontaminator = _decontaminator(config)
    inputs = {
        "version": PREPARE_VERSION,
        "sources": sources,
        "data": data.model_dump(mode="json", exclude={"num_proc"}),
        "decontamination": decontaminator.digest() if decontaminator else None,
        "seed": config.seed,
        "chat_template": renderer.chat_template,
        "tokenizer": hashlib.sha256(renderer.backend.to_str().encode()).hexdigest(),
        "pad_token": tokenizer.pad_token,
    }
    digest = fingerprint(inputs)
    if not force:
        previous = read_report(run_dir, missing_ok=True)
        if previous and previous.get("fingerprint") == digest and all((data_dir / s).is_dir() for s in SPLITS):
            return PrepareResult(data_dir, previous, reused=True, seconds=time.perf_counter() - started)

    with atomic_dir(data_dir) as tmp:
        work = tmp / ".work"
        work.mkdir()
        timings = {"load_tokenizer_and_hash": round(time.perf_counter() - started, 2)}
        mark = time.perf_counter()
        collected = _collect(config, renderer, hub_dataset, work / "records.arrow", decontaminator)
        timings["read_validate"] = round(time.perf_counter() - mark, 2)
        report = _tokenize_split_save(config, renderer, collected, work, tmp, timings)
        shutil.rmtree(work)
        if decontaminator is not None:
            summary = decontaminator.summary()
            summary["dropped"] = {name: report["dropped"].get(f"contaminated:{name}", 0) for name in summary["benchmarks"]}
            report["decontamination"] = summary
        report.update(
            fingerprint=digest,
            sources=sources,
            formats=collected["formats"],
            chat_template_eot=renderer.eot_token,
            pad_token=tokenizer.pad_token,
            seconds=round(time.perf_counter() - started, 2),
            timings=timings,
        )
        atomic_write_json(tmp / REPORT, report)
    result = PrepareResult(data_dir, report, reused=False, seconds=time.perf_counter() - started)
    from medtune.pipeline import record_stage_result

    record_stage_result(config, "prepare", {"seconds": round(result.seconds, 2), **result.figures()})
    return result


def _decontaminator(config: RunConfig):
    if not config.data.decontaminate.enabled:
        return None
    from medtune.data.decontaminate import Decontaminator

    return Decontaminator.from_config(config)


def _collect(config: RunConfig, renderer: ChatRenderer, hub_dataset, path: Path, decontaminator) -> dict[str, Any]:
    """Stream every record through normalise -> validate -> dedupe -> decontaminate; write the kept ones
    (normalised chat as JSON + location) to an Arrow file. Returns counts, the tally and formats used."""
    from datasets import Features, Value
    from datasets.arrow_writer import ArrowWriter

    from medtune.ui import progress

    data = config.data
    control = control_token_pattern(renderer.control_tokens)
    tally = Tally()
    file_formats = formats.FileFormats(data.format)
    seen: dict[bytes, str] = {}
    records = kept = 0
    raw_records = (
        loading.iter_hub_records(data, hub_dataset) if hub_dataset is not None else loading.iter_records(data)
    )
    features = Features({"messages": Value("string"), "source": Value("string")})
    buffer: list[tuple[str, str, list[dict[str, str]]]] = []  # (chat JSON, location, messages)

    def flush(writer) -> int:
        rows = list(buffer)
        if decontaminator is not None:
            hits = decontaminator.find([question_text(messages) for _, _, messages in rows])
            for (_, location, _), hit in zip(rows, hits):
                if hit is not None:
                    tally.add(f"contaminated:{hit.benchmark}", location, hit.describe())
            rows = [row for row, hit in zip(rows, hits) if hit is None]
        if rows:
            writer.write_batch({"messages": [r[0] for r in rows], "source": [r[1] for r in rows]})
        buffer.clear()
        return len(rows)

    with ArrowWriter(path=str(path), features=features) as writer, progress() as bar:
        task = bar.add_task("Reading records", total=data.limit)
        for raw in raw_records:
            if data.limit is not None and records >= data.limit:
                break
            records += 1
            if records % 2000 == 0:
                bar.update(task, completed=records)
            try:
                if raw.problem is not None:
                    raise raw.problem
                messages = file_formats.normalise(raw.record, raw.source, raw.location)
                messages = check_messages(with_system_prompt(messages, data.system_prompt), control)
            except RecordProblem as problem:
                reject(problem, raw.location, data.invalid, tally)
                continue
            text = json.dumps(messages, ensure_ascii=False)
            if data.deduplicate:
                key = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
                if key in seen:
                    reject(RecordProblem("duplicate", f"same chat as {seen[key]}"), raw.location, data.invalid, tally)
                    continue
                seen[key] = raw.location
            buffer.append((text, raw.location, messages))
            if len(buffer) >= _WRITE_BATCH:
                kept += flush(writer)
        kept += flush(writer)
        if kept == 0:
            writer.write_batch({"messages": [], "source": []})
        writer.finalize()
        bar.update(task, completed=records, total=records)
    if records == 0:
        raise DataError("the data source holds no records (empty files?)")
    return {"records": records, "kept": kept, "tally": tally, "formats": file_formats.formats(), "path": path}


def _tokenize_split_save(
    config: RunConfig, renderer: ChatRenderer, collected: dict[str, Any], work: Path, out: Path, timings: dict[str, float]
) -> dict[str, Any]:
    from datasets import Dataset, DatasetDict, disable_progress_bars, enable_progress_bars, is_progress_bar_enabled

    data = config.data
    tally: Tally = collected["tally"]
    if collected["kept"] == 0:
        raise DataError(f"no usable records left out of {collected['records']}: dropped {tally.dropped}")
    mark = time.perf_counter()
    records = Dataset.from_file(str(collected["path"]))
    num_proc = data.num_proc or _available_cores()
    num_proc = max(1, min(num_proc, len(records) // _MIN_RECORDS_PER_WORKER))
    tokenized = records.with_format("arrow").map(
        tokenize_table,
        batched=True,
        batch_size=_MAP_BATCH,
        num_proc=num_proc if num_proc > 1 else None,
        fn_kwargs={"renderer": renderer, "max_length": data.max_length, "truncate": data.too_long == "truncate",
                   "final_answer_only": data.loss_on == "final_answer"},
        cache_file_name=str(work / "tokenized.arrow"),
        new_fingerprint=hashlib.sha256(str(work).encode()).hexdigest()[:16],
        desc="Tokenizing",
    ).with_format(None)
    timings["tokenize"] = round(time.perf_counter() - mark, 2)
    mark = time.perf_counter()
    status = tokenized.data.column("status").to_numpy()
    full_lengths = tokenized.data.column("full_length").to_numpy()
    too_long = np.flatnonzero(status == TOO_LONG)
    if len(too_long):
        sources = tokenized.select(too_long[:5])["source"]  # (.data would ignore the selection)
        for row, location in zip(too_long, sources):
            tally.add("too_long", location, f"{full_lengths[row]} tokens > data.max_length {data.max_length}")
        tally.dropped["too_long"] = int(len(too_long))
    no_answer = np.flatnonzero(status == NO_FINAL_ANSWER)
    if len(no_answer):
        for location in tokenized.select(no_answer[:5])["source"]:
            tally.add("no_final_answer", location, "a reply has no \"The answer is ...\" sentence to put the loss on")
        tally.dropped["no_final_answer"] = int(len(no_answer))
    keep = np.flatnonzero((status != TOO_LONG) & (status != NO_FINAL_ANSWER))
    if len(keep) == 0:
        raise DataError(f"no usable records left out of {collected['records']}: dropped {tally.dropped}")
    train_rows, val_rows = split_indices(len(keep), data.val_size, config.seed)
    final = tokenized.remove_columns(["source", "full_length", "status", "label_tokens"])
    splits = DatasetDict({"train": final.select(keep[train_rows], keep_in_memory=True)})
    if len(val_rows):  # data.val_size: 0 -> no val split (datasets cannot read back an empty one)
        splits["val"] = final.select(keep[val_rows], keep_in_memory=True)
    shown = is_progress_bar_enabled()
    disable_progress_bars()  # one bar per shard of a big save is noise
    try:
        splits.save_to_disk(str(out))
    finally:
        if shown:
            enable_progress_bars()
    timings["split_save"] = round(time.perf_counter() - mark, 2)
    lengths = tokenized.data.column("length").to_numpy()[keep]
    label_tokens = int(tokenized.data.column("label_tokens").to_numpy()[keep].sum())
    kept = int(len(keep))
    dropped = dict(sorted(tally.dropped.items(), key=lambda kv: -kv[1]))
    if collected["records"] != kept + sum(dropped.values()):  # every record is kept or counted
        raise DataError(f"internal error: {collected['records']} records read but {kept} kept + {dropped} dropped")
    truncated = int((status == TRUNCATED).sum())
    return {
        "records_read": collected["records"],
        "kept": kept,
        "train": int(len(train_rows)),
        "val": int(len(val_rows)),
        "dropped": dropped,
        "dropped_total": int(sum(dropped.values())),
        "reasons": {reason: REASONS.get(reason.split(":")[0], reason) for reason in dropped},
        "examples": {reason: tally.examples.get(reason, []) for reason in dropped},
        "truncated": truncated,
        "truncated_fraction": round(truncated / kept, 6),
        "max_length": data.max_length,
        "too_long_policy": data.too_long,
        "token_lengths": length_stats(lengths),
        "token_lengths_before_limit": length_stats(full_lengths),
        "label_tokens": label_tokens,
        "columns": list(COLUMNS),
    }


def _available_cores() -> int:
    # The cores this process may run on (a container's share), not the host's count.
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def split_indices(count: int, val_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/val split of `count` kept records: a seeded permutation, val first.

    `val_size` < 1 is a share (at least one example when count >= 2), >= 1 a count. Both index
    arrays come back sorted. Raises DataError when nothing would be left to train on.
    """
    if val_size >= 1:
        n_val = int(val_size)
    else:
        n_val = int(round(count * val_size))
        if val_size > 0 and n_val == 0 and count >= 2:
            n_val = 1
    if n_val >= count:
        raise DataError(
            f"data.val_size={val_size} leaves no training examples out of {count} kept records; lower data.val_size"
        )
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def length_stats(lengths: np.ndarray) -> dict[str, float | int]:
    """Token-length percentiles (p50/p90/p99), max, mean and total."""
    if len(lengths) == 0:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0, "mean": 0.0, "total": 0}
    p50, p90, p99 = np.percentile(lengths, [50, 90, 99])
    return {
        "p50": int(p50),
        "p90": int(p90),
        "p99": int(p99),
        "max": int(lengths.max()),
        "mean": round(float(lengths.mean()), 1),
        "total": int(lengths.sum()),
    }


def read_report(run_dir: Path, missing_ok: bool = False) -> dict[str, Any] | None:
    """The data stage's report.json of a run. Raises ArtifactError when missing (unless missing_ok)."""
    path = Path(run_dir) / DATA_DIR / REPORT
    if not path.is_file():
        if missing_ok:
            return None
        raise ArtifactError(f"{path} is missing: run `medtune prepare CONFIG` first")
    return json.loads(path.read_text(encoding="utf-8"))


def load_prepared(run_dir: Path):
    """The prepared splits as a `datasets.DatasetDict` with keys 'train' and 'val' ('val' absent
    with data.val_size: 0).

    Columns: input_ids, labels, length, messages (JSON string of the chat). Raises ArtifactError
    when the data stage has not completed in `run_dir`.
    """
    from datasets import load_from_disk

    data_dir = Path(run_dir) / DATA_DIR
    if not (data_dir / "dataset_dict.json").is_file() or not (data_dir / REPORT).is_file():
        raise ArtifactError(f"{data_dir} holds no prepared data: run `medtune prepare CONFIG` first")
    return load_from_disk(str(data_dir))
