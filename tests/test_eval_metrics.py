"""Per-class recall, macro-F1, answer spread and the degenerate-answer flag, on hand-checked cases."""

from __future__ import annotations

import pytest

from medtune.eval.compare import comparison_note
from medtune.eval.metrics import class_report, degenerate_note
from medtune.eval.report import markdown_table
from medtune.eval.rows import EvalRow

YNM = ("yes", "no", "maybe")


def test_constant_answer_is_flagged_and_scores_the_majority_share():
    golds = ["yes"] * 6 + ["no"] * 3 + ["maybe"]
    report = class_report(golds, ["yes"] * 10, YNM)
    assert report["recall"] == {"yes": 1.0, "no": 0.0, "maybe": 0.0}
    assert report["predicted"] == {"yes": 10, "no": 0, "maybe": 0}
    assert report["majority_label"] == "yes" and report["majority_baseline"] == 0.6
    # F1(yes) = 2 * 0.6 * 1 / 1.6 = 0.75; the other two are 0 -> macro 0.25, the constant baseline's own.
    assert report["macro_f1"] == pytest.approx(0.25) == report["majority_macro_f1"]
    assert report["degenerate"] == {"label": "yes", "count": 10, "n": 10, "share": 1.0}
    assert degenerate_note(report["degenerate"]) == 'answers "yes" on 10/10 items: no signal'


def test_mixed_answers_with_unparsed_replies():
    golds = ["A", "B", "C", "D", "A", "B", "C", "D"]
    preds = ["A", "B", "C", "A", "A", None, "D", "D"]
    report = class_report(golds, preds, "ABCD")
    assert report["recall"] == {"A": 1.0, "B": 0.5, "C": 0.5, "D": 0.5}
    assert report["precision"]["A"] == pytest.approx(0.6667, abs=1e-4)
    assert report["predicted"] == {"A": 3, "B": 1, "C": 1, "D": 2, "unparsed": 1}
    assert report["degenerate"] is None
    # F1: A 0.8, B 0.6667, C 0.6667, D 0.5 -> macro 0.6583
    assert report["macro_f1"] == pytest.approx(0.6583, abs=1e-4)


def test_label_without_gold_items_is_left_out_of_macro_f1():
    report = class_report(["yes", "no"], ["yes", "no"], YNM)
    assert report["recall"]["maybe"] is None and report["macro_f1"] == 1.0


def test_ninety_percent_threshold():
    assert class_report(["A"] * 10, ["A"] * 9 + ["B"], "ABCD")["degenerate"]["share"] == 0.9
    assert class_report(["A"] * 10, ["A"] * 8 + ["B", "C"], "ABCD")["degenerate"] is None
    flag = class_report(["A"] * 4, [None] * 4, "ABCD")["degenerate"]
    assert degenerate_note(flag) == "gives no parseable answer on 4/4 items: no signal"


def test_report_and_comparison_name_the_constant_answer():
    fields = {"artifact": "base", "backend": "transformers", "benchmark": "medtune_sample", "mode": "loglik", "n": 16,
              "accuracy": 0.25, "ci95": [0.06, 0.44], "parse_failure_rate": 0.0, "seconds": 1.0,
              **class_report(list("ABCD" * 4), ["D"] * 16, "ABCD")}
    row = EvalRow.from_json(fields)
    table = markdown_table([row])
    assert 'answers "D" on 16/16 items: no signal' in table and "A 0 / B 0 / C 0 / D 16" in table
    merged = EvalRow.from_json({**fields, "artifact": "merged"})
    assert "no signal" in comparison_note(merged, row) and "both" in comparison_note(merged, row)
    mixed = EvalRow.from_json({**fields, "artifact": "merged", "degenerate": None})
    assert comparison_note(mixed, row) == 'base answers "D" on 16/16 items: no signal'
