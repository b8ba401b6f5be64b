"""RL rewards on real model outputs: SmolLM2-135M-Instruct's sampled replies (temperature 1) to medtune's
cot prompts for PubMedQA train records and the shipped ReasonMed sample, plus SFT-style replies."""

from __future__ import annotations

import json

import pytest

from medtune.rl.rewards import (
    completion_text,
    correctness_reward,
    format_reward,
    length_penalty,
    reward_functions,
)

YNM = {"yes": "yes", "no": "no", "maybe": "maybe"}
MC = {"A": "Migraine", "B": "Meningitis", "C": "Tension headache", "D": "Sinusitis"}

# (reply, options, gold, correctness, format)
REAL = [
    # The base model restates the question and never answers: no reward, no format credit.
    ('The answer to the question "How does targeting a higher probability reduce treatment costs versus using a '
     'high-quality product and making it available to patients" is "Technology may be able to achieve, increase '
     'treatment costs; one may be able to optimize treatment."', YNM, "yes", 0.0, 0.0),
    # "the answer is X." quoted from the instruction, then prose: eval reads nothing.
    ('X is yes.\n\nJustifying the correct answer: "The answer is X." is an incorrect opening phrase in English, '
     'indicating that I am not able to provide a correct answer to your question.', YNM, "yes", 0.0, 0.0),
    # An answer in the middle of a rambling reply: eval finds "yes" (wrong here), and it is not the last line.
    ('Here\'s a revised version with the requested changes:\n\nAlthough observational data support an inverse '
     'relationship between high-density lipoprotein (HDL) cholesterol and coronary heart disease (CHD), genetic HDL '
     'deficiency states often do not correlate with early atherosclerosis. The answer is "yes."\n\nI added the '
     'addition of "the question X is not answering" to give the user the option to choose from different possible '
     'answers (choices: yes, no, maybe).', YNM, "no", 0.0, 0.5),
    # Multiple choice: a final line that is just the option; eval reads C (right), not stated as "The answer is".
    ("C. Left main coronary artery\n", {"A": "LAD", "B": "RCA", "C": "Left main coronary artery", "D": "LCx"}, "C", 1.0, 0.5),
    # A final line starting "C." reads as option C (eval's last-line rule): answered, wrong, not stated.
    ("C. Sinusitis is a more accurate diagnosis as the sinuses play a significant role in the pathophysiology of "
     "migraines.", MC, "B", 0.0, 0.5),
    # What the SFT model writes (the recipe's target shape): reasoning, then the sentence eval looks for.
    ("Tailored interventions increased on-schedule mammography among women who were off schedule.\n\nThe answer is yes.",
     YNM, "yes", 1.0, 1.0),
    ("Neck stiffness and fever with a sudden headache point to meningeal irritation.\n\nThe answer is B.", MC, "B", 1.0, 1.0),
    ("The data do not show a difference.\n\nThe answer is no.", YNM, "maybe", 0.0, 1.0),
]


@pytest.mark.parametrize(("reply", "options", "gold", "correct", "formatted"), REAL)
def test_rewards_on_real_replies(reply, options, gold, correct, formatted):
    assert correctness_reward(reply, gold, options) == correct
    assert format_reward(reply, options) == formatted


def test_length_penalty_is_the_share_of_the_budget():
    assert length_penalty(0, 256) == 0.0
    assert length_penalty(128, 256) == -0.5
    assert length_penalty(999, 256) == -1.0
    with pytest.raises(ValueError):
        length_penalty(1, 0)


def test_reward_functions_in_trl_signature_with_class_weights():
    functions, weights = reward_functions(format_weight=0.2, length_weight=0.1, max_completion_length=10)
    assert [f.__name__ for f in functions] == ["correct", "format", "length"] and weights == [1.0, 0.2, 0.1]
    correct, stated, length = functions
    completions = [[{"role": "assistant", "content": "Because.\n\nThe answer is maybe."}], [{"role": "assistant", "content": "no idea"}]]
    columns = {"gold": ["maybe", "yes"], "options": [json.dumps(YNM)] * 2, "weight": [3.0, 0.6]}
    assert correct(prompts=[None, None], completions=completions, **columns) == [3.0, 0.0]
    assert stated(prompts=[None, None], completions=completions, **columns) == [1.0, 0.0]
    assert length(prompts=[None, None], completions=completions, completion_ids=[[1] * 5, [1] * 20]) == [-0.5, -1.0]
    assert completion_text("plain") == "plain"


def test_zero_weights_leave_terms_out():
    functions, weights = reward_functions(format_weight=0, length_weight=0, max_completion_length=10)
    assert [f.__name__ for f in functions] == ["correct"] and weights == [1.0]
