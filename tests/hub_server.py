"""A local stand-in for the few Hugging Face Hub endpoints huggingface_hub 2.4 calls to push and load a model.

Stdlib only (``http.server`` in a thread), bound to 127.0.0.1, model repos only, files stored as regular git blobs
(the pre-upload answer is always ``"regular"``, so nothing goes through LFS or Xet)::

    GET  /api/whoami-v2                               the token's user                      (401 without a valid token)
    POST /api/repos/create                            {"name", "organization", "visibility"} (409 when it exists)
    POST /api/validate-yaml                           a README's metadata: always valid
    GET  /api/models/{repo}[/revision/{rev}]          model info: id, sha, private, siblings
    GET  /api/models/{repo}/tree/{rev}[/{path}]       [{"type": "file"|"directory", "path", "size", "oid"}, ...]
    POST /api/models/{repo}/preupload/{rev}           {"files": [{"path", "uploadMode": "regular", ...}]}
    POST /api/models/{repo}/commit/{rev}              NDJSON: a header line, then base64 "file" / "deletedFile" lines
    HEAD|GET /{repo}/resolve/{rev}/{path}             the bytes, with ETag, X-Repo-Commit and Content-Length

Anything else answers 404. Errors carry the ``X-Error-Code`` / ``X-Error-Message`` headers huggingface_hub maps
to its exceptions. A private repo, or a missing one, answers 401 without a token and 404 with one, as the Hub does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024
_INVALID = object()  # a token the server does not know


def git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    commits: list[tuple[str, dict[str, bytes]]] = field(default_factory=list)  # (sha, files), oldest first
    messages: list[str] = field(default_factory=list)  # commit messages, oldest first

    def snapshot(self, rev: str) -> tuple[str, dict[str, bytes]] | None:
        if rev == "main":
            return self.commits[-1]
        return next((c for c in self.commits if c[0] == rev), None)

    def commit(self, files: dict[str, bytes], message: str) -> str:
        parent = self.commits[-1][0] if self.commits else ""
        digest = hashlib.sha1(f"{parent}\n{message}\n{len(self.commits)}".encode())
        for path in sorted(files):
            digest.update(f"{path}\0{git_blob_oid(files[path])}\n".encode())
        sha = digest.hexdigest()
        self.commits.append((sha, dict(files)))
        self.messages.append(message)
        return sha


class HubServer:
    """The server and its state: tokens (token -> user), organizations (user -> orgs), repos, a request log."""

    def __init__(self, tokens: dict[str, str], orgs: dict[str, list[str]] | None = None) -> None:
        self.tokens = dict(tokens)
        self.orgs = {user: list(names) for user, names in (orgs or {}).items()}
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self.lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> str:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        httpd.daemon_threads = True
        httpd.hub = self  # type: ignore[attr-defined]
        self._httpd = httpd
        self.url = f"http://127.0.0.1:{httpd.server_address[1]}"
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="hub-server", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    # -- state helpers for tests -----------------------------------------------------------------------------------
    def add_repo(self, repo_id: str, files: dict[str, bytes], private: bool = False) -> str:
        """Create ``repo_id`` holding ``files`` in one commit; return the commit sha."""
        with self.lock:
            repo = self.repos.setdefault(repo_id, Repo(repo_id, private))
            return repo.commit({".gitattributes": b"*.bin filter=lfs\n", **files}, "initial commit")

    def files(self, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        with self.lock:
            return dict(self.repos[repo_id].snapshot(rev)[1])

    def paths_requested(self, method: str = "GET") -> list[str]:
        with self.lock:
            return [p for m, p in self.requests if m == method]

    # -- access rules ---------------------------------------------------------------------------------------------
    def may_write(self, user: str, namespace: str) -> bool:
        return namespace == user or namespace in self.orgs.get(user, [])

    def may_read(self, user, repo: Repo | None) -> bool:
        if repo is None:
            return False
        return not repo.private or (isinstance(user, str) and self.may_write(user, repo.repo_id.split("/")[0]))


class _Handler(BaseHTTPRequestHandler):
    server_version = "LocalHub/1.0"
    timeout = 10  # seconds a connection may sit idle before its thread gives up

    @property
    def hub(self) -> HubServer:
        return self.server.hub  # type: ignore[attr-defined]

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's name
        logger.debug("hub server: " + format, *args)

    # -- dispatch ------------------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        with self.hub.lock:
            self.hub.requests.append((method, path))
        user = self._user()
        if user is _INVALID:
            return self._error(401, "Invalid credentials in Authorization header")
        parts = path.strip("/").split("/")
        try:
            if parts[:2] == ["api", "whoami-v2"]:
                return self._whoami(user)
            if parts[:3] == ["api", "repos", "create"] and method == "POST":
                return self._create(user)
            if parts[:2] == ["api", "validate-yaml"] and method == "POST":
                return self._json(200, {"errors": [], "warnings": []})
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                return self._model_api(method, user, "/".join(parts[2:4]), parts[4:], query)
            if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
                return self._resolve(method, user, "/".join(parts[:2]), parts[3], "/".join(parts[4:]))
        except (ValueError, KeyError) as e:
            return self._error(400, f"bad request: {e}")
        return self._error(404, f"no such endpoint on this test server: {method} {path}")

    def _model_api(self, method: str, user, repo_id: str, rest: list[str], query) -> None:
        repo = self._readable(user, repo_id)
        if repo is None:
            return None
        if not rest or (rest[0] == "revision" and len(rest) == 2 and method == "GET"):
            return self._model_info(repo, rest[1] if rest else "main", query)
        if rest[0] == "tree" and len(rest) >= 2 and method == "GET":
            return self._tree(repo, rest[1], "/".join(rest[2:]), query)
        if rest[0] in ("preupload", "commit") and len(rest) == 2 and method == "POST":
            if not (isinstance(user, str) and self.hub.may_write(user, repo_id.split("/")[0])):
                return self._error(403, f"you may not write to {repo_id}")
            return self._preupload(repo) if rest[0] == "preupload" else self._commit(repo, rest[1])
        return self._error(404, f"no such endpoint on this test server: {method} {self.path}")

    # -- endpoints -----------------------------------------------------------------------------------------------
    def _whoami(self, user) -> None:
        if user is None:
            return self._error(401, "Invalid username or password.")
        orgs = [{"name": o, "type": "org"} for o in self.hub.orgs.get(user, [])]
        return self._json(200, {"type": "user", "name": user, "orgs": orgs,
                                "auth": {"type": "access_token", "accessToken": {"role": "write"}}})

    def _create(self, user) -> None:
        if user is None:
            return self._error(401, "Invalid username or password.")
        body = json.loads(self._body() or b"{}")
        namespace = body.get("organization") or user
        repo_id = f"{namespace}/{body['name']}"
        if body.get("type") not in (None, "model"):
            return self._error(400, "this test server holds model repos only")
        if not self.hub.may_write(user, namespace):
            return self._error(403, f"you may not create repos in {namespace}")
        with self.hub.lock:
            if repo_id in self.hub.repos:
                return self._json(409, {"error": "You already created this model repo", "url": self._url(repo_id)})
            repo = Repo(repo_id, private=body.get("visibility") == "private" or bool(body.get("private")))
            repo.commit({".gitattributes": b"*.bin filter=lfs diff=lfs merge=lfs -text\n"}, "initial commit")
            self.hub.repos[repo_id] = repo
        return self._json(200, {"url": self._url(repo_id), "name": repo_id, "id": repo_id})

    def _model_info(self, repo: Repo, rev: str, query) -> None:
        snap = self._snapshot(repo, rev)
        if snap is None:
            return None
        sha, files = snap
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = [{"rfilename": p, **({"size": len(c), "blobId": git_blob_oid(c)} if blobs else {})}
                    for p, c in sorted(files.items())]
        return self._json(200, {"id": repo.repo_id, "modelId": repo.repo_id, "sha": sha, "private": repo.private,
                                "siblings": siblings, "tags": [], "lastModified": "2026-01-01T00:00:00.000Z"})

    def _tree(self, repo: Repo, rev: str, prefix: str, query) -> None:
        snap = self._snapshot(repo, rev)
        if snap is None:
            return None
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        base = prefix.strip("/") + "/" if prefix.strip("/") else ""
        entries: dict[str, dict] = {}
        for path, content in sorted(snap[1].items()):
            if not path.startswith(base):
                continue
            rel = path[len(base):].split("/")
            for depth in range(1, len(rel)):  # the folders on the way
                folder = base + "/".join(rel[:depth])
                if recursive or depth == 1:
                    entries.setdefault(folder, {"type": "directory", "path": folder, "oid": "0" * 40, "size": 0})
            if recursive or len(rel) == 1:
                entries[path] = {"type": "file", "path": path, "size": len(content), "oid": git_blob_oid(content)}
        return self._json(200, list(entries.values()))

    def _preupload(self, repo: Repo) -> None:
        body = json.loads(self._body())
        current = repo.snapshot("main")[1]
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                  "oid": git_blob_oid(current[f["path"]]) if f["path"] in current else None}
                 for f in body["files"]]
        return self._json(200, {"files": files, "commitOid": repo.snapshot("main")[0]})

    def _commit(self, repo: Repo, rev: str) -> None:
        if rev != "main":
            return self._error(404, f"revision {rev} not found", code="RevisionNotFound")
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            return self._error(400, "a commit starts with a header line")
        with self.hub.lock:
            files = dict(repo.snapshot("main")[1])
            for line in lines[1:]:
                key, value = line["key"], line["value"]
                if key == "file" and value.get("encoding") == "base64":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                else:
                    return self._error(400, f"this test server takes regular base64 files only; got {key!r}")
            sha = repo.commit(files, lines[0]["value"].get("summary", ""))
        return self._json(200, {"commitUrl": f"{self._url(repo.repo_id)}/commit/{sha}", "commitOid": sha,
                                "pullRequestUrl": None})

    def _resolve(self, method: str, user, repo_id: str, rev: str, path: str) -> None:
        repo = self._readable(user, repo_id)
        snap = None if repo is None else self._snapshot(repo, rev)
        if snap is None:
            return None
        sha, files = snap
        if path not in files:
            return self._error(404, f"{path} not found", code="EntryNotFound", extra={"X-Repo-Commit": sha},
                               head=method == "HEAD")
        content = files[path]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(content)))
        self.send_header("ETag", f'"{git_blob_oid(content)}"')
        self.send_header("X-Repo-Commit", sha)
        self.end_headers()
        if method == "GET":
            self.wfile.write(content)

    # -- helpers ---------------------------------------------------------------------------------------------
    def _user(self):
        header = self.headers.get("authorization")
        if not header:
            return None
        token = header.split(" ", 1)[1].strip() if header.lower().startswith("bearer ") else header.strip()
        return self.hub.tokens.get(token, _INVALID)

    def _readable(self, user, repo_id: str) -> Repo | None:
        with self.hub.lock:
            repo = self.hub.repos.get(repo_id)
        if self.hub.may_read(user, repo):
            return repo
        status = 401 if user is None else 404
        self._error(status, "Repository not found", code="RepoNotFound", head=self.command == "HEAD")
        return None

    def _snapshot(self, repo: Repo, rev: str):
        with self.hub.lock:
            snap = repo.snapshot(rev)
        if snap is None:
            self._error(404, f"Invalid rev id: {rev}", code="RevisionNotFound", head=self.command == "HEAD")
        return snap

    def _url(self, repo_id: str) -> str:
        return f"{self.hub.url}/{repo_id}"

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise ValueError(f"body of {length} bytes is over this test server's {MAX_BODY_BYTES}")
        return self.rfile.read(length) if length else b""

    def _json(self, status: int, payload, extra: dict[str, str] | None = None, head: bool = False) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _error(self, status: int, message: str, code: str | None = None, extra: dict[str, str] | None = None,
               head: bool = False) -> None:
        headers = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {}), **(extra or {})}
        self._json(status, {"error": message}, headers, head=head or self.command == "HEAD")
