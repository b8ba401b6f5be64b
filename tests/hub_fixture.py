"""A local stand-in for the Hugging Face Hub's HTTP API, for the `medtune push` tests.

It answers the calls huggingface_hub makes on the push path, in the shapes it parses:
whoami-v2, model info (with files metadata and cardData), repos/create, branch creation,
validate-yaml, preupload, the git-LFS batch endpoint with its upload and verify actions, and commit
(ndjson, also as a pull request). Every request is logged, the token is checked on each, and writes
to a namespace the user does not own get 403 like on the Hub. Uploads go through LFS, so the tests
set HF_HUB_DISABLE_XET=1 (the Xet protocol needs a CAS server this stand-in does not have).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import yaml

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt")  # the Hub's default .gitattributes sends these to LFS
LFS_MIN_SIZE = 10 * 2**20


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob " + str(len(data)).encode() + b"\0" + data).hexdigest()


@dataclass
class StoredFile:
    size: int
    lfs_sha256: str | None = None  # LFS files: the object's sha256
    content: bytes | None = None  # regular files


@dataclass
class Repo:
    private: bool
    branches: dict[str, dict[str, StoredFile]] = field(default_factory=dict)
    commits: list[dict[str, Any]] = field(default_factory=list)
    pull_requests: int = 0


@dataclass
class FakeHub:
    token: str
    user: str = "alice"
    orgs: list[dict[str, str]] = field(default_factory=list)
    role: str = "write"
    repos: dict[str, Repo] = field(default_factory=dict)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    url: str = ""

    # ---- what the tests read -------------------------------------------------------------------
    def commits(self, repo_id: str) -> list[dict[str, Any]]:
        return self.repos[repo_id].commits if repo_id in self.repos else []

    def file_bytes(self, repo_id: str, path: str, branch: str = "main") -> bytes:
        stored = self.repos[repo_id].branches[branch][path]
        return stored.content if stored.content is not None else self.lfs_objects[stored.lfs_sha256]

    def add_repo(self, repo_id: str, files: dict[str, bytes], private: bool = False) -> None:
        """A repo that already exists, with regular files (e.g. somebody else's README.md)."""
        branch = {".gitattributes": StoredFile(len(b"*.gguf filter=lfs\n"), content=b"*.gguf filter=lfs\n")}
        branch.update({path: StoredFile(len(data), content=data) for path, data in files.items()})
        self.repos[repo_id] = Repo(private, {"main": branch})

    def writes(self) -> list[tuple[str, str]]:
        """Requests that start an upload or change anything: repo creation, preupload, LFS, branch, commit."""
        return [(m, p) for m, p in self.requests
                if m == "PUT" or p == "/api/repos/create" or re.search(r"/(preupload|commit|branch)/|lfs/objects/batch", p)]

    # ---- the API -------------------------------------------------------------------------------
    def may_write(self, namespace: str) -> bool:
        if self.role == "read":
            return False
        return namespace == self.user or any(o["name"] == namespace and o.get("roleInOrg") != "read" for o in self.orgs)

    def whoami(self) -> dict[str, Any]:
        return {"type": "user", "name": self.user, "orgs": self.orgs,
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": self.role}}}

    def model_info(self, repo_id: str, revision: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        repo = self.repos.get(repo_id)
        if repo is None:
            return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
        if revision not in repo.branches:
            return 404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"}
        files = repo.branches[revision]
        siblings = []
        for path, stored in sorted(files.items()):
            sibling: dict[str, Any] = {"rfilename": path, "size": stored.size}
            if stored.lfs_sha256:
                pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{stored.lfs_sha256}\nsize {stored.size}\n"
                sibling["blobId"] = git_blob_id(pointer.encode())
                sibling["lfs"] = {"sha256": stored.lfs_sha256, "size": stored.size, "pointerSize": len(pointer)}
            else:
                sibling["blobId"] = git_blob_id(stored.content or b"")
            siblings.append(sibling)
        info = {"id": repo_id, "modelId": repo_id, "private": repo.private, "sha": self._head(repo_id, revision),
                "siblings": siblings, "tags": []}
        readme = files.get("README.md")
        if readme is not None and readme.content and readme.content.startswith(b"---"):
            info["cardData"] = yaml.safe_load(readme.content.decode().split("---")[1])
        return 200, info, {}

    def _head(self, repo_id: str, branch: str) -> str:
        commits = [c for c in self.repos[repo_id].commits if c["branch"] == branch]
        return commits[-1]["oid"] if commits else "0" * 40

    def create_repo(self, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
        if not self.may_write(repo_id.split("/")[0]):
            return 403, {"error": f"You don't have the rights to create a model under the namespace {repo_id.split('/')[0]}"}
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
        self.add_repo(repo_id, {}, private=payload.get("visibility") == "private" or bool(payload.get("private")))
        return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id}

    def preupload(self, repo_id: str, revision: str, payload: dict[str, Any]) -> dict[str, Any]:
        existing = self.repos[repo_id].branches.get(revision, {})
        files = []
        for entry in payload["files"]:
            path, size = entry["path"], entry["size"]
            lfs = path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE
            stored = existing.get(path)
            oid = None
            if stored is not None:
                oid = stored.lfs_sha256 if stored.lfs_sha256 else git_blob_id(stored.content or b"")
            files.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        return {"files": files, "commitOid": self._head(repo_id, revision)}

    def lfs_batch(self, payload: dict[str, Any]) -> dict[str, Any]:
        objects = []
        for obj in payload["objects"]:
            oid, size = obj["oid"], obj["size"]
            if oid in self.lfs_objects:
                objects.append({"oid": oid, "size": size})  # already stored: no actions, nothing to upload
            else:
                objects.append({"oid": oid, "size": size, "authenticated": True, "actions": {
                    "upload": {"href": f"{self.url}/lfs-upload/{oid}"},
                    "verify": {"href": f"{self.url}/lfs-verify/{oid}"},
                }})
        return {"transfer": "basic", "objects": objects}

    def commit(self, repo_id: str, revision: str, body: bytes, create_pr: bool) -> tuple[int, dict[str, Any]]:
        repo = self.repos[repo_id]
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = lines[0]["value"]
        changes: dict[str, StoredFile] = {}
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                data = base64.b64decode(value["content"])
                changes[value["path"]] = StoredFile(len(data), content=data)
            elif line["key"] == "lfsFile":
                if value["oid"] not in self.lfs_objects:
                    return 422, {"error": f"LFS object {value['oid']} was never uploaded"}
                changes[value["path"]] = StoredFile(value["size"], lfs_sha256=value["oid"])
        branch = revision
        pr_url = None
        if create_pr:
            repo.pull_requests += 1
            branch = f"refs/pr/{repo.pull_requests}"
            repo.branches[branch] = dict(repo.branches.get(revision, {}))
            pr_url = f"{self.url}/{repo_id}/discussions/{repo.pull_requests}"
        repo.branches.setdefault(branch, {}).update(changes)
        oid = hashlib.sha1(f"{repo_id}{len(repo.commits)}{sorted(changes)}".encode()).hexdigest()
        repo.commits.append({"oid": oid, "branch": branch, "summary": header["summary"],
                             "description": header.get("description", ""), "files": sorted(changes)})
        return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": pr_url}


MODEL_PATH = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$")
ACTION_PATH = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<action>preupload|commit|branch)/(?P<rev>.+)$")
LFS_BATCH_PATH = re.compile(r"^/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch$")


def make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep pytest output quiet
            pass

        def _reply(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body if body is not None else {}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _authorized(self) -> bool:
            if self.headers.get("Authorization") == f"Bearer {hub.token}":
                return True
            self._reply(401, {"error": "Invalid credentials in Authorization header"})
            return False

        def do_GET(self) -> None:
            url = urlparse(self.path)
            hub.requests.append(("GET", url.path))
            if not self._authorized():
                return
            if url.path == "/api/whoami-v2":
                return self._reply(200, hub.whoami())
            match = MODEL_PATH.match(url.path)
            if match:
                status, body, headers = hub.model_info(unquote(match["repo"]), unquote(match["rev"] or "main"))
                return self._reply(status, body, headers)
            self._reply(404, {"error": f"not served by the fake hub: GET {url.path}"})

        def do_POST(self) -> None:
            url = urlparse(self.path)
            hub.requests.append(("POST", url.path))
            body = self._body()
            if url.path.startswith("/lfs-verify/"):
                oid = url.path.rsplit("/", 1)[1]
                return self._reply(200 if oid in hub.lfs_objects else 404, {})
            if not self._authorized():
                return
            with lock:
                self._post(url, body)

        def _post(self, url: Any, body: bytes) -> None:
            if url.path == "/api/validate-yaml":
                return self._reply(200, {"errors": [], "warnings": []})
            if url.path == "/api/repos/create":
                status, reply = hub.create_repo(json.loads(body))
                return self._reply(status, reply)
            match = LFS_BATCH_PATH.match(url.path)
            if match:
                return self._reply(200, hub.lfs_batch(json.loads(body)))
            match = ACTION_PATH.match(url.path)
            if not match:
                return self._reply(404, {"error": f"not served by the fake hub: POST {url.path}"})
            repo_id, action, revision = match["repo"], match["action"], unquote(match["rev"])
            if repo_id not in hub.repos:
                return self._reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            if not hub.may_write(repo_id.split("/")[0]):
                return self._reply(403, {"error": "You don't have write access to this repo"})
            if action == "preupload":
                return self._reply(200, hub.preupload(repo_id, revision, json.loads(body)))
            if action == "branch":
                repo = hub.repos[repo_id]
                if revision in repo.branches:
                    return self._reply(409, {"error": "Reference already exists"})
                repo.branches[revision] = dict(repo.branches["main"])
                return self._reply(200, {})
            create_pr = parse_qs(url.query).get("create_pr") == ["1"]
            status, reply = hub.commit(repo_id, revision, body, create_pr)
            self._reply(status, reply)

        def do_PUT(self) -> None:
            url = urlparse(self.path)
            hub.requests.append(("PUT", url.path))
            body = self._body()
            oid = url.path.rsplit("/", 1)[1]
            if not url.path.startswith("/lfs-upload/") or hashlib.sha256(body).hexdigest() != oid:
                return self._reply(400, {"error": "content does not match its oid"})
            with lock:
                hub.lfs_objects[oid] = body
            self._reply(200, {})

    return Handler


class RunningHub:
    """Context manager: a FakeHub served on 127.0.0.1 in a thread."""

    def __init__(self, hub: FakeHub) -> None:
        self.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(hub))
        hub.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self.hub

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
