"""Publish a finished run to the Hugging Face Hub: NAME (merged weights), NAME-LoRA (the adapter) and
NAME-GGUF (every GGUF file, the Modelfile and the importance matrix), each with its own card.

Only files the run's manifest recorded for a finished stage, and which still match their recorded
sha256, are uploaded; a re-push of an unchanged run uploads nothing. The token comes from HF_TOKEN or
`hf auth login` and is never printed or saved. --dry-run writes RUN/publish/<repo>/ (the exact files
and README.md card) and prints the plan without touching the network."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medtune.publish import (
    CARD_FILE,
    PushPlan,
    attach_cards,
    parse_kinds,
    plan_push,
    push,
    stage_plan,
)
from medtune.rundir import RunDir
from medtune.ui import console, print_summary


def command(
    run: Annotated[Path, typer.Argument(help="A run directory (runs/<name>).", show_default=False)],
    repo: Annotated[str, typer.Option("--repo", help="OWNER/NAME: the merged model's repo; the adapter goes to "
                                      "NAME-LoRA, the GGUF files to NAME-GGUF.", show_default=False)],
    what: Annotated[Optional[str], typer.Option(  # noqa: UP045 - typer needs Optional on Python 3.10
        help="Comma-separated kinds to push: merged,adapter,gguf (default: every kind the run finished).",
        show_default=False)] = None,
    private: Annotated[bool, typer.Option(help="Create new repos as private (an existing repo keeps its visibility).")] = False,
    revision: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Branch to commit to (created if missing; default: main).", show_default=False)] = None,
    create_pr: Annotated[bool, typer.Option(help="Open a pull request with the files instead of committing to the branch.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Write RUN/publish/<repo>/ and print the plan; upload nothing.")] = False,
    base_model: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Hub id of the base model, when the run's model.base is a local folder or file.", show_default=False)] = None,
    license: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Hub licence id for the cards (default: the run's model.license).", show_default=False)] = None,
    language: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        help="Language of the model's answers, ISO 639-1 (repeatable; default: en, the language of the shipped "
        "training sets).", show_default=False)] = None,
) -> None:
    plan = plan_push(RunDir(run), repo, kinds=parse_kinds(what), base_model=base_model, license=license,
                     language=language)
    attach_cards(plan)
    folders = stage_plan(plan)
    _print_plan(plan, folders)
    if dry_run:
        console.print("dry run: nothing uploaded; the folders above are exactly what a push would send", highlight=False)
        return
    outcomes = push(plan, folders, private=private, revision=revision, create_pr=create_pr,
                    on_event=lambda message: console.print(f"[cyan]    push[/cyan]  {message}", highlight=False))
    rows = [(o.repo_id, len(o.uploaded), len(o.unchanged), o.pr_url or o.commit_url or "no new commit") for o in outcomes]
    print_summary("pushed", rows, ("repo", "uploaded", "unchanged", "commit"))


def _print_plan(plan: PushPlan, folders: dict[str, Path]) -> None:
    for note in plan.notes:
        console.print(f"[yellow]note[/yellow]: {note}", highlight=False)
    for repo in plan.repos:
        rows = [(f.path_in_repo, f"{f.size:,}", f.sha256[:16]) for f in repo.files]
        rows.append((CARD_FILE, f"{(folders[repo.repo_id] / CARD_FILE).stat().st_size:,}", "(card)"))
        console.print(f"[bold]{repo.repo_id}[/bold] ({repo.kind}, {len(repo.files)} files, {repo.total_bytes:,} bytes) "
                      f"<- {folders[repo.repo_id]}", highlight=False, soft_wrap=True)
        print_summary("", rows, ("file", "bytes", "sha256"))
