"""Artifacts on disk: atomic writes, hashes and the run manifest.

Nothing half-written may be mistaken for a finished artifact, so every file and folder is written
under a temporary name in the same directory and renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medtune.rundir import RunDir

_TMP_MARK = ".tmp-"


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f"{path.name}{_TMP_MARK}{os.getpid()}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write `path` through; rename on success, delete on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces `path` whole, on failure it is removed.

    The previous good `path` stays untouched until the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        old = path.with_name(f"{path.name}.old-{os.getpid()}")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete leftovers of interrupted atomic writes (`*.tmp-PID`, `*.old-PID`) directly in `folder`."""
    removed = []
    if not Path(folder).is_dir():
        return removed
    for child in Path(folder).iterdir():
        if _TMP_MARK in child.name or ".old-" in child.name:
            shutil.rmtree(child) if child.is_dir() else child.unlink()
            removed.append(child)
    return removed


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def describe_outputs(paths: list[Path], root: Path) -> list[dict[str, Any]]:
    """Size and sha256 of every file under the given files/folders, paths relative to `root`."""
    records = []
    for path in paths:
        files = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [Path(path)]
        for file in files:
            records.append(
                {"path": str(file.relative_to(root)), "size": file.stat().st_size, "sha256": sha256_file(file)}
            )
    return records


def fingerprint(obj: Any) -> str:
    """A stable hash of JSON-able inputs (config sections, input artifact hashes)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def read_manifest(run_dir: Path) -> dict[str, Any]:
    return RunDir(Path(run_dir)).manifest()


def record_stage(run_dir: Path, stage: str, entry: dict[str, Any]) -> None:
    """Store one stage's manifest entry (status, fingerprint, outputs, seconds, figures).

    The pipeline is its only caller in medtune (tests call it to lay out a run by hand)."""
    run = RunDir(Path(run_dir))
    manifest = run.manifest()
    manifest.setdefault("stages", {})[stage] = {**entry, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_json(run.manifest_file, manifest)
