"""Atomic writes never leave a half-written artifact where a finished one is expected."""

from __future__ import annotations

import json

import pytest

from medtune.artifacts import (
    atomic_dir,
    atomic_file,
    atomic_write_json,
    describe_outputs,
    read_manifest,
    record_stage,
    remove_stale_temporaries,
)


def test_atomic_dir_keeps_previous_good_folder_when_writing_fails(tmp_path):
    target = tmp_path / "merged"
    with atomic_dir(target) as tmp:
        (tmp / "weights.bin").write_bytes(b"good")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "weights.bin").write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert (target / "weights.bin").read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]


def test_atomic_dir_replaces_whole_folder(tmp_path):
    target = tmp_path / "gguf"
    with atomic_dir(target) as tmp:
        (tmp / "old.gguf").write_bytes(b"1")
    with atomic_dir(target) as tmp:
        (tmp / "new.gguf").write_bytes(b"2")
    assert sorted(p.name for p in target.iterdir()) == ["new.gguf"]


def test_atomic_file_removes_temporary_on_failure(tmp_path):
    target = tmp_path / "a.gguf"
    with pytest.raises(ValueError):
        with atomic_file(target) as tmp:
            tmp.write_bytes(b"partial")
            raise ValueError
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_stale_temporaries_from_a_killed_process_are_removed(tmp_path):
    (tmp_path / "adapter.tmp-12345").mkdir()
    (tmp_path / "model.gguf.tmp-999").write_bytes(b"x")
    (tmp_path / "merged").mkdir()
    removed = remove_stale_temporaries(tmp_path)
    assert len(removed) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]


def test_manifest_records_stage_and_outputs(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "report.json").write_text("{}")
    outputs = describe_outputs([tmp_path / "data"], tmp_path)
    record_stage(tmp_path, "prepare", {"status": "done", "outputs": outputs})
    manifest = read_manifest(tmp_path)
    assert manifest["stages"]["prepare"]["outputs"][0]["path"] == "data/report.json"
    assert len(manifest["stages"]["prepare"]["outputs"][0]["sha256"]) == 64
    atomic_write_json(tmp_path / "x.json", {"a": 1})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}
