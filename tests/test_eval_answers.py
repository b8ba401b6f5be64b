"""Final-answer extraction on realistic chain-of-thought replies."""

from __future__ import annotations

import pytest

from medtune.eval.answers import extract_answer

MC = {"A": "Migraine", "B": "Meningitis", "C": "Subarachnoid hemorrhage", "D": "Tension headache"}
YNM = {"yes": "yes", "no": "no", "maybe": "maybe"}

CASES = [
    # (reply, options, expected label or None)
    ("Neck stiffness and fever point to meningeal irritation.\n\nThe answer is B.", MC, "B"),
    ("Let's think. Option A is unlikely... Option C is possible but... The answer is (B)", MC, "B"),
    ("Answer: (C)", MC, "C"),
    ("**Answer:** D", MC, "D"),
    ("The correct answer is C. Subarachnoid hemorrhage", MC, "C"),
    ("Reasoning about A and C first.\nFinal answer: B", MC, "B"),
    ("\\boxed{A}", MC, "A"),
    ("Thunderclap onset suggests bleeding.\n\nC. Subarachnoid hemorrhage", MC, "C"),
    ("(D)", MC, "D"),
    ("B", MC, "B"),
    ("The answer is Meningitis.", MC, "B"),
    ("Answer: subarachnoid hemorrhage", MC, "C"),
    ("Considering everything, the answer is a tough one, but the answer is D.", MC, "D"),
    ("The answer is a bacterial infection of the meninges.", MC, None),  # "a" is not option A
    ("I am not sure which option is right.", MC, None),
    ("", MC, None),
    ("Option A (migraine) and option B both fit partially; I cannot decide.", MC, None),
    ("The study found a significant reduction in mortality.\nThe answer is yes.", YNM, "yes"),
    ("Answer: No", YNM, "no"),
    ("The evidence is mixed, so the answer is maybe.", YNM, "maybe"),
    ("Final answer: **yes**", YNM, "yes"),
    ("Yes.", YNM, "yes"),
    ("The results were not conclusive and further study is needed.", YNM, None),
    ("Some say yes, some say no. The answer is no.", YNM, "no"),
    ("The answer is not clear.", YNM, None),  # "not" is not "no"
]


@pytest.mark.parametrize(("reply", "options", "expected"), CASES)
def test_extract_answer(reply, options, expected):
    assert extract_answer(reply, options) == expected
