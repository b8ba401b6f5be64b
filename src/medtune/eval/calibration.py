"""Contextual calibration of loglik answers (Zhao et al. 2021, "Calibrate Before Use: Improving
Few-Shot Performance of Language Models", ICML, arXiv:2102.09690).

A small model's answer probabilities lean toward some labels whatever the question ("yes" for one
model, "no" or "D" for another). Zhao et al. estimate that lean by asking the same prompt with the
content replaced by content-free strings, and divide it out: with p(x) the label probabilities of
an item renormalised over the labels and p_cf their mean over the content-free inputs (also
renormalised), the calibrated probabilities are q ∝ p(x) / p_cf (their W = diag(p_cf)^-1, b = 0),
and the answer is the label with the largest q. Like them we average three content-free inputs,
"N/A", "" and "[MASK]" (their Section 5), each put in place of every field of the item (question,
passage, option texts; the answer labels stay).

The calibrated figures are reported as their own rows (mode `loglik_calibrated`) next to the raw
loglik rows, never in their place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from medtune.eval.scoring import score_loglik
from medtune.tasks import Item

CALIBRATED_MODE = "loglik_calibrated"
CONTENT_FREE = ("N/A", "", "[MASK]")


def content_free_items(template: Item, fillers: Sequence[str] = CONTENT_FREE) -> list[Item]:
    """Copies of `template` with question, context and option texts replaced by each filler.

    The labels stay (they are what is scored); a context is replaced only where the benchmark has one,
    so the prompt keeps the benchmark's layout.
    """
    items = []
    for k, filler in enumerate(fillers):
        options = template.options
        if list(options) != list(options.values()):  # lettered options: blank their texts, keep the letters
            options = {label: filler for label in options}
        items.append(replace(template, id=f"content-free-{k}", question=filler, options=options,
                             context=filler if template.context else "", answer=next(iter(options))))
    return items


def normalise(logprobs: Sequence[float]) -> list[float]:
    """Label probabilities from per-label log-probabilities, renormalised over the labels."""
    top = max(logprobs)
    weights = [math.exp(v - top) for v in logprobs]
    total = sum(weights)
    return [w / total for w in weights]


def content_free_prior(backend, template: Item, prompt_style: str = "chat") -> dict[str, float]:
    """p_cf: the mean renormalised label probabilities over the content-free versions of `template`."""
    labels = list(template.options)
    rows = [normalise([p.scores[label] for label in labels])
            for p in score_loglik(backend, content_free_items(template), prompt_style=prompt_style)]
    mean = [sum(row[k] for row in rows) / len(rows) for k in range(len(labels))]
    total = sum(mean)
    return {label: value / total for label, value in zip(labels, mean)}


def calibrate(predictions, prior: dict[str, float]):
    """Calibrated copies of loglik `predictions` (scores: label -> log-probability).

    Each copy's scores are log q (q ∝ p / p_cf, renormalised) and its prediction is the largest q
    (ties go to the first label, as in raw scoring). Raises ValueError when a prediction lacks scores.
    """
    labels = list(prior)
    out = []
    for p in predictions:
        if not p.scores:
            raise ValueError(f"item {p.id}: no loglik scores to calibrate")
        # In log space: log q = log p - log p_cf, renormalised (the raw scores' own normaliser cancels).
        shifted = [p.scores[label] - math.log(max(prior[label], 1e-300)) for label in labels]
        top = max(shifted)
        log_total = top + math.log(sum(math.exp(v - top) for v in shifted))
        best = labels[max(range(len(labels)), key=lambda k: shifted[k])]
        out.append(replace(p, predicted=best, correct=best == p.answer,
                           scores={label: round(v - log_total, 4) for label, v in zip(labels, shifted)}))
    return out


def calibrated_predictions(backend, items: Sequence[Item], predictions, prompt_style: str = "chat"):
    """(calibrated predictions, the content-free prior) for one benchmark's raw loglik predictions.

    Items with other answer labels (a set mixing four- and five-option questions) get a prior of
    their own labels; the returned prior is keyed by the labels joined ("A,B,C,D") when there are several."""
    templates: dict[tuple[str, ...], Item] = {}
    for item in items:
        templates.setdefault(tuple(item.options), item)
    priors = {labels: content_free_prior(backend, template, prompt_style) for labels, template in templates.items()}
    by_id = {item.id: tuple(item.options) for item in items}
    calibrated = [calibrate([p], priors[by_id[p.id]])[0] for p in predictions]
    rounded = {labels: {label: round(value, 6) for label, value in prior.items()} for labels, prior in priors.items()}
    if len(rounded) == 1:
        return calibrated, next(iter(rounded.values()))
    return calibrated, {",".join(labels): prior for labels, prior in rounded.items()}
