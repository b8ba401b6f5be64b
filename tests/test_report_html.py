"""medtune report: the self-contained report.html from a run directory's manifest, train log and eval results.

`make_evaluated_run` writes a run folder as an earlier medtune version did (results.json rows as plain
dicts without chance or option counts, predictions without question texts) on the held-out sample
benchmark's real items: the report must still read it, and say where a question text was not
recorded instead of loading the benchmark again. Extra fields, an extra eval mode and extra GGUF
check columns stand in for what other changes may add. `test_report_of_a_fresh_eval` runs the eval
stage itself (tiny models) and checks what the new fields give the page."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
from test_pipeline import _config, fake_stages  # noqa: F401 - a fixture
from typer.testing import CliRunner

from medtune.errors import ArtifactError
from medtune.rundir import RunDir

ARTIFACTS = ("base", "merged", "gguf:F16", "gguf:Q4_K_M")


def _answers(artifact: str, mode: str, items) -> list[str | None]:
    """Deterministic stand-in answers: the base always says "D" (a degenerate answer); the others are right
    except on every third item (offset per artifact), and in cot every fifth reply names no answer."""
    if artifact == "base":
        return ["D"] * len(items)
    offset = ARTIFACTS.index(artifact)
    answers: list[str | None] = []
    for i, item in enumerate(items):
        if mode == "cot" and i % 5 == 0:
            answers.append(None)
        elif (i + offset) % 3 == 0:
            answers.append("A")
        else:
            answers.append(item.answer)
    return answers


def make_evaluated_run(root: Path) -> Path:
    from medtune.eval.compare import paired_comparisons
    from medtune.eval.metrics import class_report
    from medtune.eval.rows import EvalRow
    from medtune.eval.stats import accuracy, bootstrap_ci
    from medtune.tasks.registry import load_items

    run = root / "demo"
    items = load_items("medtune_sample", "builtin:reasonmed-heldout")
    rows, predictions = [], {}
    for mode in ("loglik", "cot", "loglik_calibrated"):
        for artifact in ARTIFACTS:
            answers = _answers(artifact, mode, items)
            correct = [a == item.answer for a, item in zip(answers, items)]
            classes = class_report([i.answer for i in items], answers, items[0].options)
            rows.append({
                "artifact": artifact, "backend": "llama.cpp" if artifact.startswith("gguf") else "transformers",
                "benchmark": "medtune_sample", "mode": mode, "n": len(items), "correct": sum(correct),
                "accuracy": round(accuracy(correct), 4), "ci95": list(bootstrap_ci(correct, 200, seed=0)),
                "parse_failures": answers.count(None), "parse_failure_rate": answers.count(None) / len(items),
                "seconds": 1.5, **{k: classes[k] for k in ("macro_f1", "recall", "predicted", "gold", "majority_label",
                                                        "majority_baseline", "majority_macro_f1", "degenerate")},
                "calibration_error": 0.0123,  # a field another change may add
            })
            predictions[f"{artifact.replace(':', '-')}__medtune_sample__{mode}"] = [
                {"id": item.id, "answer": item.answer, "predicted": a, "correct": a == item.answer,
                 **({"output": f"Reasoning <b>about</b> {item.id}.\nThe answer is {a}."} if mode == "cot" else
                    {"scores": {label: -1.0 - k for k, label in enumerate(item.options)}})}
                for a, item in zip(answers, items)
            ]
    comparisons = paired_comparisons([EvalRow.from_json(r) for r in rows], predictions, samples=200, seed=0)
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "results.json").write_text(json.dumps(
        {"run": "demo", "bootstrap_samples": 200, "results": rows, "comparisons": comparisons}))
    (run / "eval" / "predictions").mkdir()
    for key, records in predictions.items():
        (run / "eval" / "predictions" / f"{key}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "adapter").mkdir(parents=True)
    log = [{"step": 0, "eval_loss": 2.9}, *({"step": s, "loss": 3.0 - 0.05 * s} for s in range(1, 16)), {"step": 15, "eval_loss": 2.6}]
    (run / "adapter" / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log) + '{"step": 16, "lo')
    files = [
        {"type": "F16", "file": "demo-F16.gguf", "size_bytes": 270_886_368, "bits_per_weight": 16.004, "versus": "merged HF model",
         "top1_agreement": 0.9954, "mean_kl": None, "answer": "<script>alert(1)</script> The answer is B.", "stopped_on_eos": True},
        {"type": "Q4_K_M", "file": "demo-Q4_K_M.gguf", "size_bytes": 105_454_560, "bits_per_weight": 6.165, "versus": "F16",
         "top1_agreement": 0.8553, "mean_kl": 0.0751, "answer": "The answer is B.", "stopped_on_eos": True,
         "perplexity": 7.4321, "p99_kl": 0.61},  # columns another change adds
    ]
    manifest = {"stages": {
        "prepare": {"status": "done", "seconds": 9.2},
        "train": {"status": "done", "seconds": 1348.2, "steps": 15, "train_loss": 2.7, "val_loss": 2.68, "plan_packing": False,
                  "test_answer": "Meningitis. The answer is B."},
        "export": {"status": "done", "files": files, "positions": 871, "prompts": 8, "prompt_source": "validation split",
                   "notes": ["the base model is a Q4_1 GGUF"]},
        "eval": {"status": "done", "seconds": 382.7},
    }}
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "config.yaml").write_text("name: demo\nseed: 42\nmodel:\n  base: embedded:smollm2-135m-instruct\n"
                                     "data:\n  files: [builtin:reasonmed-sample]\neval:\n  benchmarks:\n"
                                     "    - name: medtune_sample\n      path: builtin:reasonmed-heldout\n")
    return run


def _text(page: str) -> str:
    """The page's visible text, tags removed and entities decoded."""
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from medtune.report import write_html_report

    run = make_evaluated_run(tmp_path_factory.mktemp("run"))
    path = write_html_report(RunDir(run))
    return run, path, path.read_text(encoding="utf-8")


def test_report_is_one_self_contained_page(report):
    run, path, page = report
    assert path == run / "report.html"
    assert not re.search(r"""(src|href)=["'](?!data:)""", page), "the page must not load anything from elsewhere"
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [alt for alt, _ in images] == ["training and validation loss", "accuracy per benchmark"]
    import base64

    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for _, data in images)
    assert "not medical devices" in page


def test_eval_table_has_every_artifact_and_mode_with_ci_and_class_figures(report):
    run, _, page = report
    rows = json.loads((run / "eval" / "results.json").read_text())["results"]
    text = _text(page)
    for row in rows:  # one table line per result row, in the stage's order, with its CI
        low, high = row["ci95"]
        line = (f"{row['artifact']} {row['backend']} medtune_sample {row['mode']} {100 * row['accuracy']:.1f} "
                f"{100 * low:.1f}–{100 * high:.1f} {row['macro_f1']:.3f}")
        assert line in text, line
    assert "loglik_calibrated" in text and "calibration error" in text and "0.012" in text  # generic rendering
    n = rows[0]["n"]
    assert f'answers "D" on {n}/{n} items: no signal' in text  # the base's degenerate flag
    assert "A 0%, B 0%, C 0%, D 100%" in text  # its per-class recall
    gold = rows[0]["gold"]  # the held-out set's letters, as the stage counted them
    assert "majority label" in text and ", ".join(f"{label} {gold[label]}" for label in sorted(gold)) in text
    assert len(set(gold.values())) == 1 and "any (all tied)" in text  # a four-way tie names no label, as report.md


def test_comparisons_and_gguf_table_render_what_is_there(report):
    run, _, page = report
    text = _text(page)
    comparisons = json.loads((run / "eval" / "results.json").read_text())["comparisons"]
    assert comparisons and all(f"{c['artifact']} {c['versus']} medtune_sample {c['mode']}" in text for c in comparisons)
    assert any(c.get("note") for c in comparisons) and all(c["note"] in text for c in comparisons if c.get("note"))
    assert "perplexity" in text and "7.4321" in text and "p99 kl" in text and "0.61" in text
    assert "258.3" in text and "0.0751" in text and "16.004" in text  # size MiB, KL, bits per weight
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_example_answers_of_an_old_run_say_the_question_was_not_recorded(report):
    from medtune.tasks.registry import load_items

    _, _, page = report
    text = _text(page)
    first = load_items("medtune_sample", "builtin:reasonmed-heldout")[0]
    # the id is shown; the question is not loaded again from the benchmark (it may be another draw of it)
    assert first.id in text and " ".join(first.question.split()[:8]) not in text
    assert "question text not recorded" in text and "rerun `medtune eval CONFIG`" in text
    assert "✓" in page and "✗" in page
    assert "Reasoning &lt;b&gt;about&lt;/b&gt;" in page  # cot replies, escaped
    assert "log-prob: A -1.00" in text


def test_partial_and_missing_runs(tmp_path):
    from medtune.report import write_html_report

    with pytest.raises(ArtifactError, match="not a run directory"):
        write_html_report(RunDir(tmp_path))
    (tmp_path / "manifest.json").write_text('{"stages": {"prepare": {"status": "done"}}}')
    page = write_html_report(RunDir(tmp_path)).read_text()
    assert "Not trained yet" in page and "No evaluation results" in page and "Not exported yet" in page


def test_report_command_and_its_error(report, tmp_path):
    from medtune.cli import app

    run, _, _ = report
    result = CliRunner().invoke(app, ["report", str(run), "-o", str(tmp_path / "r.html"), "--examples", "1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r.html").is_file() and "report:" in result.output
    examples = _text((tmp_path / "r.html").read_text()).split("Example answers")[1]
    assert examples.count("reasonmed_heldout-2") == 0  # one example per table


def test_medtune_run_writes_the_report_beside_the_model_card(tmp_path, fake_stages, monkeypatch):  # noqa: F811
    from medtune import model_card, pipeline, report

    # fake_stages stubs the card and the page out; this test wants the real ones, with the pipeline's call
    monkeypatch.setattr(pipeline, "write_model_card", model_card.write_model_card)
    monkeypatch.setattr(pipeline, "write_html_report", report.write_html_report)
    config = _config(tmp_path)
    pipeline.run_pipeline(config)
    run = RunDir.of(config)
    assert run.report_html.is_file() and run.model_card.is_file()
