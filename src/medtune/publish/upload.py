"""Uploading a staged push to the Hugging Face Hub, through huggingface_hub.

Everything that can refuse a push is asked before the first byte goes up, for every repo: the token
(HF_TOKEN or the user's `hf auth login`), whether it may write to each namespace, and whether each
repo name already holds a different model. Then, per repo: create_repo(exist_ok=True), and one
commit with exactly the staged files whose content the repo does not already have (compared by
LFS sha256 or git blob id); a repo that already has them all gets no commit.

The token is passed to huggingface_hub and nowhere else: it is never printed, logged or written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, get_token
from huggingface_hub.errors import (
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import sha

from medtune.errors import MedtuneError
from medtune.publish.plan import CARD_FILE, PushPlan, RepoPlan, staged_files

REPO_TYPE = "model"
# Files the Hub writes itself; they do not make a repo "someone else's model".
HUB_OWN_FILES = {".gitattributes", CARD_FILE}
REGULAR_FILE_MAX = 10 * 2**20  # the Hub stores larger files through LFS/Xet


class PublishError(MedtuneError):
    """The Hub refused (or would refuse) a push: no token, no write access, a name taken, an HTTP error."""


@dataclass
class RemoteState:
    """What one repo holds now (None when it does not exist yet)."""

    exists: bool
    private: bool | None = None
    branch_exists: bool = True
    files: dict[str, dict[str, Any]] | None = None  # path -> {"sha256": ..., "blob_id": ...}
    card: dict[str, Any] | None = None
    head: str | None = None  # the branch's last commit


@dataclass
class RepoOutcome:
    repo_id: str
    uploaded: list[str]
    unchanged: list[str]
    commit_url: str | None
    pr_url: str | None = None


def require_token() -> str:
    """The user's Hub token (HF_TOKEN, else the saved login). Raises PublishError when there is none."""
    token = get_token()
    if not token:
        raise PublishError(
            "no Hugging Face token: set HF_TOKEN (a write token from https://huggingface.co/settings/tokens) "
            "or run `hf auth login`, then push again"
        )
    return token


def check_push(plan: PushPlan, api: HfApi, *, revision: str | None) -> dict[str, RemoteState]:
    """Everything that can refuse the push, for every repo, before anything is uploaded.

    Raises PublishError: token refused, no write access to a namespace, a repo that holds a
    different model, or a GGUF repo whose base_model (the merged repo) would not exist.
    """
    identity = _whoami(api)
    states: dict[str, RemoteState] = {}
    for repo in plan.repos:
        check_can_write(identity, repo.repo_id)
        state = remote_state(api, repo.repo_id, revision)
        _check_same_model(repo, state)
        states[repo.repo_id] = state
    if "gguf" in plan.kinds() and "merged" not in plan.kinds():
        merged = plan.repo_id("merged")
        if not remote_state(api, merged, None).exists:
            raise PublishError(
                f"{plan.repo_id('gguf')}'s card names {merged} as its base_model, and {merged} does not exist on "
                "the Hub: push the merged model too (--what merged,gguf)"
            )
    return states


def _whoami(api: HfApi) -> dict[str, Any]:
    try:
        return api.whoami()
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise PublishError(
            f"the Hub refused the token (HTTP {status} on whoami): it is invalid or expired; "
            "set HF_TOKEN to a valid write token or run `hf auth login` again"
        ) from None
    except Exception as exc:  # noqa: BLE001 - the HTTP client differs across huggingface_hub versions (requests, httpx, httpx2)
        raise PublishError(f"cannot reach the Hub at {api.endpoint} ({type(exc).__name__}: {exc}); "
                           "check the network (or HF_ENDPOINT) and push again") from None


def check_can_write(identity: dict[str, Any], repo_id: str) -> None:
    """Refuse namespaces the token cannot write: a read-only token, someone else's user name, an
    organization the user is not in (or only reads), a fine-grained token without repo.write there."""
    namespace = repo_id.split("/", 1)[0]
    user = identity.get("name")
    token_info = (identity.get("auth") or {}).get("accessToken") or {}
    role = token_info.get("role")
    if role == "read":
        raise PublishError(f"cannot write {repo_id}: the token is read-only; create a write token at "
                           "https://huggingface.co/settings/tokens and set HF_TOKEN to it")
    orgs = {org.get("name"): org.get("roleInOrg") for org in identity.get("orgs") or []}
    if namespace != user and namespace not in orgs:
        raise PublishError(f"cannot write {repo_id}: the token belongs to {user!r}, who is neither {namespace!r} "
                           f"nor a member of an organization of that name; use --repo {user}/NAME")
    if namespace in orgs and orgs[namespace] == "read":
        raise PublishError(f"cannot write {repo_id}: {user!r} has read-only access to the organization {namespace!r}")
    scoped = (token_info.get("fineGrained") or {}).get("scoped")
    if role == "fineGrained" and isinstance(scoped, list):
        allowed = any(
            "repo.write" in (entry.get("permissions") or [])
            and (entry.get("entity") or {}).get("name") in (namespace, repo_id)
            for entry in scoped
        )
        if not allowed:
            raise PublishError(f"cannot write {repo_id}: the fine-grained token has no 'repo.write' permission on "
                               f"{namespace!r}; add it at https://huggingface.co/settings/tokens")


def remote_state(api: HfApi, repo_id: str, revision: str | None) -> RemoteState:
    """The repo's files (with their LFS sha256 / git blob ids), visibility and card metadata."""
    try:
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
    except RepositoryNotFoundError:
        return RemoteState(exists=False, branch_exists=False, files={})
    except RevisionNotFoundError:
        main = api.model_info(repo_id, files_metadata=True)  # the branch is new: nothing there is shared yet
        return RemoteState(True, main.private, False, {}, _card_dict(main.card_data), None)
    except HfHubHTTPError as exc:
        raise _http_error(repo_id, "reading the repo", exc) from None
    files = {
        sibling.rfilename: {"sha256": sibling.lfs.sha256 if sibling.lfs else None, "blob_id": sibling.blob_id}
        for sibling in info.siblings or []
    }
    return RemoteState(True, info.private, True, files, _card_dict(info.card_data), info.sha)


def _card_dict(card_data: Any) -> dict[str, Any]:
    return card_data.to_dict() if card_data is not None else {}


def _check_same_model(repo: RepoPlan, state: RemoteState) -> None:
    """A repo with files of its own may only be updated by the same model: a medtune card of the same
    kind on the same base. Anything else is somebody else's model under that name."""
    if not state.exists or not set(state.files or {}) - HUB_OWN_FILES:
        return
    ours = repo.card.data.to_dict() if repo.card is not None else {}
    theirs = state.card or {}
    same = (
        "medtune" in (theirs.get("tags") or [])
        and _ids(theirs.get("base_model")) == _ids(ours.get("base_model"))
        and theirs.get("base_model_relation") == ours.get("base_model_relation")
    )
    if not same:
        raise PublishError(
            f"{repo.repo_id} already holds a different model (base_model {theirs.get('base_model')!r}, "
            f"{'a medtune card' if 'medtune' in (theirs.get('tags') or []) else 'not a medtune card'}); "
            "choose another --repo name, or delete that repo on the Hub first"
        )


def _ids(value: Any) -> list[str]:
    """base_model as a list of ids (a card may write one id or a list)."""
    return [str(v) for v in value] if isinstance(value, list) else [str(value)] if value else []


def changed_files(repo: RepoPlan, folder: Path, state: RemoteState) -> tuple[list[str], list[str]]:
    """(paths to upload, paths the repo already holds with the same content)."""
    sha256 = {f.path_in_repo: f.sha256 for f in repo.files}
    upload, same = [], []
    for path in staged_files(repo):
        remote = (state.files or {}).get(path)
        if remote is not None and _same_content(folder / path, sha256.get(path), remote):
            same.append(path)
        else:
            upload.append(path)
    return upload, same


def _same_content(local: Path, local_sha256: str | None, remote: dict[str, Any]) -> bool:
    if remote.get("sha256"):  # an LFS file: the Hub keeps its sha256
        return remote["sha256"] == (local_sha256 or _sha256(local))
    if local.stat().st_size > REGULAR_FILE_MAX:
        return False  # the remote copy is a small git file, the local one is not: they differ
    # A regular git file: compare git blob ids (sha1 of "blob <size>\0<content>").
    return remote.get("blob_id") == sha.git_hash(local.read_bytes())


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return sha.sha_fileobj(handle).hex()


def upload_repo(
    api: HfApi,
    plan: PushPlan,
    repo: RepoPlan,
    folder: Path,
    state: RemoteState,
    *,
    private: bool,
    revision: str | None,
    create_pr: bool,
) -> RepoOutcome:
    """Create the repo if needed and commit the staged files it does not hold yet (no commit if none)."""
    upload, same = changed_files(repo, folder, state)
    try:
        api.create_repo(repo.repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
        if not upload:
            return RepoOutcome(repo.repo_id, [], same, None)
        if revision and revision != "main" and not state.branch_exists:
            api.create_branch(repo.repo_id, branch=revision, repo_type=REPO_TYPE, exist_ok=True)
        commit = api.create_commit(
            repo.repo_id,
            [CommitOperationAdd(path_in_repo=path, path_or_fileobj=folder / path) for path in upload],
            commit_message=f"medtune push: {plan.run.name} ({repo.kind}), {len(upload)} file(s)",
            commit_description=_commit_description(repo, upload),
            repo_type=REPO_TYPE,
            revision=revision,
            create_pr=create_pr,
        )
    except HfHubHTTPError as exc:
        raise _http_error(repo.repo_id, "uploading", exc) from None
    if state.head is not None and commit.oid == state.head:
        # huggingface_hub found every file unchanged after all (its own oid check) and made no commit.
        return RepoOutcome(repo.repo_id, [], upload + same, None)
    return RepoOutcome(repo.repo_id, upload, same, commit.commit_url, commit.pr_url)


def _commit_description(repo: RepoPlan, upload: list[str]) -> str:
    sha256 = {f.path_in_repo: f.sha256 for f in repo.files}
    lines = [f"- {path}" + (f" sha256 {sha256[path]}" if path in sha256 else "") for path in upload]
    return "Files recorded and verified by medtune (sha256 from the run's manifest):\n" + "\n".join(lines)


def _http_error(repo_id: str, doing: str, exc: HfHubHTTPError) -> PublishError:
    # The server's own message, never the request (whose headers carry the token).
    status = exc.response.status_code if exc.response is not None else "?"
    server = (exc.server_message or "").strip().splitlines()
    reason = server[0] if server else str(exc).splitlines()[0]
    return PublishError(f"{repo_id}: the Hub refused {doing} (HTTP {status}): {reason}")


def push(
    plan: PushPlan,
    folders: dict[str, Path],
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    on_event: Callable[[str], None] = lambda message: None,
) -> list[RepoOutcome]:
    """Check every repo, then upload each staged folder. Raises PublishError (before any upload for
    the token, write access and name checks)."""
    api = HfApi(token=require_token())
    states = check_push(plan, api, revision=revision)
    outcomes = []
    for repo in plan.repos:
        state = states[repo.repo_id]
        if private and state.exists and state.private is False:
            on_event(f"{repo.repo_id} exists and is public: --private does not change an existing repo's visibility")
        outcome = upload_repo(api, plan, repo, folders[repo.repo_id], state,
                              private=private, revision=revision, create_pr=create_pr)
        on_event(f"{repo.repo_id}: " + (f"{len(outcome.uploaded)} file(s) committed" if outcome.uploaded
                                        else "already up to date, nothing uploaded"))
        outcomes.append(outcome)
    return outcomes

