"""runs/<name>/report.html: one self-contained page about a run, from what the run wrote.

Read through RunDir, never recomputed: the manifest (stages, training figures, the GGUF checks and
quality table), the training log and loss curve, eval/results.json (typed `EvalRow`s, the same rows
report.md, the model card and the CLI render) and eval/predictions/ (example answers, with the
question and options each item was asked with; benchmarks are never loaded again here). Figures
are drawn by medtune.plots and embedded as base64 PNGs; the page loads nothing from elsewhere.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medtune.artifacts import atomic_write_text
from medtune.errors import ArtifactError
from medtune.eval.examples import (
    NOT_RECORDED,
    SEED_TITLE,
    heldout_example,
    option_text,
    read_jsonl,
    seed_answer,
)
from medtune.eval.report import BAR_TITLE, benchmark_rows
from medtune.eval.rows import EvalResults, EvalRow, options_text, read_results
from medtune.model_card import QUALITY_HEAD, quality_table
from medtune.plots import accuracy_png, plot_loss_curve
from medtune.rundir import EvalFiles, RunDir

DISCLAIMER = ("Models produced by medtune are research artifacts, not medical devices: they can be wrong with confidence "
              "and must not replace professional medical judgement.")

# GGUF check fields that are not table cells (the test answer is shown below the table).
_GGUF_LONG = {"answer"}


def write_html_report(run: RunDir | str | Path, *, output: str | Path | None = None, examples: int = 3) -> Path:
    """Write the run's report page (default: the run's report.html) and return its path.

    Raises ArtifactError when `run` is not a run directory (no manifest.json) or its results.json is unreadable.
    """
    run = run if isinstance(run, RunDir) else RunDir(Path(run))
    if not run.manifest_file.is_file():
        raise ArtifactError(f"{run.root} is not a run directory (no manifest.json); give runs/<name> of a `medtune run`")
    stages = run.manifest().get("stages", {})
    config = run.saved_config()
    results = read_results(run.eval_results) or EvalResults({}, [], [])
    body = [
        f"<h1>{_e(run.name)}</h1>",
        f'<p class="disclaimer">{_e(DISCLAIMER)}</p>',
        _overview(config, stages),
        _training(run, stages),
        _rl(run, stages),
        _evaluation(results),
        _comparisons(results.comparisons),
        _guard(run),
        _heldout(run, results.rows),
        _gguf(stages.get("export") or {}),
        _examples(run, results.rows, examples),
    ]
    page = _PAGE.format(title=_e(f"medtune report: {run.name}"), css=_CSS, body="\n".join(b for b in body if b))
    path = Path(output) if output else run.report_html
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


def _training(run: RunDir, stages: dict[str, Any]) -> str:
    log = read_jsonl(run.train_log)
    entry = stages.get("train") or {}
    if not log and not entry:
        return "<section><h2>Training</h2><p>Not trained yet.</p></section>"
    hidden = {"status", "fingerprint", "outputs_digest", "recorded_at", "test_answer", "test_answer_choice"}
    figures = {k: v for k, v in entry.items() if isinstance(v, (int, float, str)) and k not in hidden}
    facts = _table(["figure", "value"], [[k.replace("_", " "), _num(v)] for k, v in figures.items()]) if figures else ""
    plot = _img(_loss_png(run, log), "training and validation loss") or "<p>No training log (train_log.jsonl).</p>"
    seed = seed_answer(run)
    probe = (f"<p>{_e(SEED_TITLE)}: <strong>{_e(seed.verdict())}</strong>.</p><blockquote>{_e(seed.question)}\n\n"
             f"Answer: {_e(seed.answer[:800])}</blockquote>" if seed else "")
    return f"<section><h2>Training</h2><div class=\"side\"><div>{plot}</div><div>{facts}</div></div>{probe}</section>"


def _rl(run: RunDir, stages: dict[str, Any]) -> str:
    """The RL stage (when the run has one): its reward curves and its figures (held-out reward before/after)."""
    entry = stages.get("rl") or {}
    if not entry:
        return ""
    shown = {k: v for k, v in entry.items() if k.startswith("rl_") and isinstance(v, (int, float, str))}
    for label, difference in (("held-out reward change, greedy (95% CI)", entry.get("rl_val_reward_difference")),
                              ("held-out reward change, sampled (95% CI)", (entry.get("rl_val_sampled") or {}).get("difference"))):
        if difference:
            shown[label] = (f"{difference.get('difference', 0):+.3f} "
                            f"({difference['ci95'][0]:+.3f}..{difference['ci95'][1]:+.3f})")
    facts = _table(["figure", "value"], [[k.replace("_", " "), _num(v)] for k, v in shown.items()])
    plot = _img(run.reward_curve.read_bytes() if run.reward_curve.is_file() else None, "GRPO reward, correctness and KL")
    return f"<section><h2>Reinforcement learning (GRPO)</h2><div class=\"side\"><div>{plot}</div><div>{facts}</div></div></section>"


def _loss_png(run: RunDir, log: list[dict[str, Any]]) -> bytes | None:
    """The loss curve the train stage drew, or the same figure drawn from the log (older runs)."""
    if run.loss_curve.is_file():
        return run.loss_curve.read_bytes()
    if not any("loss" in r or "eval_loss" in r for r in log):
        return None
    with tempfile.TemporaryDirectory() as folder:
        drawn = Path(folder) / "loss.png"
        plot_loss_curve(log, drawn, title=f"{run.name}: LoRA fine-tuning")
        return drawn.read_bytes()


def _evaluation(results: EvalResults) -> str:
    rows = results.rows
    if not rows:
        return "<section><h2>Evaluation</h2><p>No evaluation results (eval/results.json).</p></section>"
    extra = [k for k in dict.fromkeys(k for r in rows for k in r.extra) if all(_is_scalar(r.extra.get(k)) for r in rows)]
    head = ["artifact", "backend", "benchmark", "mode", "accuracy %", "95% CI", "macro-F1", "recall per class",
            "answers given", "n", "unparsed %", "seconds", *(k.replace("_", " ") for k in extra)]
    table_rows = []
    for r in rows:
        flag = r.note()
        table_rows.append([
            r.artifact, r.backend, r.benchmark, r.mode, _pct(r.accuracy), f"{_pct(r.ci95[0])}–{_pct(r.ci95[1])}",
            _num(r.macro_f1, 3), _recall(r.recall),
            _Html(_e(_spread(r.predicted)) + (f' <strong class="flag">{_e(flag)}</strong>' if flag else "")),
            r.n, _pct(r.parse_failure_rate), _num(r.seconds), *(_figure(r.extra.get(k)) for k in extra),
        ])
    baselines = [[r.benchmark, r.n, options_text(r.option_counts) if r.option_counts else "—", _spread(r.gold),
                  r.majority_text, _pct(r.majority_baseline), _num(r.majority_macro_f1, 3), _pct(r.chance)]
                 for r in benchmark_rows(rows)]
    samples = results.meta.get("bootstrap_samples")
    return (
        "<section><h2>Evaluation</h2>"
        + _img(accuracy_png(rows), "accuracy per benchmark")
        + _table(head, table_rows)
        + _warnings(rows)
        + f"<h3>Majority-label and chance baseline</h3><p>{_e(BAR_TITLE)}.</p>"
        + _table(["benchmark", "n", "options", "gold labels", "majority label", "majority accuracy %",
                  "majority macro-F1", "chance %"], baselines)
        + "<p class=\"note\">loglik: the answer label with the highest log-probability after the chat-templated prompt; "
        "cot: a greedy step-by-step reply with the final answer extracted (unparsed counts as wrong). "
        f"95% CI: percentile bootstrap over items{f' ({samples} resamples)' if samples else ''}.</p>"
        "</section>"
    )


def _guard(run: RunDir) -> str:
    """The forgetting guard (eval.guard): flagged subjects first, then every subject's paired difference."""
    guard = _read_guard(EvalFiles(run.eval).guard)
    if guard is None:
        return ""
    flagged = [s for s in guard["subjects"] if s["flagged"]]
    items = "".join(f"<li><strong>Forgetting:</strong> {_e(s['subject'])} {100 * s['difference']:+.1f} points "
                    f"(CI {100 * s['ci95'][0]:+.1f}..{100 * s['ci95'][1]:+.1f}), answers {_e(_spread(s['final_spread']))} "
                    f"(base {_e(_spread(s['base_spread']))}){'; ' + _e(s['letter_shift']) if s['letter_shift'] else ''}</li>"
                    for s in flagged)
    rows = [[s["subject"], s["group"], s["n"], _pct(s["base_accuracy"]), _pct(s["final_accuracy"]),
             f"{100 * s['difference']:+.1f} ({100 * s['ci95'][0]:+.1f}..{100 * s['ci95'][1]:+.1f})",
             "drop" if s["flagged"] else ""] for s in guard["subjects"]]
    table = _table(["subject", "group", "n", "base", guard["artifact"], "difference (95% CI)", "flag"], rows)
    return (f"<h2>Forgetting guard ({_e(guard['artifact'])} vs base, loglik)</h2>"
            f"{f'<ul>{items}</ul>' if items else '<p>No subject dropped beyond the guard.</p>'}{table}")


def _read_guard(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _warnings(rows: Sequence[EvalRow]) -> str:
    items = []
    for r in rows:
        where = f"{_e(r.artifact)} ({_e(r.benchmark)}, {_e(r.mode)})"
        if r.degenerate:
            items.append(f"<li><strong>No signal:</strong> {where} {_e(r.warnings()[0])}; its accuracy is the share of "
                         "that label among the gold answers.</li>")
        if r.below_bar:
            items.append(f"<li><strong>Below the bar:</strong> {where} {_e(r.below_bar_note())}.</li>")
    return f"<ul>{''.join(items)}</ul>" if items else ""


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
    quality = quality_table(export)
    if not files and not quality:
        return "<section><h2>GGUF files</h2><p>Not exported yet.</p></section>"
    columns = [k for k in dict.fromkeys(k for f in files for k in f) if k not in _GGUF_LONG]
    rows = [[_size(f[k]) if k == "size_bytes" and isinstance(f.get(k), int) else _figure(f.get(k)) for k in columns]
            for f in files]
    head = ["size MiB" if k == "size_bytes" else k.replace("_", " ") for k in columns]
    answers = "".join(
        f"<details><summary>{_e(f.get('type', f.get('file', '?')))}: answer to the seed question (outside the training "
        f"data; its right answer is under Training)</summary><blockquote>{_e(f['answer'])}</blockquote></details>"
        for f in files if f.get("answer")
    )
    notes = "".join(f"<li>{_e(n)}</li>" for n in export.get("notes") or [])
    quality_html = (f"<h3>Quality on held-out text</h3><p>{_e(quality[0])}</p>" + _table(QUALITY_HEAD, quality[1])
                    if quality else "")
    return (
        "<section><h2>GGUF files</h2>"
        f"<p>Next-token agreement (top-1) and mean KL against the file each was made from, over "
        f"{_e(export.get('positions', '?'))} positions of {_e(export.get('prompts', '?'))} prompts ({_e(export.get('prompt_source', ''))}).</p>"
        + (_table(head, rows) if files else "") + answers + quality_html + (f"<ul>{notes}</ul>" if notes else "") + "</section>"
    )


def _heldout(run: RunDir, rows: list[EvalRow]) -> str:
    """The model card's example (a held-out item, base beside the fine-tuned artifact), as HTML."""
    example = heldout_example(run, rows)
    if example is None:
        return ""
    asked = ("<br>".join(_e(line) for line in [example.question, *example.options()]) if example.question
             else f"item <code>{_e(example.record.get('id'))}</code>: {_e(NOT_RECORDED)}")
    return (f"<section><h2>Example</h2><p>{_e(example.intro())}:</p><blockquote>{asked}</blockquote>"
            + _table(["", "answer", "right?"], example.answers()) + "</section>")


def _examples(run: RunDir, rows: list[EvalRow], count: int) -> str:
    if count <= 0 or not rows:
        return ""
    parts = []
    for benchmark, mode in dict.fromkeys((r.benchmark, r.mode) for r in rows):
        artifacts = [r.artifact for r in rows if r.benchmark == benchmark and r.mode == mode]
        answers = {a: read_jsonl(run.predictions_file(a, benchmark, mode)) for a in artifacts}
        answers = {a: records for a, records in answers.items() if records}
        if not answers:
            continue
        first_records = next(iter(answers.values()))[:count]  # the same items for every artifact
        table_rows = []
        for first in first_records:
            item_id = str(first.get("id"))
            cells: list[Any] = [_Html(f"<code>{_e(item_id)}</code>" + _question_html(first)),
                                option_text(first, first.get("answer"))]
            for artifact in answers:
                record = next((p for p in answers[artifact] if str(p.get("id")) == item_id), None)
                cells.append(_Html(_prediction(record)))
            table_rows.append(cells)
        parts.append(f"<h3>{_e(benchmark)}, {_e(mode)}</h3>" + _table(["item", "gold", *answers], table_rows))
    if not parts:
        return ""
    return ("<section><h2>Example answers</h2><p>The first items of each benchmark as eval asked them, and as every "
            "artifact answered them (from eval/predictions/).</p>" + "".join(parts) + "</section>")


def _question_html(record: dict[str, Any]) -> str:
    """The question and its options as eval recorded them; older predictions say the text is not recorded."""
    question = record.get("question")
    if not question:
        return f'<div class="q">{_e(NOT_RECORDED)}</div>'
    options = [f"{_e(label)}. {_e(text)}" for label, text in (record.get("options") or {}).items() if text != label]
    listed = f"<div class=\"q\">{'<br>'.join(options)}</div>" if options else ""
    return f'<div class="q">{_e(question[:400])}</div>{listed}'


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


def _img(png: bytes | None, alt: str) -> str:
    if not png:
        return ""
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


# ---- formatting ---------------------------------------------------------------------------------


class _Html(str):
    """A cell already escaped."""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = lambda row, tag: "".join(f"<{tag}>{c if isinstance(c, _Html) else _e(c)}</{tag}>" for c in row)
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
