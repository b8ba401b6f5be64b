"""The run folder: its layout, and what any path a user hands medtune is.

`RunDir` is the only place a sub-path of `runs/<name>/` is spelled. Stages write into the folders
it names (through artifacts.atomic_*), readers of a finished run (chat, serve, report, the model
card, push) find files through it, and `open_artifact` answers "what is this path?" once for
every command that takes a model: a run directory, a merged model folder, an adapter folder, or
a GGUF file (or a folder of them).

    runs/<name>/
      config.yaml  manifest.json  MODEL_CARD.md  report.html
      data/        train/ val/ report.json                         (prepare)
      checkpoints/                                                 (train: resumable progress)
      adapter/     adapter + tokenizer, train_log.jsonl, loss_curve.png, test_answer.json (train)
      rl-checkpoints/  rl-adapter/                                  (rl, when configured: same shape as train's)
      merged/      safetensors + tokenizer + generation_config     (merge)
      gguf/        <name>-<TYPE>.gguf, Modelfile, <name>.imatrix, adapter/<name>-lora-<TYPE>.gguf (export)
      eval/        results.json report.md accuracy.png predictions/  (eval)
      eval-partial/  one file per finished artifact                  (eval: resumable progress)
      publish/     <repo>/ per Hub repo: the files and README.md card `medtune push` uploads
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medtune.errors import ArtifactError

GGUF_MAGIC = b"GGUF"  # the first four bytes of every GGUF file

# Stage -> the folder it writes (and, for resumable stages, the folder its unfinished progress lives in).
STAGE_FOLDERS = {
    "prepare": "data", "train": "adapter", "rl": "rl-adapter", "merge": "merged", "export": "gguf", "eval": "eval",
}
SCRATCH_FOLDERS = {"train": "checkpoints", "rl": "rl-checkpoints", "eval": "eval-partial"}
MODELFILE = "Modelfile"


def _layout(*parts: str, doc: str | None = None) -> property:
    """A fixed path of a folder's layout: `parts` below its base folder (the run, or an eval folder)."""
    return property(lambda self: self._base().joinpath(*parts), doc=doc)


@dataclass(frozen=True)
class RunDir:
    """The layout of one run folder. Paths only: nothing here creates, reads or checks files,
    except the small readers at the end (manifest, saved config) that several commands share."""

    root: Path

    @classmethod
    def of(cls, config: Any) -> RunDir:
        """The run folder of a RunConfig (`<output_dir>/<name>`)."""
        return cls(Path(config.output_dir) / config.name)

    def _base(self) -> Path:
        return self.root

    # ---- the fixed layout ------------------------------------------------------------------------
    config_file = _layout("config.yaml")
    manifest_file = _layout("manifest.json")
    model_card = _layout("MODEL_CARD.md")
    report_html = _layout("report.html")
    data = _layout(STAGE_FOLDERS["prepare"])
    data_report = _layout(STAGE_FOLDERS["prepare"], "report.json")
    checkpoints = _layout(SCRATCH_FOLDERS["train"])
    adapter = _layout(STAGE_FOLDERS["train"])
    train_log = _layout(STAGE_FOLDERS["train"], "train_log.jsonl")
    loss_curve = _layout(STAGE_FOLDERS["train"], "loss_curve.png")
    test_answer = _layout(STAGE_FOLDERS["train"], "test_answer.json")
    rl_adapter = _layout(STAGE_FOLDERS["rl"], doc="The adapter after the RL stage (SFT adapter + RL), when the config has an `rl` section.")
    rl_checkpoints = _layout(SCRATCH_FOLDERS["rl"])
    rl_log = _layout(STAGE_FOLDERS["rl"], "rl_log.jsonl", doc="The RL stage's log: one JSON record per GRPO log event.")
    rl_scratch_log = _layout(SCRATCH_FOLDERS["rl"], "rl_log.jsonl", doc="The log an unfinished RL attempt keeps beside its checkpoints.")
    reward_curve = _layout(STAGE_FOLDERS["rl"], "reward_curve.png")
    rl_summary = _layout(STAGE_FOLDERS["rl"], "rl_summary.json")
    merged = _layout(STAGE_FOLDERS["merge"])
    gguf = _layout(STAGE_FOLDERS["export"])
    modelfile = _layout(STAGE_FOLDERS["export"], MODELFILE)
    adapter_gguf_folder = _layout(STAGE_FOLDERS["export"], "adapter")
    adapter_modelfile = _layout(STAGE_FOLDERS["export"], "adapter", MODELFILE,
                                doc="The Ollama Modelfile that builds base + adapter (FROM the base, ADAPTER the LoRA GGUF).")
    eval = _layout(STAGE_FOLDERS["eval"])
    eval_partial = _layout(SCRATCH_FOLDERS["eval"])
    publish = _layout("publish", doc="Where `medtune push` stages each Hub repo's folder (hard links of verified files + its card).")

    # ---- paths that depend on a name -------------------------------------------------------------
    def stage_folder(self, stage: str) -> Path:
        """The folder stage `stage` writes. Raises KeyError for an unknown stage."""
        return self.root / STAGE_FOLDERS[stage]

    def scratch_folder(self, stage: str) -> Path | None:
        """Where an interrupted attempt of `stage` keeps progress that a rerun may resume (or None)."""
        name = SCRATCH_FOLDERS.get(stage)
        return self.root / name if name else None

    def split(self, name: str) -> Path:
        """A tokenized split written by prepare: 'train' or 'val'."""
        return self.data / name

    def gguf_file(self, type_name: str) -> Path:
        """The model file of one GGUF type: gguf/<name>-<TYPE>.gguf."""
        return self.gguf / f"{self.name}-{type_name.upper()}.gguf"

    def gguf_files(self) -> list[Path]:
        """The model files in gguf/ (not the LoRA adapter GGUF, which lives in gguf/adapter/)."""
        return sorted(self.gguf.glob("*.gguf")) if self.gguf.is_dir() else []

    @property
    def imatrix(self) -> Path:
        # Not *.gguf (although it is GGUF inside): gguf/*.gguf are the model files.
        return self.gguf / f"{self.name}.imatrix"

    def adapter_gguf_file(self, type_name: str) -> Path:
        return self.adapter_gguf_folder / f"{self.name}-lora-{type_name.upper()}.gguf"

    def adapter_base_gguf_file(self, type_name: str) -> Path:
        """The base model the adapter GGUF is applied to, converted beside it."""
        return self.adapter_gguf_folder / f"{self.name}-base-{type_name.upper()}.gguf"

    def eval_partial_file(self, artifact: str) -> Path:
        """One finished artifact's rows and predictions, kept while an eval attempt is unfinished."""
        return self.eval_partial / f"{artifact.replace(':', '-')}.json"

    def eval_files(self, folder: Path | None = None) -> EvalFiles:
        """The layout of eval/ (or of `folder`: the temporary copy being written, or `medtune eval
        --model`'s output folder, which has the same files)."""
        return EvalFiles(Path(folder) if folder is not None else self.eval)

    # The eval folder's own files, named once in EvalFiles.
    eval_results = property(lambda self: self.eval_files().results)
    eval_report = property(lambda self: self.eval_files().report)
    accuracy_plot = property(lambda self: self.eval_files().accuracy_plot)
    predictions = property(lambda self: self.eval_files().predictions)

    def predictions_file(self, artifact: str, benchmark: str, mode: str, folder: Path | None = None) -> Path:
        """One artifact x benchmark x mode's per-item answers (under eval/predictions/, or `folder`)."""
        return (folder or self.predictions) / predictions_name(artifact, benchmark, mode)

    def relative(self, path: Path) -> str:
        """`path` relative to the run folder, as the manifest and the card write it (posix)."""
        return Path(path).relative_to(self.root).as_posix()

    # ---- small shared readers ------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The run's name: config.yaml's `name`, else the folder's name."""
        name = self.saved_config().get("name")
        return str(name) if name else self.root.name

    def exists(self) -> bool:
        return is_run_dir(self.root)

    def saved_config(self) -> dict[str, Any]:
        """The resolved config the run saved (a plain dict; {} when missing or unreadable)."""
        try:
            raw = yaml.safe_load(self.config_file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            return {}
        return raw if isinstance(raw, dict) else {}

    def manifest(self) -> dict[str, Any]:
        if not self.manifest_file.is_file():
            return {"stages": {}}
        return json.loads(self.manifest_file.read_text(encoding="utf-8"))

    def stage_entry(self, stage: str) -> dict[str, Any]:
        return self.manifest().get("stages", {}).get(stage, {})

    def system_prompt(self) -> str | None:
        data = self.saved_config().get("data")
        prompt = data.get("system_prompt") if isinstance(data, dict) else None
        return str(prompt) if prompt else None

    def quant_name(self, gguf_file: Path) -> str:
        """The label of a GGUF file of this run: `demo-Q4_K_M.gguf` -> `Q4_K_M`."""
        return quant_name(gguf_file, self.name)



@dataclass(frozen=True)
class EvalFiles:
    """What the eval stage writes in its folder (a run's eval/, or any `medtune eval --model` folder)."""

    folder: Path

    def _base(self) -> Path:
        return self.folder

    results = _layout("results.json")
    report = _layout("report.md")
    accuracy_plot = _layout("accuracy.png")
    guard = _layout("guard.json", doc="The forgetting guard's figures (eval.guard): base vs the final artifact outside the training domain.")
    predictions = _layout("predictions")

    def predictions_file(self, artifact: str, benchmark: str, mode: str) -> Path:
        return self.predictions / predictions_name(artifact, benchmark, mode)


def predictions_name(artifact: str, benchmark: str, mode: str) -> str:
    """`gguf:Q8_0` x pubmedqa x loglik -> `gguf-Q8_0__pubmedqa__loglik.jsonl` (one JSON record per item)."""
    return f"{artifact.replace(':', '-')}__{benchmark}__{mode}.jsonl"


def quant_name(gguf_file: Path, run_name: str | None) -> str:
    """A GGUF file's label: its stem without the run-name prefix (`demo-Q4_K_M.gguf` -> `Q4_K_M`)."""
    stem = Path(gguf_file).stem
    if run_name and stem.startswith(f"{run_name}-"):
        return stem[len(run_name) + 1 :]
    return stem


def stem_has_type(stem: str, wanted: str) -> bool:
    """Whether a GGUF file name (without .gguf) is of quant type `wanted`, e.g. demo-Q8_0 and 'q8_0'."""
    stem, wanted = stem.lower(), wanted.lower()
    return stem.endswith(wanted) or f"-{wanted}" in stem


def is_run_dir(path: Path) -> bool:
    """A folder medtune wrote as a run: it has a manifest, or a saved config beside a gguf/ folder."""
    path = Path(path)
    layout = RunDir(path)
    return layout.manifest_file.is_file() or (layout.config_file.is_file() and layout.gguf.exists())


def is_gguf_file(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(GGUF_MAGIC)) == GGUF_MAGIC
    except OSError:
        return False


def require_gguf(path: Path) -> None:
    """Raise ArtifactError unless `path` starts with the GGUF magic (a truncated download, an HTML
    error page or a renamed file does not)."""
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(len(GGUF_MAGIC))
    if head != GGUF_MAGIC:
        size = path.stat().st_size
        raise ArtifactError(
            f"{path} is not a GGUF file: it starts with {head!r}, not the GGUF magic bytes {GGUF_MAGIC!r} "
            f"({size:,} bytes; an unfinished download or a renamed file?); re-download or re-export it "
            "(`medtune export CONFIG`)"
        )


@dataclass(frozen=True)
class Artifact:
    """What a path handed to medtune is.

    kind: 'run' (a run folder), 'merged' (a Hugging Face model folder: config.json), 'adapter' (a
    PEFT adapter folder: adapter_config.json) or 'gguf' (a GGUF file, or a folder of them: then
    `gguf_files` lists them). `run` is the run the artifact belongs to, when it sits in one.
    """

    kind: str
    path: Path
    run: RunDir | None = None
    gguf_files: tuple[Path, ...] = field(default_factory=tuple)

    @property
    def title(self) -> str:
        return self.run.name if self.run else self.path.name

    def label(self, gguf_file: Path | None = None) -> str:
        """A short name for the artifact (or one of its GGUF files): the quant name inside a run."""
        if gguf_file is not None:
            return quant_name(gguf_file, self.run.name if self.run else None)
        return self.title


def open_artifact(path: str | Path) -> Artifact:
    """Tell what `path` is. Raises ArtifactError for a path that does not exist, a `.gguf` file that
    is not GGUF, or a folder that holds no model, each naming what medtune accepts."""
    path = Path(path).expanduser()
    if not path.exists():
        hint = "; a run's GGUF files are in runs/<name>/gguf/" if path.suffix == ".gguf" else ""
        raise ArtifactError(
            f"{path} does not exist{hint}; give a run directory (runs/<name>), a .gguf file, "
            "a merged model folder or an adapter folder"
        )
    if path.is_file():
        if path.suffix != ".gguf":
            raise ArtifactError(f"{path} is not a .gguf file; give a GGUF file, a run directory, a merged or an adapter folder")
        require_gguf(path)
        return Artifact("gguf", path, _run_above(path, levels=2, folder_role="gguf"), (path,))
    if is_run_dir(path):
        return Artifact("run", path, RunDir(path))
    if (path / "adapter_config.json").is_file():
        return Artifact("adapter", path, _run_above(path, levels=1, folder_role="adapter"))
    if (path / "config.json").is_file():
        return Artifact("merged", path, _run_above(path, levels=1, folder_role="merged"))
    files = tuple(sorted(path.glob("*.gguf")))
    if files:
        return Artifact("gguf", path, _run_above(path, levels=1, folder_role="gguf"), files)
    raise ArtifactError(f"{path}: not a .gguf file, a run directory, a merged model folder (config.json) or an adapter folder (adapter_config.json)")


def _run_above(path: Path, *, levels: int, folder_role: str) -> RunDir | None:
    """The run that holds `path` as its `folder_role` folder (or a file in it), if any."""
    candidate = path.resolve().parents[levels - 1] if levels else path.resolve()
    run = RunDir(candidate)
    expected = {"gguf": run.gguf, "adapter": run.adapter, "merged": run.merged}[folder_role]
    holder = path.resolve().parent if path.is_file() else path.resolve()
    if holder == expected.resolve() and is_run_dir(candidate):
        return run
    return None
