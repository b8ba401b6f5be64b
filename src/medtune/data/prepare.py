"""The data stage: load -> normalise -> validate -> deduplicate -> render -> tokenize -> split.

Writes `runs/<name>/data/` atomically:
  train/, val/        datasets Arrow (save_to_disk) with columns input_ids, labels (-100 except
                      reply tokens and their end-of-turn token), length, messages (the normalised
                      chat as a JSON string)
  dataset_dict.json   so `datasets.load_from_disk` (and `load_prepared`) reads both splits
  report.json         records read, kept, dropped by reason with file:line examples, truncated,
                      token-length stats, and the fingerprint of everything that shaped the data

Whether a rerun reuses the folder is the pipeline's decision (medtune.pipeline owns the only
fingerprint); the report records what shaped the data for provenance.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from datasets import (
    Dataset,
    DatasetDict,
    Features,
    Value,
    disable_progress_bars,
    enable_progress_bars,
    is_progress_bar_enabled,
    load_from_disk,
)
from datasets.arrow_writer import ArrowWriter

from medtune.artifacts import atomic_dir, atomic_write_json, fingerprint
from medtune.config import RunConfig
from medtune.data import formats, loading
from medtune.data.decontaminate import Decontaminator, question_text
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
from medtune.rl.prompts import held_out_of_sft, prompt_key
from medtune.rundir import RunDir
from medtune.tokenizer import load_tokenizer, template_pinned_date
from medtune.ui import progress

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
            "seconds": round(self.seconds, 2),
        }


def prepare_data(config: RunConfig, run: RunDir) -> PrepareResult:
    """Build the tokenized train/val data of a run from `config.data` with the base model's tokenizer,
    into `run.data` (atomically: the previous data stays until the new folder is complete).

    Whether it needs redoing is the pipeline's call (its fingerprint covers the data and model
    sections and the local files' contents); this function always builds. Returns a PrepareResult.
    Raises DataError (missing files, a bad record under invalid=error, nothing left to train on),
    ModelError (tokenizer or chat template unusable).
    """
    started = time.perf_counter()
    tokenizer = load_tokenizer(config.model)
    renderer = ChatRenderer.from_tokenizer(tokenizer)
    hub_dataset = loading.load_hub_dataset(config.data) if config.data.dataset else None
    sources = loading.source_digest(config.data, hub_dataset)
    decontaminator = _decontaminator(config)
    rl_held_out = held_out_of_sft(config)  # RL's prompts, kept out of SFT when rl.hold_out_of_sft
    timings = {"load_tokenizer_and_hash": round(time.perf_counter() - started, 2)}
    with atomic_dir(run.data) as tmp:
        report = _build(config, renderer, hub_dataset, decontaminator, tmp, timings, rl_held_out)
        report.update(
            fingerprint=_provenance(config, renderer, tokenizer, sources, decontaminator, rl_held_out),
            sources=sources,
            chat_template_eot=renderer.eot_token,
            # The date a "Today Date" template renders, pinned for every stage (None: it renders none).
            chat_template_date=template_pinned_date(renderer.chat_template),
            pad_token=tokenizer.pad_token,
            seconds=round(time.perf_counter() - started, 2),
            timings=timings,
        )
        atomic_write_json(tmp / run.data_report.name, report)
    return PrepareResult(run.data, report, seconds=time.perf_counter() - started)


def _build(config: RunConfig, renderer: ChatRenderer, hub_dataset, decontaminator, folder: Path,
           timings: dict[str, float], rl_held_out: set[str] | None = None) -> dict[str, Any]:
    """Read, validate, render, tokenize and split into `folder`; the report of what was kept and dropped."""
    work = folder / ".work"
    work.mkdir()
    mark = time.perf_counter()
    collected = _collect(config, renderer, hub_dataset, work / "records.arrow", decontaminator, rl_held_out)
    timings["read_validate"] = round(time.perf_counter() - mark, 2)
    report = _tokenize_split_save(config, renderer, collected, work, folder, timings)
    shutil.rmtree(work)
    report["formats"] = collected["formats"]
    if decontaminator is not None:
        summary = decontaminator.summary()
        summary["dropped"] = {name: report["dropped"].get(f"contaminated:{name}", 0) for name in summary["benchmarks"]}
        report["decontamination"] = summary
    if rl_held_out is not None:
        report["rl_held_out"] = {"prompts": len(rl_held_out), "dropped": report["dropped"].get("rl_prompt", 0)}
    return report


def _provenance(config: RunConfig, renderer: ChatRenderer, tokenizer, sources, decontaminator,
                rl_held_out: set[str] | None = None) -> str:
    """A hash of what shaped the data, recorded beside it for provenance: source digests, data
    settings, the chat template and the tokenizer."""
    inputs = {
        "version": PREPARE_VERSION,
        "sources": sources,
        "data": config.data.model_dump(mode="json", exclude={"num_proc"}),
        "decontamination": decontaminator.digest() if decontaminator else None,
        "rl_held_out": sorted(rl_held_out) if rl_held_out is not None else None,
        "seed": config.seed,
        "chat_template": renderer.chat_template,
        "tokenizer": hashlib.sha256(renderer.backend.to_str().encode()).hexdigest(),
        "pad_token": tokenizer.pad_token,
    }
    return fingerprint(inputs)


def _decontaminator(config: RunConfig) -> Decontaminator | None:
    return Decontaminator.from_config(config) if config.data.decontaminate.enabled else None


def _collect(config: RunConfig, renderer: ChatRenderer, hub_dataset, path: Path, decontaminator,
             rl_held_out: set[str] | None = None) -> dict[str, Any]:
    """Stream every record through normalise -> validate -> dedupe -> decontaminate -> RL hold-out; write the
    kept ones (normalised chat as JSON + location) to an Arrow file. Returns counts, the tally and formats used."""
    data = config.data
    control = control_token_pattern(renderer.control_tokens)
    tally = Tally()
    file_formats = formats.FileFormats(data.format)
    seen: dict[bytes, str] = {}
    looks: Counter[str] = Counter()  # the format each rejected record's keys suggest, for the "nothing left" message
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
        if rl_held_out:
            held = [prompt_key(question_text(messages)) in rl_held_out for _, _, messages in rows]
            for (_, location, _), is_held in zip(rows, held):
                if is_held:
                    tally.add("rl_prompt", location, "one of RL's prompts (rl.hold_out_of_sft)")
            rows = [row for row, is_held in zip(rows, held) if not is_held]
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
                messages = _checked_messages(raw, file_formats, data.system_prompt, control)
            except RecordProblem as problem:
                looks[formats.looks_like(raw.record) or "unknown"] += 1
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
    return {"records": records, "kept": kept, "tally": tally, "formats": file_formats.formats(), "path": path,
            "looks_like": dict(looks)}


def _checked_messages(raw, file_formats: formats.FileFormats, system_prompt: str | None, control) -> list[dict[str, str]]:
    """One raw record -> validated chat messages. Raises RecordProblem naming the record's own field."""
    if raw.problem is not None:
        raise raw.problem
    normalised = file_formats.normalise(raw.record, raw.source, raw.location)
    prompted = with_system_prompt(normalised, system_prompt)
    try:
        return check_messages(prompted, control)
    except RecordProblem as problem:
        system_added = len(prompted) - len(normalised)
        problem.field = file_formats.source_field(raw.source, raw.record, problem.field, bool(system_added))
        raise


def nothing_left_message(collected: dict[str, Any], configured_format: str) -> str:
    """Why no record survived, and when every record failed the same way, which format the records
    look like and the setting that reads them."""
    tally: Tally = collected["tally"]
    message = f"no usable records left out of {collected['records']}: dropped {tally.dropped}"
    if len(tally.dropped) != 1:
        return message
    reason = next(iter(tally.dropped))
    example = (tally.examples.get(reason) or [""])[0]
    message = (
        f"no usable records left out of {collected['records']}: every record was dropped as {reason}"
        f"{f' (e.g. {example})' if example else ''}"
    )
    looks = {name: n for name, n in collected.get("looks_like", {}).items() if name != "unknown"}
    likely = max(looks, key=looks.get) if looks else None
    if likely and likely != configured_format:
        message += (
            f". The records look like the '{likely}' format ({formats.FORMATS[likely].example}), but data.format "
            f"is '{configured_format}': set data.format: {likely} (or auto)"
        )
    elif reason == "unknown_format":
        message += f". Set data.format to the records' format: one of {', '.join(formats.FORMATS)}"
    return message


def _tokenize_split_save(
    config: RunConfig, renderer: ChatRenderer, collected: dict[str, Any], work: Path, out: Path, timings: dict[str, float]
) -> dict[str, Any]:
    data = config.data
    tally: Tally = collected["tally"]
    if collected["kept"] == 0:
        raise DataError(nothing_left_message(collected, data.format))
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


def read_report(run: RunDir, missing_ok: bool = False) -> dict[str, Any] | None:
    """The data stage's report.json of a run. Raises ArtifactError when missing (unless missing_ok)."""
    path = run.data_report
    if not path.is_file():
        if missing_ok:
            return None
        raise ArtifactError(f"{path} is missing: run `medtune prepare CONFIG` first")
    return json.loads(path.read_text(encoding="utf-8"))


def read_split(split_dir: Path) -> Dataset:
    """One prepared split (train/ or val/) as a `datasets.Dataset` with its `messages` column.

    Raises ArtifactError when it is missing, unreadable, or lacks the column (another version's folder)."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise ArtifactError(f"no prepared split in {split_dir}; run `medtune prepare CONFIG` first")
    try:
        dataset = load_from_disk(str(split_dir))
    except (OSError, ValueError, FileNotFoundError) as exc:
        raise ArtifactError(f"{split_dir}: cannot read the split ({exc}); rerun `medtune prepare`") from exc
    if "messages" not in dataset.column_names:
        raise ArtifactError(f"{split_dir}: no 'messages' column (has {dataset.column_names}); rerun `medtune prepare`")
    return dataset


def chat_messages(cell: Any) -> list[dict[str, str]]:
    """A split row's `messages` cell (the normalised chat, stored as a JSON string) as messages."""
    return json.loads(cell) if isinstance(cell, str) else list(cell)


def load_prepared(run: RunDir):
    """The prepared splits as a `datasets.DatasetDict` with keys 'train' and 'val' ('val' absent
    with data.val_size: 0).

    Columns: input_ids, labels, length, messages (JSON string of the chat). Raises ArtifactError
    when the data stage has not completed in `run`.
    """
    data_dir = run.data
    if not (data_dir / "dataset_dict.json").is_file() or not run.data_report.is_file():
        raise ArtifactError(f"{data_dir} holds no prepared data: run `medtune prepare CONFIG` first")
    return load_from_disk(str(data_dir))
