"""The prompts every backend and every derived training source share.

Two styles: `chat` (medtune's own: one user turn through the model's chat template, the assistant
turn opened with "The answer is") and `lm_eval` (EleutherAI lm-evaluation-harness's zero-shot
prompt for the same benchmark, plain text with no chat template, so medtune's scores can be
checked item by item against the reference users know).
"""

from __future__ import annotations

from medtune.tasks.registry import YES_NO_MAYBE, Item

LOGLIK_ANSWER_PREFIX = "The answer is"
"""Written at the start of the assistant turn in loglik mode; candidates (' yes', ' B') follow it."""

PROMPT_STYLES = ("chat", "lm_eval")

LM_EVAL_TARGET_DELIMITER = " "
"""lm-eval's default target_delimiter: each choice is scored as ' <choice>' after the prompt."""


def user_message(item: Item, mode: str) -> str:
    """The user turn for an item: passage, question, options and the answer instruction for `mode`."""
    labels = list(item.options)
    yes_no = labels == list(YES_NO_MAYBE)
    parts = []
    if item.context:
        parts.append(f"Abstract:\n{item.context}")
    parts.append(f"Question: {item.question}")
    if not yes_no:
        parts.append("Options:\n" + "\n".join(f"{label}. {text}" for label, text in item.options.items()))
    choice_words = "yes, no, or maybe" if yes_no else "the letter of the correct option"
    if mode == "cot":
        final = "yes, no or maybe" if yes_no else "the option letter"
        parts.append(
            f"Think step by step, then finish with the sentence \"The answer is X.\" where X is {final}."
        )
    else:
        parts.append(f"Answer with {choice_words}.")
    return "\n\n".join(parts)


def lm_eval_prompt(item: Item) -> str:
    """lm-evaluation-harness's zero-shot context for an item of its benchmark (lm_eval 0.4.x tasks).

    pubmedqa: tasks/pubmedqa/preprocess_pubmedqa.py (contexts joined by newlines);
    mmlu_<subject>: tasks/mmlu/default (the subject description, then question, lettered options);
    medmcqa: tasks/medmcqa/utils_medmcqa.py; medqa: tasks/medqa/preprocess_medqa.py.
    Benchmarks lm-eval does not ship (medtune_sample) get MMLU's layout without a description.
    The choices are the item's labels, each scored after LM_EVAL_TARGET_DELIMITER.
    """
    benchmark = item.benchmark
    if list(item.options) == list(YES_NO_MAYBE):
        return f"Abstract: {item.context}\nQuestion: {item.question}\nAnswer:"
    options = "".join(f"{label}. {text}\n" for label, text in item.options.items())
    if benchmark == "medmcqa":
        return f"Question: {item.question}\nChoices:\n{options}Answer:"
    if benchmark == "medqa":
        return f"Question: {item.question}\n{options}Answer:"
    description = ""
    if benchmark.startswith("mmlu_"):
        subject = benchmark.removeprefix("mmlu_").replace("_", " ")
        description = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    return f"{description}{item.question.strip()}\n{options}Answer:"
