"""What `medtune serve TARGET` serves: TARGET resolved into named models, stop strings and page text.

TARGET follows `medtune chat`'s rules (a .gguf file, a merged model folder, an adapter folder) plus
two folders of GGUF files: a run directory (every file in its gguf/) and a gguf/ folder itself.
Each GGUF file of a run is served under its quant name (`demo-Q4_K_M.gguf` -> `Q4_K_M`), so a
client picks a quant with the request's `model` field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from medtune.errors import ArtifactError

GGUF_MAGIC = b"GGUF"


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

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]


def resolve_serve_target(target: str | Path) -> ServePlan:
    """Resolve TARGET. Raises ArtifactError for a missing path, a file that is not a GGUF, or a run
    directory without GGUF exports (naming what to run or serve instead)."""
    from medtune.chat import describe_target

    path = Path(target).expanduser()
    if not path.exists():
        raise ArtifactError(f"{path} does not exist; serve a run directory (runs/<name>), a .gguf file, a merged or an adapter folder")
    if path.is_dir() and _is_run_dir(path):
        return _run_plan(path)
    if path.is_dir() and list(path.glob("*.gguf")) and not (path / "config.json").is_file():
        run_dir = path.parent if _is_run_dir(path.parent) else None
        return _gguf_folder_plan(path, run_dir)
    if path.is_file() and path.suffix != ".gguf":
        raise ArtifactError(f"{path} is not a .gguf file; serve a GGUF file, a run directory, a merged or an adapter folder")
    kind = describe_target(path)
    if kind == "gguf":
        _require_gguf(path)
        run_dir = path.parent.parent if path.parent.name == "gguf" and _is_run_dir(path.parent.parent) else None
        return ServePlan(
            "gguf", (_served_gguf(path, _run_name(run_dir)),), _modelfile_stops(path.parent),
            _system_prompt(run_dir), _run_name(run_dir) or path.name,
        )
    run_dir = path.parent if _is_run_dir(path.parent) else None
    model = ServedModel(_run_name(run_dir) or path.name, path, 0)
    return ServePlan(kind, (model,), (), _system_prompt(run_dir), _run_name(run_dir) or path.name)


def _is_run_dir(path: Path) -> bool:
    return (path / "manifest.json").is_file() or ((path / "config.yaml").is_file() and (path / "gguf").exists())


def _run_plan(run_dir: Path) -> ServePlan:
    folder = run_dir / "gguf"
    if not folder.is_dir() or not list(folder.glob("*.gguf")):
        serve_instead = next((f for f in ("merged", "adapter") if (run_dir / f).is_dir()), None)
        hint = f", or serve {run_dir / serve_instead} (transformers)" if serve_instead else ""
        raise ArtifactError(
            f"run {run_dir} has no GGUF exports ({folder} {'is empty' if folder.is_dir() else 'does not exist'}); "
            f"run `medtune export {run_dir / 'config.yaml'}` first{hint}"
        )
    return _gguf_folder_plan(folder, run_dir)


def _gguf_folder_plan(folder: Path, run_dir: Path | None) -> ServePlan:
    run_name = _run_name(run_dir)
    files = sorted(folder.glob("*.gguf"))
    for file in files:
        _require_gguf(file)
    models = [_served_gguf(file, run_name) for file in files]
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        models = [ServedModel(f.stem, f, f.stat().st_size) for f in files]
    # The file the run's Modelfile points at (its recommended quant) is the default.
    preferred = _modelfile_source(folder)
    models.sort(key=lambda m: (m.path.name != preferred, m.name))
    title = run_name or folder.name
    return ServePlan("gguf", tuple(models), _modelfile_stops(folder), _system_prompt(run_dir), title)


def _served_gguf(path: Path, run_name: str | None) -> ServedModel:
    name = path.stem
    if run_name and name.startswith(f"{run_name}-"):
        name = name[len(run_name) + 1 :]  # demo-Q4_K_M -> Q4_K_M
    return ServedModel(name, path, path.stat().st_size)


def _require_gguf(path: Path) -> None:
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head != GGUF_MAGIC:
        raise ArtifactError(f"{path} is not a GGUF file (it starts with {head!r}, a GGUF file with {GGUF_MAGIC!r})")


def _run_config(run_dir: Path | None) -> dict:
    if run_dir is None or not (run_dir / "config.yaml").is_file():
        return {}
    try:
        raw = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return raw if isinstance(raw, dict) else {}


def _run_name(run_dir: Path | None) -> str | None:
    if run_dir is None:
        return None
    name = _run_config(run_dir).get("name")
    return str(name) if name else run_dir.name


def _system_prompt(run_dir: Path | None) -> str | None:
    data = _run_config(run_dir).get("data")
    prompt = data.get("system_prompt") if isinstance(data, dict) else None
    return str(prompt) if prompt else None


def _modelfile_lines(folder: Path) -> list[str]:
    try:
        return (folder / "Modelfile").read_text(encoding="utf-8").splitlines()
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
