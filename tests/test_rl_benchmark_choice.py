"""benchmarks/pubmedqa_rl.py's cross-validation choice: it reads the pool's held-out reward only, and a
setting that gives up the rare label (PubMedQA's maybe) ranks below one that keeps it."""

from __future__ import annotations

from bench_scripts import load_benchmark


def _entry(setting: str, before: float, after: float, ci: list[float], maybe_right: tuple[int, int],
           maybe_said: tuple[int, int]) -> dict:
    side = lambda right, said: {"right": {"yes": 30, "no": 25, "maybe": right}, "predicted": {"yes": 50, "no": 45, "maybe": said}}  # noqa: E731
    return {"setting": setting, "overrides": [f"rl.x={setting}"],
            "rl": {"rl_val_reward_before": before, "rl_val_reward_after": after,
                   "rl_val_reward_difference": {"difference": round(after - before, 4), "ci95": ci},
                   "rl_val_classes": {"gold": {"yes": 50, "no": 39, "maybe": 11},
                                      "before": side(maybe_right[0], maybe_said[0]),
                                      "after": side(maybe_right[1], maybe_said[1])},
                   "rl_steps": 13, "rl_seconds": 300.0, "rl_peak_memory_gib": 14.0, "rl_last_kl": 0.01}}


def test_cv_row_reads_the_rare_label_and_the_paired_difference():
    bench = load_benchmark("pubmedqa_rl")
    row = bench.cv_row(_entry("a", 0.63, 0.70, [0.01, 0.13], (2, 3), (4, 5)))
    assert row["rare_label"] == "maybe" and row["rare_gold"] == 11
    assert row["rare_right"] == [2, 3] and row["rare_predicted"] == [4, 5]
    assert row["difference"] == 0.07 and row["ci95"] == [0.01, 0.13]


def test_choose_prefers_keeping_maybe_over_a_larger_gain():
    bench = load_benchmark("pubmedqa_rl")
    loses = bench.cv_row(_entry("loses-maybe", 0.63, 0.72, [0.02, 0.16], (2, 0), (4, 0)))
    keeps = bench.cv_row(_entry("keeps-maybe", 0.63, 0.66, [-0.03, 0.09], (2, 2), (4, 3)))
    worse = bench.cv_row(_entry("worse", 0.63, 0.60, [-0.09, 0.03], (2, 2), (4, 4)))
    best, why = bench.choose([loses, worse, keeps])
    assert best["setting"] == "keeps-maybe"
    assert "CI includes 0" in why and "keeps the rare label 'maybe'" in why


def test_choose_says_when_no_setting_raised_the_reward():
    bench = load_benchmark("pubmedqa_rl")
    rows = [bench.cv_row(_entry(name, 0.63, after, [-0.1, 0.0], (1, 1), (2, 2))) for name, after in (("a", 0.60), ("b", 0.62))]
    best, why = bench.choose(rows)
    assert best["setting"] == "b" and "no setting raised the held-out reward" in why


def test_cv_row_carries_the_sampled_held_out_reward_when_measured():
    bench = load_benchmark("pubmedqa_rl")
    entry = _entry("a", 0.63, 0.70, [0.01, 0.13], (2, 3), (4, 5))
    assert "sampled_difference" not in bench.cv_row(entry)  # runs before rl.val_samples existed
    entry["rl"]["rl_val_sampled"] = {"samples_per_prompt": 8, "before": 0.55, "after": 0.62,
                                     "difference": {"difference": 0.07, "ci95": [0.03, 0.11], "n": 100}}
    row = bench.cv_row(entry)
    assert (row["sampled_before"], row["sampled_after"], row["sampled_ci95"]) == (0.55, 0.62, [0.03, 0.11])
    assert row["difference"] == 0.07 and bench.choose([row])[0]["setting"] == "a"  # the choice stays greedy
