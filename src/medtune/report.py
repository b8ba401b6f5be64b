"""runs/<name>/report.html: one self-contained page about a run, from what the run wrote.

Read, never recomputed: manifest.json (stages, training figures, the GGUF verification table),
adapter/train_log.jsonl (loss curves), eval/results.json (one row per artifact x benchmark x mode,
and the paired comparisons) and eval/predictions/*.jsonl (example answers). Tables render the
fields they find, so new eval modes, result fields or GGUF check columns appear without a change
here. Figures are matplotlib PNGs embedded as base64; the page loads nothing from elsewhere.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medtune.artifacts import atomic_write_text, read_manifest
from medtune.errors import ArtifactError

REPORT_HTML = "report.html"
DISCLAIMER = ("Models produced by medtune are research artifacts, not medical devices: they can be wrong with confidence "
              "and must not replace professional medical judgement.")

# Result-row fields shown by the eval table's fixed columns (any other scalar field gets its own column).
_ROW_SHOWN = {"artifact", "backend", "benchmark", "mode", "n", "correct", "accuracy", "ci95", "macro_f1", "recall",
              "predicted", "degenerate", "parse_failure_rate", "seconds"}
_ROW_HIDDEN = {"model", "gold", "majority_label", "majority_baseline", "majority_macro_f1", "parse_failures",
               "items_per_second", "limit"}
# GGUF check fields that are not table cells (the test answer is shown below the table).
_GGUF_LONG = {"answer"}


def write_html_report(run_dir: str | Path, *, output: str | Path | None = None, examples: int = 3) -> Path:
    """Write the run's report page (default RUN/report.html) and return its path.

    Raises ArtifactError when `run_dir` is not a run directory (no manifest.json).
    """
    run_dir = Path(run_dir)
    if not (run_dir / "manifest.json").is_file():
        raise ArtifactError(f"{run_dir} is not a run directory (no manifest.json); give runs/<name> of a `medtune run`")
    stages = read_manifest(run_dir).get("stages", {})
    config = _read_yaml(run_dir / "config.yaml")
    results = _read_json(run_dir / "eval" / "results.json") or {}
    rows = [r for r in results.get("results", []) if isinstance(r, dict)]
    name = str(config.get("name") or run_dir.name)
    body = [
        f"<h1>{_e(name)}</h1>",
        f'<p class="disclaimer">{_e(DISCLAIMER)}</p>',
        _overview(config, stages),
        _training(run_dir, stages),
        _evaluation(rows, results),
        _comparisons(results.get("comparisons") or []),
        _gguf(stages.get("export") or {}),
        _examples(run_dir, rows, config, examples),
    ]
    page = _PAGE.format(title=_e(f"medtune report: {name}"), css=_CSS, body="\n".join(b for b in body if b))
    path = Path(output) if output else run_dir / REPORT_HTML
    atomic_write_text(path, page)
    return path


# ---- sections -----------------------------------------------------------------------------------


def _overview(config: dict[str, Any], stages: dict[str, Any]) -> str:
    model = (config.get("model") or {}).get("base", "?")
    data = config.get("data") or {}
    source = data.get("dataset") or ", ".join(map(str, data.get("files") or [])) or "?"
    rows = [[stage, entry.get("status", "?"), _num(entry.get("seconds")), entry.get("recorded_at", "")]
            for stage, entry in stages.items()]
    return (
        "<section><h2>Run</h2>"
        f"<p>Base model <code>{_e(model)}</code>, data <code>{_e(source)}</code>.</p>"
        + _table(["stage", "status", "seconds", "recorded"], rows)
        + "</section>"
    )


def _training(run_dir: Path, stages: dict[str, Any]) -> str:
    log = _read_jsonl(run_dir / "adapter" / "train_log.jsonl")
    entry = stages.get("train") or {}
    if not log and not entry:
        return "<section><h2>Training</h2><p>Not trained yet.</p></section>"
    figures = {k: v for k, v in entry.items() if isinstance(v, (int, float, str))
               and k not in {"status", "fingerprint", "outputs_digest", "recorded_at", "test_answer"}}
    facts = _table(["figure", "value"], [[k.replace("_", " "), _num(v)] for k, v in figures.items()]) if figures else ""
    train = [(r["step"], r["loss"]) for r in log if "loss" in r and "step" in r]
    val = [(r["step"], r["eval_loss"]) for r in log if "eval_loss" in r and "step" in r]
    plot = _loss_plot(train, val) if train or val else "<p>No training log (adapter/train_log.jsonl).</p>"
    answer = entry.get("test_answer")
    probe = (f"<p>Seed test question, greedy answer of the adapter:</p><blockquote>{_e(str(answer)[:800])}</blockquote>"
             if answer else "")
    return f"<section><h2>Training</h2><div class=\"side\"><div>{plot}</div><div>{facts}</div></div>{probe}</section>"


def _evaluation(rows: list[dict[str, Any]], results: dict[str, Any]) -> str:
    if not rows:
        return "<section><h2>Evaluation</h2><p>No evaluation results (eval/results.json).</p></section>"
    extra = [k for k in dict.fromkeys(k for r in rows for k in r)
             if k not in _ROW_SHOWN | _ROW_HIDDEN and all(_is_scalar(r.get(k)) for r in rows)]
    head = ["artifact", "backend", "benchmark", "mode", "accuracy %", "95% CI", "macro-F1", "recall per class",
            "answers given", "n", "unparsed %", "seconds", *(k.replace("_", " ") for k in extra)]
    table_rows = []
    for r in rows:
        low, high = (r.get("ci95") or [None, None])[:2]
        flag = _degenerate(r.get("degenerate"))
        spread = _spread(r.get("predicted"))
        table_rows.append([
            r.get("artifact"), r.get("backend"), r.get("benchmark"), r.get("mode"), _pct(r.get("accuracy")),
            f"{_pct(low)}–{_pct(high)}" if low is not None else "—", _num(r.get("macro_f1"), 3),
            _recall(r.get("recall")), _Html(_e(spread) + (f' <strong class="flag">{_e(flag)}</strong>' if flag else "")),
            r.get("n"), _pct(r.get("parse_failure_rate")), _num(r.get("seconds")), *(_figure(r.get(k)) for k in extra),
        ])
    baselines, seen = [], set()
    for r in rows:
        if r.get("benchmark") in seen or not r.get("gold"):
            continue
        seen.add(r.get("benchmark"))
        baselines.append([r["benchmark"], r.get("n"), _spread(r["gold"]), r.get("majority_label"),
                          _pct(r.get("majority_baseline")), _num(r.get("majority_macro_f1"), 3)])
    flags = [f"<li><strong>No signal:</strong> {_e(r.get('artifact'))} ({_e(r.get('benchmark'))}, {_e(r.get('mode'))}) "
             f"{_e(_degenerate(r['degenerate']))}; its accuracy is the share of that label among the gold answers.</li>"
             for r in rows if r.get("degenerate")]
    samples = results.get("bootstrap_samples")
    return (
        "<section><h2>Evaluation</h2>"
        + _plot_html(_accuracy_plot(rows), "accuracy per benchmark")
        + _table(head, table_rows)
        + (f"<ul>{''.join(flags)}</ul>" if flags else "")
        + "<h3>Majority-label baseline</h3><p>What always answering the most frequent gold label scores: the bar every artifact must clear.</p>"
        + _table(["benchmark", "n", "gold labels", "majority label", "majority accuracy %", "majority macro-F1"], baselines)
        + "<p class=\"note\">loglik: the answer label with the highest log-probability after the chat-templated prompt; "
        "cot: a greedy step-by-step reply with the final answer extracted (unparsed counts as wrong). "
        f"95% CI: percentile bootstrap over items{f' ({samples} resamples)' if samples else ''}.</p>"
        "</section>"
    )


def _comparisons(comparisons: Sequence[dict[str, Any]]) -> str:
    if not comparisons:
        return ""
    rows = []
    for c in comparisons:
        low, high = (c.get("ci95") or [0.0, 0.0])[:2]
        diff = c.get("difference", 0.0)
        verdict = "better" if low > 0 else "worse" if high < 0 else "within noise"
        rows.append([c.get("artifact"), c.get("versus"), c.get("benchmark"), c.get("mode"), f"{100 * diff:+.1f}",
                     f"{100 * low:+.1f} to {100 * high:+.1f}", verdict, c.get("only_artifact_right"),
                     c.get("only_versus_right"), c.get("note") or ""])
    return (
        "<section><h2>Paired comparisons</h2><p>Each artifact against the one it was made from, on the same items "
        "(fine-tune: merged vs base; conversion: 16-bit GGUF vs merged; quantization: each quant vs the 16-bit GGUF).</p>"
        + _table(["artifact", "versus", "benchmark", "mode", "difference (points)", "paired 95% CI", "verdict",
                  "only artifact right", "only versus right", "note"], rows)
        + "</section>"
    )


def _gguf(export: dict[str, Any]) -> str:
    files = [f for f in export.get("files") or [] if isinstance(f, dict)]
    if not files:
        return "<section><h2>GGUF files</h2><p>Not exported yet.</p></section>"
    columns = [k for k in dict.fromkeys(k for f in files for k in f) if k not in _GGUF_LONG]
    rows = [[_size(f[k]) if k == "size_bytes" and isinstance(f.get(k), int) else _figure(f.get(k)) for k in columns]
            for f in files]
    head = ["size MiB" if k == "size_bytes" else k.replace("_", " ") for k in columns]
    answers = "".join(
        f"<details><summary>{_e(f.get('type', f.get('file', '?')))}: test answer</summary><blockquote>{_e(f['answer'])}</blockquote></details>"
        for f in files if f.get("answer")
    )
    notes = "".join(f"<li>{_e(n)}</li>" for n in export.get("notes") or [])
    return (
        "<section><h2>GGUF files</h2>"
        f"<p>Next-token agreement (top-1) and mean KL against the file each was made from, over "
        f"{_e(export.get('positions', '?'))} positions of {_e(export.get('prompts', '?'))} prompts ({_e(export.get('prompt_source', ''))}).</p>"
        + _table(head, rows) + answers + (f"<ul>{notes}</ul>" if notes else "") + "</section>"
    )


def _examples(run_dir: Path, rows: list[dict[str, Any]], config: dict[str, Any], count: int) -> str:
    folder = run_dir / "eval" / "predictions"
    if count <= 0 or not folder.is_dir():
        return ""
    questions = _questions(config)
    parts = []
    for benchmark, mode in dict.fromkeys((r.get("benchmark"), r.get("mode")) for r in rows):
        artifacts = [r["artifact"] for r in rows if r.get("benchmark") == benchmark and r.get("mode") == mode]
        answers = {a: _read_jsonl(folder / f"{str(a).replace(':', '-')}__{benchmark}__{mode}.jsonl") for a in artifacts}
        answers = {a: records for a, records in answers.items() if records}
        if not answers:
            continue
        ids = [str(p["id"]) for p in next(iter(answers.values()))[:count]]  # the same items for every artifact
        table_rows = []
        for item_id in ids:
            question = questions.get((benchmark, item_id))
            first = next(p for p in next(iter(answers.values())) if str(p["id"]) == item_id)
            cells: list[Any] = [_Html(f"<code>{_e(item_id)}</code>" + (f"<div class=\"q\">{_e(question[:400])}</div>" if question else "")),
                                first.get("answer")]
            for artifact in answers:
                record = next((p for p in answers[artifact] if str(p["id"]) == item_id), None)
                cells.append(_Html(_prediction(record)))
            table_rows.append(cells)
        parts.append(f"<h3>{_e(benchmark)}, {_e(mode)}</h3>" + _table(["item", "gold", *answers], table_rows))
    if not parts:
        return ""
    return ("<section><h2>Example answers</h2><p>The first items of each benchmark, as every artifact answered them "
            "(from eval/predictions/).</p>" + "".join(parts) + "</section>")


def _prediction(record: dict[str, Any] | None) -> str:
    if record is None:
        return "—"
    predicted = record.get("predicted")
    mark = '<span class="ok">✓</span>' if record.get("correct") else '<span class="bad">✗</span>'
    text = f"{mark} {_e(predicted if predicted is not None else 'unparsed')}"
    if record.get("output"):
        text += f"<details><summary>reply</summary><div class=\"reply\">{_e(record['output'])}</div></details>"
    elif isinstance(record.get("scores"), dict):
        scores = ", ".join(f"{_e(k)} {v:.2f}" for k, v in sorted(record["scores"].items(), key=lambda kv: -kv[1]))
        text += f"<div class=\"scores\">log-prob: {scores}</div>"
    return text


def _questions(config: dict[str, Any]) -> dict[tuple[str, str], str]:
    """Question texts of the configured benchmarks, from local files only (never the hub); {} when unreadable."""
    from medtune.tasks.registry import REGISTRY, expand, load_items

    found: dict[tuple[str, str], str] = {}
    for spec in (config.get("eval") or {}).get("benchmarks") or []:
        if not isinstance(spec, dict) or not spec.get("name"):
            continue
        try:
            members = expand(spec["name"])
            if spec.get("path") is None and any(REGISTRY[m].default_path is None for m in members):
                continue  # would download
            for item in load_items(spec["name"], spec.get("path"), spec.get("limit"), int(config.get("seed", 0) or 0)):
                found[(item.benchmark or spec["name"], str(item.id))] = item.question
                found.setdefault((spec["name"], str(item.id)), item.question)
        except Exception:  # noqa: BLE001 - question texts are a nicety; ids are shown without them
            continue
    return found


# ---- figures ------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    _pyplot().close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _plot_html(data: str | None, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">' if data else ""


def _loss_plot(train: list[tuple[float, float]], val: list[tuple[float, float]]) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1.2)
    if val:
        ax.plot(*zip(*val), marker="o", label="validation loss", linewidth=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _plot_html(_png(fig), "training and validation loss")


def _accuracy_plot(rows: list[dict[str, Any]]) -> str | None:
    """One panel per benchmark: accuracy with its CI per artifact (one colour per mode), majority line."""
    benchmarks = list(dict.fromkeys(r.get("benchmark") for r in rows))
    modes = list(dict.fromkeys(r.get("mode") for r in rows))
    if not benchmarks:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(benchmarks), figsize=(max(5.0, 4.2 * len(benchmarks)), 3.4), squeeze=False)
    width = 0.8 / max(len(modes), 1)
    for ax, benchmark in zip(axes[0], benchmarks):
        mine = [r for r in rows if r.get("benchmark") == benchmark]
        artifacts = list(dict.fromkeys(r.get("artifact") for r in mine))
        for k, mode in enumerate(modes):
            xs, ys, errs = [], [], [[], []]
            for a, artifact in enumerate(artifacts):
                row = next((r for r in mine if r.get("artifact") == artifact and r.get("mode") == mode), None)
                if row is None or row.get("accuracy") is None:
                    continue
                low, high = (row.get("ci95") or [row["accuracy"], row["accuracy"]])[:2]
                xs.append(a + (k - (len(modes) - 1) / 2) * width)
                ys.append(100 * row["accuracy"])
                errs[0].append(100 * (row["accuracy"] - low))
                errs[1].append(100 * (high - row["accuracy"]))
            if xs:
                ax.bar(xs, ys, width, yerr=errs, capsize=3, label=str(mode))
        baseline = next((r.get("majority_baseline") for r in mine if r.get("majority_baseline")), None)
        if baseline:
            ax.axhline(100 * baseline, color="grey", linestyle="--", linewidth=1, label="majority label")
        ax.set_title(str(benchmark), fontsize=10)
        ax.set_xticks(range(len(artifacts)), [str(a) for a in artifacts], rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_ylabel("accuracy % (95% CI)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


# ---- formatting ---------------------------------------------------------------------------------


class _Html(str):
    """A cell already escaped."""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = lambda row, tag: "".join(f"<{tag}>{c if isinstance(c, _Html) else _e(c)}</{tag}>" for c in row)  # noqa: E731
    body = "".join(f"<tr>{cells(row, 'td')}</tr>" for row in rows)
    return f"<table><thead><tr>{cells(head, 'th')}</tr></thead><tbody>{body}</tbody></table>"


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (int, float, str, bool))


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 10 ** -digits or value == 0 else f"{value:.2g}"
    return str(value)


def _figure(value: Any) -> str:
    """A measured figure with its significant digits (0.9954, 0.0751, 16.004, 20.2)."""
    if isinstance(value, float):
        return f"{value:.5g}"
    return _num(value)


def _pct(value: Any) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _size(size: int) -> str:
    return f"{size / 2**20:,.1f}"


def _spread(counts: dict[str, int] | None) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) if counts else "—"


def _recall(recall: dict[str, float | None] | None) -> str:
    if not recall:
        return "—"
    return ", ".join(f"{k} {'—' if v is None else f'{100 * v:.0f}%'}" for k, v in recall.items())


def _degenerate(flag: dict[str, Any] | None) -> str:
    from medtune.eval.metrics import degenerate_note

    return degenerate_note(flag) if flag else ""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill: the rest is still worth showing
        if isinstance(record, dict):
            records.append(record)
    return records


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2327; max-width: 72rem; margin: 1.5rem auto; padding: 0 1rem; }
h1 { margin-bottom: .3rem; } h2 { border-bottom: 1px solid #dcdfe1; padding-bottom: .2rem; margin-top: 2rem; }
.disclaimer { background: #fff4e0; border: 1px solid #e0a030; padding: .4rem .7rem; border-radius: .3rem; font-size: .9rem; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .85rem; }
th, td { border: 1px solid #dcdfe1; padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: #f1f3f4; } tbody tr:nth-child(even) { background: #fafbfb; }
img { max-width: 100%; display: block; margin: .5rem 0; }
blockquote { margin: .4rem 0; padding: .3rem .7rem; border-left: 3px solid #dcdfe1; white-space: pre-wrap; }
.flag { color: #b3261e; } .ok { color: #1e7b34; font-weight: bold; } .bad { color: #b3261e; font-weight: bold; }
.note, .scores, .q { color: #6b7378; font-size: .8rem; } .q { max-width: 28rem; margin-top: .2rem; }
.reply { white-space: pre-wrap; max-width: 28rem; font-size: .8rem; }
code { font-size: .85em; }
.side { display: flex; gap: 1.5rem; align-items: flex-start; flex-wrap: wrap; }
.side table { margin-top: .5rem; }
"""

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{css}</style></head>
<body>
{body}
<p class="note">Written by <code>medtune report</code> from the run's manifest, training log and evaluation results.</p>
</body></html>
"""
