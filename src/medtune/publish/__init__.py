"""Publishing a run to the Hugging Face Hub (`medtune push`).

    plan = plan_push(RunDir(path), "OWNER/NAME", kinds=["merged", "gguf"])   # plan.py: repos, verified files
    attach_cards(plan)                                                       # cards.py: README.md per repo
    folders = stage_plan(plan)                                               # RUN/publish/<repo>/
    push(plan, folders)                                                      # upload.py: checks, then commits

One repo per kind: NAME (merged weights), NAME-LoRA (the PEFT adapter), NAME-GGUF (every GGUF file,
the Modelfile and the importance matrix). Only files the run's manifest records for a finished
stage, and which still match their recorded size and sha256, are staged and uploaded.
"""

from medtune.publish.cards import attach_cards, build_card, card_data
from medtune.publish.plan import (
    CARD_FILE,
    KINDS,
    PushPlan,
    RepoPlan,
    parse_kinds,
    plan_push,
    stage_plan,
)
from medtune.publish.upload import PublishError, RepoOutcome, push, require_token

__all__ = [
    "CARD_FILE", "KINDS", "PublishError", "PushPlan", "RepoOutcome", "RepoPlan", "attach_cards", "build_card", "card_data",
    "parse_kinds", "plan_push", "push", "require_token", "stage_plan",
]
