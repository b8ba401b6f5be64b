"""Helpers for the `pubmedqa_local` lm-eval task: PubMedQA's test split read from the original release.

The folder holds `ori_pqal.json` (the 1,000 expert-labelled records, keyed by PubMed id) and
`test_ground_truth.json` (the 500 test ids and their labels). It is the `pubmedqa_dir` metadata
(`--metadata '{"pubmedqa_dir": ...}'`), else $MEDTUNE_PUBMEDQA, else ../shared/data/pubmedqa beside
the repository. Nothing is copied: the records are read where they lie.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets

# The built-in task's own prompt function, so our task cannot drift from it.
from lm_eval.tasks.pubmedqa.preprocess_pubmedqa import doc_to_text  # noqa: F401  (the YAML names it)

DEFAULT_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "pubmedqa"


def release_folder(value: str | None = None) -> Path:
    return Path(value or os.environ.get("MEDTUNE_PUBMEDQA") or DEFAULT_DIR)


def load_pubmedqa_test(pubmedqa_dir: str | None = None, **_metadata) -> datasets.DatasetDict:
    """The 500 test records in test_ground_truth.json's order, with the fields the built-in task reads
    (QUESTION, CONTEXTS, final_decision) plus `pubid` to match items across tools.

    lm-eval passes every task's metadata (and sometimes the model arguments) as keywords; only
    pubmedqa_dir is ours. Raises FileNotFoundError naming the folder when the files are missing.
    """
    folder = release_folder(pubmedqa_dir)
    files = [folder / "ori_pqal.json", folder / "test_ground_truth.json"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"PubMedQA release files not found: {', '.join(missing)}; pass "
                                "--metadata '{\"pubmedqa_dir\": \"/path/to/pubmedqa\"}'")
    records = json.loads(files[0].read_text(encoding="utf-8"))
    truth = json.loads(files[1].read_text(encoding="utf-8"))
    rows = [{
        "pubid": pmid,
        "QUESTION": records[pmid]["QUESTION"],
        "CONTEXTS": list(records[pmid]["CONTEXTS"]),
        "final_decision": decision,
    } for pmid, decision in truth.items()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
