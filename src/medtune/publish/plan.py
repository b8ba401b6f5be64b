"""What `medtune push` would upload: one Hub repo per artifact kind, each with the files the run's
manifest recorded (and which still verify) and its card.

Nothing here touches the network. `plan_push` reads the run folder through `RunDir`; `stage_plan`
writes each repo's folder under `RUN/publish/<repo>/` (hard links of the verified files, plus the
README.md card), which is what `--dry-run` shows and what the upload sends.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard

from medtune.artifacts import atomic_dir, sha256_file
from medtune.config import EMBEDDED_MODEL
from medtune.embedded import HUB_ID as EMBEDDED_HUB_ID
from medtune.errors import ArtifactError, ConfigError
from medtune.rundir import RunDir

# Pushed in this order: the GGUF card's base_model is the merged repo, which must exist by then
# (the Hub checks a card's base_model when it validates README.md).
KINDS = ("merged", "adapter", "gguf")
REPO_SUFFIX = {"merged": "", "adapter": "-LoRA", "gguf": "-GGUF"}
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
CARD_FILE = "README.md"  # the Hub shows a repo's README.md as its model card


@dataclass(frozen=True)
class PlannedFile:
    """One verified file of the run and where it goes in the repo."""

    source: Path
    path_in_repo: str
    size: int
    sha256: str


@dataclass
class RepoPlan:
    kind: str  # merged | adapter | gguf
    repo_id: str
    stage: str  # the stage whose manifest entry lists the files
    files: list[PlannedFile]
    card: ModelCard | None = None  # set by cards.attach_cards

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass
class PushPlan:
    run: RunDir
    repo: str  # OWNER/NAME as the user gave it
    base_model: str  # hub id of the base the run fine-tuned
    license: str
    language: list[str]
    repos: list[RepoPlan]
    eval_rows: list[dict[str, Any]] = field(default_factory=list)  # eval/results.json rows, when current
    notes: list[str] = field(default_factory=list)

    def repo_id(self, kind: str) -> str:
        return self.repo + REPO_SUFFIX[kind]

    def kinds(self) -> list[str]:
        return [r.kind for r in self.repos]


def parse_kinds(what: str | None) -> list[str] | None:
    """`--what merged,gguf` -> ['merged', 'gguf'] (None: every kind the run finished)."""
    if what is None:
        return None
    kinds = [part.strip().lower() for part in what.split(",") if part.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ConfigError(f"--what {what!r}: use a comma-separated list of {', '.join(KINDS)}")
    return [k for k in KINDS if k in kinds]


def plan_push(
    run: RunDir,
    repo: str,
    *,
    kinds: list[str] | None = None,
    base_model: str | None = None,
    license: str | None = None,
    language: list[str] | None = None,
) -> PushPlan:
    """The repos, files and card facts of a push, from the run's manifest and saved config.

    Raises ConfigError for a malformed --repo, a base model or licence that cannot be named, and
    ArtifactError when a requested kind's stage has not finished, is older than the stage it was
    made from, or a recorded file is missing or changed.
    """
    if not HUB_ID.fullmatch(repo):
        raise ConfigError(f"--repo {repo!r}: give OWNER/NAME (your user or organization, then the model name)")
    if not run.exists():
        raise ArtifactError(f"{run.root} is not a run folder (no manifest.json); give runs/<name>")
    saved = run.saved_config()
    manifest = run.manifest().get("stages", {})
    wanted, notes = _kinds_to_push(manifest, kinds)
    repos = [_repo_plan(run, manifest, kind, repo + REPO_SUFFIX[kind]) for kind in wanted]
    if "gguf" in wanted and "merged" not in wanted:
        notes.append(f"the GGUF card names {repo} as its base_model: a push checks that it exists on the Hub")
    rows = _current_eval(run, manifest, wanted)
    if rows is None:
        rows = []
        notes.append("the eval results are older than the artifacts pushed: the cards carry no scores; "
                     "rerun `medtune eval CONFIG` first to include them")
    return PushPlan(
        run=run,
        repo=repo,
        base_model=base_model or _base_hub_id(saved),
        license=license or _license(saved),
        language=language or ["en"],
        repos=repos,
        eval_rows=rows,
        notes=notes,
    )


def _kinds_to_push(manifest: dict[str, Any], kinds: list[str] | None) -> tuple[list[str], list[str]]:
    """Requested kinds must be finished; without --what, every finished kind is pushed."""
    notes: list[str] = []
    if kinds is not None:
        for kind in kinds:
            _require_done(manifest, _source_stage(manifest, kind), kind)
        return kinds, notes
    chosen = []
    for kind in KINDS:
        stage = _source_stage(manifest, kind)
        if manifest.get(stage, {}).get("status") == "done":
            chosen.append(kind)
        else:
            notes.append(f"{kind}: not pushed, stage '{stage}' has not finished ({_status(manifest, stage)})")
    if not chosen:
        raise ArtifactError("nothing to push: no train, merge or export stage has finished in this run; "
                            "run `medtune run CONFIG` first")
    return chosen, notes


def _source_stage(manifest: dict[str, Any], kind: str) -> str:
    if kind == "adapter":
        # With an RL stage, the adapter the merged model holds is the RL one.
        return "rl" if manifest.get("rl", {}).get("status") == "done" else "train"
    return {"merged": "merge", "gguf": "export"}[kind]


def _status(manifest: dict[str, Any], stage: str) -> str:
    entry = manifest.get(stage)
    return f"last attempt: {entry.get('status')}" if entry else "not run"


def _require_done(manifest: dict[str, Any], stage: str, kind: str) -> None:
    if manifest.get(stage, {}).get("status") != "done":
        raise ArtifactError(
            f"cannot push the {kind}: stage '{stage}' has not finished in this run ({_status(manifest, stage)}); "
            f"run `medtune {stage} CONFIG` (or `medtune run CONFIG`) first, or leave {kind} out of --what"
        )


# Each kind's stage must be at least as recent as the stages it was built from: a merged model made
# before the adapter was retrained is not the model the adapter repo would describe.
UPSTREAM = {"merge": ("train", "rl"), "export": ("merge",), "rl": ("train",), "train": ()}


def _recorded_at(entry: dict[str, Any]) -> datetime | None:
    try:
        return datetime.strptime(entry.get("recorded_at", ""), "%Y-%m-%dT%H:%M:%S%z")
    except ValueError:
        return None


def _newer_upstream(manifest: dict[str, Any], stage: str) -> str | None:
    made = _recorded_at(manifest.get(stage, {}))
    for upstream in UPSTREAM.get(stage, ()):
        entry = manifest.get(upstream, {})
        then = _recorded_at(entry)
        if entry.get("status") == "done" and made and then and then > made:
            return upstream
    return None


def _repo_plan(run: RunDir, manifest: dict[str, Any], kind: str, repo_id: str) -> RepoPlan:
    stage = _source_stage(manifest, kind)
    newer = _newer_upstream(manifest, stage)
    if newer:
        raise ArtifactError(
            f"cannot push the {kind}: stage '{newer}' finished after '{stage}', so {run.relative(run.stage_folder(stage))}/ "
            f"was made from older inputs; run `medtune run CONFIG` to bring '{stage}' up to date"
        )
    folder = run.stage_folder(stage)
    files = [_verified(run, record, folder) for record in manifest[stage].get("outputs") or []]
    if not files:
        raise ArtifactError(f"cannot push the {kind}: the manifest records no outputs for stage '{stage}'; rerun it")
    return RepoPlan(kind, repo_id, stage, files)


def _verified(run: RunDir, record: dict[str, Any], folder: Path) -> PlannedFile:
    """A manifest output record, checked against the file on disk now (size, then sha256)."""
    path = run.root / record["path"]
    fix = "rerun the stage that wrote it (`medtune run CONFIG` redoes what changed)"
    if not path.is_file():
        raise ArtifactError(f"{path} is recorded in the manifest but missing; {fix}")
    if path.stat().st_size != record["size"] or sha256_file(path) != record["sha256"]:
        raise ArtifactError(f"{path} changed since medtune recorded and verified it (size or sha256 differs); {fix}")
    return PlannedFile(path, path.relative_to(folder).as_posix(), record["size"], record["sha256"])


def _current_eval(run: RunDir, manifest: dict[str, Any], kinds: list[str]) -> list[dict[str, Any]] | None:
    """eval/results.json's rows ([] when eval has not finished; None when it finished before one of
    the pushed artifacts was made, so its scores are of another model). The file must still match
    its manifest record."""
    entry = manifest.get("eval", {})
    if entry.get("status") != "done":
        return []
    evaluated = _recorded_at(entry)
    for kind in kinds:
        made = _recorded_at(manifest.get(_source_stage(manifest, kind), {}))
        if evaluated and made and made > evaluated:
            return None
    wanted = run.relative(run.eval_results)
    record = next((r for r in entry.get("outputs") or [] if r["path"] == wanted), None)
    if record is None:
        return []
    results = _verified(run, record, run.eval)
    data = json.loads(results.source.read_text(encoding="utf-8"))
    return [r for r in data.get("results") or [] if isinstance(r, dict)]


def _base_hub_id(saved: dict[str, Any]) -> str:
    base = str((saved.get("model") or {}).get("base") or EMBEDDED_MODEL)
    if base == EMBEDDED_MODEL:
        return EMBEDDED_HUB_ID  # the embedded GGUF is a copy of this hub model
    if HUB_ID.fullmatch(base) and not base.endswith(".gguf") and not Path(base).expanduser().exists():
        return base
    raise ConfigError(
        f"model.base is a local path ({base}), which the Hub card's base_model cannot name: pass --base-model "
        "with the Hub id it came from (e.g. --base-model meta-llama/Llama-3.2-1B-Instruct)"
    )


def _license(saved: dict[str, Any]) -> str:
    licence = (saved.get("model") or {}).get("license")
    if not licence:
        raise ConfigError(
            "model.license is not set in the run's config.yaml, and the Hub card needs the base model's licence: "
            "pass --license with its Hub licence id (e.g. llama3.2, apache-2.0)"
        )
    return str(licence)


def stage_plan(plan: PushPlan) -> dict[str, Path]:
    """Write RUN/publish/<repo name>/ for every repo of the plan: the verified files (hard links, or
    copies across file systems) at their paths in the repo, and README.md. Returns repo id -> folder."""
    folders: dict[str, Path] = {}
    if plan.run.publish.exists():
        shutil.rmtree(plan.run.publish)  # only this push's repos: the folder shows exactly what goes up
    for repo in plan.repos:
        target = plan.run.publish / repo.repo_id.split("/", 1)[1]
        with atomic_dir(target) as tmp:
            for planned in repo.files:
                _link_or_copy(planned.source, tmp / planned.path_in_repo)
            if repo.card is not None:
                (tmp / CARD_FILE).write_text(str(repo.card), encoding="utf-8")
        folders[repo.repo_id] = target
    return folders


def _link_or_copy(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, destination)  # no second copy of multi-GB weights
    except OSError:
        shutil.copy2(source, destination)


def staged_files(repo: RepoPlan) -> list[str]:
    """Paths in the repo: the verified files, then the card."""
    return [f.path_in_repo for f in repo.files] + ([CARD_FILE] if repo.card is not None else [])
