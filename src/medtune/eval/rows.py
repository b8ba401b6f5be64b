"""The eval result row: one artifact x benchmark x mode, typed, and the one source of every table.

results.json stores `EvalRow.to_json()`; report.md, report.html, the model card and the CLI summary
all render `EvalRow`s, so a figure or a warning ("no signal", "below the majority/chance line") is
worded once. `EvalRow.from_json` reads rows written by earlier medtune versions too (fields they
lack stay None or empty; fields this version does not know are kept in `extra` and written back).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from medtune.errors import ArtifactError
from medtune.eval.metrics import degenerate_note
from medtune.tasks import Item
from medtune.ui import print_summary


@dataclass
class EvalRow:
    """One artifact x benchmark x mode: accuracy with its CI beside what it may hide."""

    artifact: str  # "base", "merged", "adapter", "gguf:<type>", or a model's name
    backend: str
    model: str  # the file, folder or hub id evaluated
    benchmark: str
    mode: str  # loglik, cot, loglik_calibrated
    n: int
    correct: int
    accuracy: float
    ci95: tuple[float, float]
    prompt_style: str = "chat"
    parse_failures: int = 0
    parse_failure_rate: float = 0.0
    seconds: float = 0.0
    items_per_second: float = 0.0
    macro_f1: float | None = None
    recall: dict[str, float | None] = field(default_factory=dict)
    predicted: dict[str, int] = field(default_factory=dict)  # answers given, with "unparsed"
    gold: dict[str, int] = field(default_factory=dict)
    majority_label: str = ""
    majority_baseline: float | None = None  # accuracy of always answering the most frequent gold label
    majority_macro_f1: float | None = None
    degenerate: dict[str, Any] | None = None  # one answer on >= 90% of the items (metrics.degenerate)
    limit: int | None = None
    chance: float | None = None  # mean over items of 1 / number of options (None: not recorded by older versions)
    option_counts: dict[str, int] = field(default_factory=dict)  # "4" -> items with four options, "5" -> ...
    content_free_prior: dict[str, Any] | None = None  # loglik_calibrated rows
    extra: dict[str, Any] = field(default_factory=dict)  # fields of other medtune versions, kept as read

    # ---- the lines every table draws -------------------------------------------------------------
    @property
    def bar(self) -> float | None:
        """The line an artifact must clear: the larger of the majority-label share and chance."""
        lines = [v for v in (self.majority_baseline, self.chance) if v is not None]
        return max(lines) if lines else None

    @property
    def below_bar(self) -> bool:
        return self.bar is not None and self.n > 0 and self.accuracy < self.bar

    @property
    def tied_majority(self) -> bool:
        """Every gold label equally frequent: no label is 'the' majority."""
        return len(self.gold) > 1 and len(set(self.gold.values())) == 1

    @property
    def majority_text(self) -> str:
        return "any (all tied)" if self.tied_majority else self.majority_label

    @property
    def bar_name(self) -> str:
        return "chance" if self.bar == self.chance and self.chance != self.majority_baseline else "the majority-label line"

    def below_bar_note(self, short: bool = False) -> str:
        if not self.below_bar:
            return ""
        if short:  # a table cell
            return f"below {self.bar_name.removeprefix('the ')} ({100 * self.bar:.1f}%)"
        return f"{100 * self.accuracy:.1f}% is below {self.bar_name} ({100 * self.bar:.1f}%): worse than always giving one answer"

    def warnings(self, short: bool = False) -> list[str]:
        """The flags a reader must see next to the accuracy: a constant answer, a score under the bar."""
        return [note for note in (degenerate_note(self.degenerate), self.below_bar_note(short)) if note]

    def note(self, short: bool = False) -> str:
        return "; ".join(self.warnings(short))

    @property
    def key(self) -> str:
        return f"{self.artifact}/{self.benchmark}/{self.mode}"

    # ---- results.json ----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ci95"] = list(self.ci95)
        extra = data.pop("extra")
        return {**data, **extra}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "an eval result") -> EvalRow:
        """A row from results.json, as written by this or an earlier version. Raises ArtifactError
        naming `where` when a field every version wrote is missing."""
        known = {f.name for f in fields(cls)} - {"extra"}
        required = ("artifact", "benchmark", "mode", "n", "accuracy")
        missing = [k for k in required if k not in data]
        if missing:
            raise ArtifactError(f"{where}: a result row lacks {', '.join(missing)}; rerun `medtune eval CONFIG`")
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("backend", "")
        values.setdefault("model", "")
        values.setdefault("correct", round(data["accuracy"] * data["n"]))
        ci = values.get("ci95") or (data["accuracy"], data["accuracy"])
        values["ci95"] = (float(ci[0]), float(ci[1]))
        values["option_counts"] = {str(k): v for k, v in (values.get("option_counts") or {}).items()}
        for name in ("recall", "predicted", "gold"):
            values[name] = values.get(name) or {}
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})


def as_row(row: EvalRow | dict[str, Any]) -> EvalRow:
    return row if isinstance(row, EvalRow) else EvalRow.from_json(row)


def chance_level(items: Sequence[Item]) -> float:
    """Expected accuracy of a uniform random answer: the mean over items of 1 / its number of options."""
    return round(sum(1 / len(item.options) for item in items) / len(items), 4) if items else 0.0


def option_counts(items: Iterable[Item]) -> dict[str, int]:
    """How many items have 3, 4, 5, ... options (`{"4": 30, "5": 20}`)."""
    counts: dict[str, int] = {}
    for item in items:
        counts[str(len(item.options))] = counts.get(str(len(item.options)), 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: int(kv[0])))


def options_text(counts: dict[str, int]) -> str:
    """'4 options' or '4 options (30 items), 5 options (20 items)'."""
    if len(counts) == 1:
        return f"{next(iter(counts))} options"
    return ", ".join(f"{k} options ({v} items)" for k, v in counts.items())


@dataclass
class EvalResults:
    """results.json read back: how the figures were made (`meta`), the rows, the paired comparisons."""

    meta: dict[str, Any]
    rows: list[EvalRow]
    comparisons: list[dict[str, Any]]


def read_results(path: Path) -> EvalResults | None:
    """results.json of this or an earlier version (None when the file does not exist).
    Raises ArtifactError when it is not valid JSON or a row lacks a basic field."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc}); rerun `medtune eval CONFIG`") from exc
    rows = [EvalRow.from_json(r, str(path)) for r in data.get("results", []) if isinstance(r, dict)]
    meta = {k: v for k, v in data.items() if k not in ("results", "comparisons")}
    return EvalResults(meta, rows, [c for c in data.get("comparisons") or [] if isinstance(c, dict)])


# ---- the CLI summary (medtune eval, medtune run) --------------------------------------------------

SUMMARY_COLUMNS = ("artifact", "benchmark", "mode", "accuracy %", "95% CI", "macro-F1", "majority %", "n",
                   "unparsed %", "seconds", "note")


def summary_rows(rows: Iterable[EvalRow | dict[str, Any]]) -> Iterator[tuple[Any, ...]]:
    """CLI summary-table rows (SUMMARY_COLUMNS) from EvalRows (or results.json dicts): accuracy beside
    macro-F1, the majority baseline and the warnings, so a constant answer or a score under the
    majority/chance line never passes for a result."""
    for row in map(as_row, rows):
        yield (row.artifact, row.benchmark, row.mode, f"{100 * row.accuracy:.1f}",
               f"{100 * row.ci95[0]:.1f}-{100 * row.ci95[1]:.1f}", _f1(row.macro_f1), _pct(row.majority_baseline),
               row.n, f"{100 * row.parse_failure_rate:.1f}", f"{row.seconds:.1f}", row.note(short=True))


def print_eval_summary(result: Any) -> None:
    """The eval summary table on the console, from an EvalResult (its `rows`) or a list of rows."""
    print_summary("eval", list(summary_rows(getattr(result, "rows", result))), SUMMARY_COLUMNS)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _f1(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"
