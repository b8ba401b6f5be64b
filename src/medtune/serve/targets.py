"""What `medtune serve TARGET` serves: TARGET resolved into named models, stop strings and page text.

What TARGET is comes from `medtune.rundir.open_artifact` (a run directory, a gguf/ folder, a .gguf
file, a merged or an adapter folder). Each GGUF file of a run is served under its quant name
(`demo-Q4_K_M.gguf` -> `Q4_K_M`), so a client picks a quant with the request's `model` field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from medtune.errors import ArtifactError
from medtune.rundir import MODELFILE, Artifact, is_gguf_file, open_artifact


@dataclass(frozen=True)
class ServedModel:
    name: str  # the id clients send as `model`
    path: Path
    size_bytes: int


@dataclass(frozen=True)
class ServePlan:
    """Everything the server needs to know about TARGET, before loading anything."""

    kind: str  # "gguf", "merged" or "adapter"
    models: tuple[ServedModel, ...]  # the first one is the default
    stop: tuple[str, ...]  # the run's stop strings (its Modelfile), added to every GGUF request
    system_prompt: str | None  # the run's data.system_prompt: what the model was trained with
    title: str  # the run name, or the file/folder name
    skipped: tuple[tuple[str, str], ...] = ()  # (file, why) for GGUF files of a folder that cannot be served

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]


def resolve_serve_target(target: str | Path) -> ServePlan:
    """Resolve TARGET. Raises ArtifactError for a missing path, a file that is not a GGUF, or a run
    directory without GGUF exports (naming what to run or serve instead)."""
    artifact = open_artifact(target)
    system_prompt = artifact.run.system_prompt() if artifact.run else None
    if artifact.kind in ("merged", "adapter"):
        model = ServedModel(artifact.title, artifact.path, 0)
        return ServePlan(artifact.kind, (model,), (), system_prompt, artifact.title)
    if artifact.kind == "run":
        artifact = _run_gguf_folder(artifact)
    return _gguf_plan(artifact, system_prompt)


def _run_gguf_folder(artifact: Artifact) -> Artifact:
    """A run directory as the folder of its GGUF exports; ArtifactError naming what to do when it has none."""
    run = artifact.run
    files = tuple(run.gguf_files())
    if not files:
        serve_instead = next((f for f in (run.merged, run.adapter) if f.is_dir()), None)
        hint = f", or serve {serve_instead} (transformers)" if serve_instead else ""
        state = "is empty" if run.gguf.is_dir() else "does not exist"
        raise ArtifactError(f"run {run.root} has no GGUF exports ({run.gguf} {state}); run `medtune export {run.config_file}` first{hint}")
    return Artifact("gguf", run.gguf, run, files)


def _gguf_plan(artifact: Artifact, system_prompt: str | None) -> ServePlan:
    """One served model per GGUF file. In a folder, a file that is not GGUF at all is set aside (named
    in `skipped`) instead of stopping the others; a lone file that is not GGUF was refused by open_artifact."""
    good = [f for f in artifact.gguf_files if is_gguf_file(f)]
    skipped = tuple((f.name, "not a GGUF file (wrong magic bytes): re-export or copy it again") for f in artifact.gguf_files if f not in good)
    if not good:
        raise ArtifactError(f"{artifact.path}: none of its .gguf files is a GGUF file ({', '.join(n for n, _ in skipped)}); re-export them")
    models = [ServedModel(artifact.label(f), f, f.stat().st_size) for f in good]
    if len({m.name for m in models}) != len(models):
        models = [ServedModel(f.stem, f, f.stat().st_size) for f in good]
    folder = good[0].parent
    # The file the run's Modelfile points at (its recommended quant) is the default.
    preferred = _modelfile_source(folder)
    models.sort(key=lambda m: (m.path.name != preferred, m.name))
    return ServePlan("gguf", tuple(models), _modelfile_stops(folder), system_prompt, artifact.title, skipped)


def _modelfile_lines(folder: Path) -> list[str]:
    try:
        return (folder / MODELFILE).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []


def _modelfile_stops(folder: Path) -> tuple[str, ...]:
    """The `PARAMETER stop "..."` strings export wrote into the folder's Modelfile (Go string syntax,
    which for these escapes is JSON's)."""
    stops = []
    for line in _modelfile_lines(folder):
        found = re.fullmatch(r'PARAMETER stop (".*")', line.strip())
        if found:
            try:
                stops.append(json.loads(found.group(1)))
            except ValueError:
                continue
    return tuple(s for s in stops if s)


def _modelfile_source(folder: Path) -> str | None:
    for line in _modelfile_lines(folder):
        if line.startswith("FROM "):
            return Path(line[5:].strip()).name
    return None
