"""A fake Hugging Face Hub for offline tests: standard library only, threaded, on 127.0.0.1.

It speaks the endpoints that the unmodified `huggingface_hub` 2.4 client uses to publish a folder
(found by logging what the client sends and by reading `hf_api.py` / `_commit_api.py`):

    GET  /api/whoami-v2                                          who owns the token
    GET  /api/agent-harnesses                                    the client's best-effort telemetry registry
    POST /api/repos/create                                       200 {"url"}; existing -> 409 {"url", "error"}
    GET  /api/{models|datasets}/{ns}/{name}[/revision/{rev}]     repo info (create_repo(exist_ok) after a 403)
    POST /api/validate-yaml                                      README.md metadata check
    POST /api/{models|datasets}/{ns}/{name}/branch/{branch}      create_branch
    POST /api/{models|datasets}/{ns}/{name}/preupload/{rev}      uploadMode "regular" for every file, so
                                                                 the client never switches to LFS/Xet
    POST /api/{models|datasets}/{ns}/{name}/commit/{rev}         NDJSON: header line, then one line per file
                                                                 (base64 content) -> files are stored

Tokens: `FakeHub(tokens={"hf_x": "alice"})` lets token `hf_x` act as user `alice`, who may write to
the namespaces `alice` and those in `orgs`. A request without a token, or with an unknown one, gets 401;
a write to another namespace gets 403. Every request is recorded in `hub.requests`.

    with FakeHub(tokens={"hf_test": "alice"}) as hub:
        env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "hf_test"}
        ...  # run the client
        hub.files("alice/model")  # {"README.md": b"...", ...}
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_REPO = r"/api/(?P<type>models|datasets|spaces)/(?P<ns>[^/]+)/(?P<name>[^/]+)"
ROUTES = [
    ("GET", re.compile(r"/api/whoami-v2"), "whoami"),
    ("GET", re.compile(r"/api/agent-harnesses"), "agent_harnesses"),
    ("POST", re.compile(r"/api/repos/create"), "create_repo"),
    ("POST", re.compile(r"/api/validate-yaml"), "validate_yaml"),
    ("POST", re.compile(_REPO + r"/preupload/(?P<rev>.+)"), "preupload"),
    ("POST", re.compile(_REPO + r"/commit/(?P<rev>.+)"), "commit"),
    ("POST", re.compile(_REPO + r"/branch/(?P<rev>.+)"), "create_branch"),
    ("GET", re.compile(_REPO + r"(?:/revision/(?P<rev>.+))?"), "repo_info"),
]
# Same rule as the Hub's README parser (huggingface_hub.repocard.REGEX_YAML_BLOCK).
_YAML_BLOCK = re.compile(r"^(\s*---(?:\r\n|\r|\n))([\S\s]*?)((?:\r\n|\r|\n)---[ \t]*(\r\n|\n|$))")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a file, which the client compares with the remote one to skip unchanged files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    owner: str
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    commits: list[dict] = field(default_factory=list)


@dataclass
class Request:
    method: str
    path: str
    status: int
    headers: dict[str, str]
    body: bytes


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra or {}


class FakeHub:
    def __init__(self, tokens: dict[str, str] | None = None, orgs: dict[str, list[str]] | None = None):
        self.tokens = dict(tokens or {})  # token -> user name
        self.orgs = dict(orgs or {})  # user name -> organisations the user may write to
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # port 0: the OS picks a free port
        self._server.daemon_threads = True
        # A short poll interval makes stop() quick (shutdown() waits for the loop to poll).
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeHub is not running: call start() or use it as a context manager")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- what the tests set up and read ------------------------------------------------------------
    def add_repo(self, repo_id: str, owner: str, repo_type: str = "model", private: bool = False,
                 files: dict[str, bytes] | None = None) -> Repo:
        """A repo that already exists on the Hub (e.g. another user's public repo)."""
        repo = Repo(repo_type, repo_id, private, owner, branches={"main": dict(files or {})})
        with self._lock:
            self.repos[(repo_type, repo_id)] = repo
        return repo

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        with self._lock:
            return dict(self.repos[(repo_type, repo_id)].branches[revision])

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def unknown_requests(self) -> list[Request]:
        """Requests that no route answered: a client change this fake does not speak yet."""
        return [r for r in self.requests if r.status == 404 and not r.headers.get("_routed")]

    # -- auth --------------------------------------------------------------------------------------
    def user_for(self, authorization: str | None) -> str:
        if not authorization or not authorization.startswith("Bearer "):
            raise HubError(401, "You must be authenticated to access this resource (no token was sent)")
        user = self.tokens.get(authorization[len("Bearer ") :])
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return user

    def check_write(self, user: str, namespace: str) -> None:
        if namespace != user and namespace not in self.orgs.get(user, []):
            raise HubError(403, f"You don't have the rights to create or write to repos under '{namespace}'")

    # -- endpoints ---------------------------------------------------------------------------------
    def whoami(self, req, m):
        user = self.user_for(req.authorization)
        orgs = [{"name": o, "type": "org"} for o in self.orgs.get(user, [])]
        return 200, {
            "type": "user",
            "id": git_blob_sha1(user.encode())[:24],
            "name": user,
            "fullname": user.title(),
            "orgs": orgs,
            "auth": {"type": "access_token", "accessToken": {"displayName": "fake-hub", "role": "write"}},
        }

    def agent_harnesses(self, req, m):
        return 200, {"standardEnvVars": [], "harnesses": {}}

    def create_repo(self, req, m):
        user = self.user_for(req.authorization)
        payload = req.json()
        name, namespace = payload.get("name"), payload.get("organization") or user
        repo_type = payload.get("type") or "model"
        if not name or repo_type not in URL_PREFIX:
            raise HubError(400, f"invalid repo create payload: {payload}")
        repo_id = f"{namespace}/{name}"
        url = f"{self.endpoint}/{URL_PREFIX[repo_type]}{repo_id}"
        self.check_write(user, namespace)
        with self._lock:
            if (repo_type, repo_id) in self.repos:
                raise HubError(409, f"You already created this {repo_type} repo", extra={"url": url})
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            self.repos[(repo_type, repo_id)] = Repo(repo_type, repo_id, private, owner=user)
        return 200, {"url": url, "name": repo_id, "id": git_blob_sha1(repo_id.encode())[:24]}

    def validate_yaml(self, req, m):
        content = req.json().get("content", "")
        match = _YAML_BLOCK.search(content)
        if match is None:
            return 200, {"errors": [], "warnings": [{"message": "Empty or missing yaml metadata in repo card"}]}
        try:
            data = yaml.safe_load(match.group(2))
        except yaml.YAMLError as err:
            return 400, {"errors": [{"message": f"YAML parse error: {err}"}], "warnings": []}
        if data is not None and not isinstance(data, dict):
            return 400, {"errors": [{"message": "metadata must be a YAML mapping"}], "warnings": []}
        return 200, {"errors": [], "warnings": []}

    def _repo(self, m, req, *, write: bool) -> tuple[Repo, str]:
        repo_type, repo_id = REPO_TYPES[m["type"]], f"{m['ns']}/{m['name']}"
        user = self.user_for(req.authorization) if (write or req.authorization) else None
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and user != repo.owner):
            raise HubError(404, f"Repository not found: {repo_id}", code="RepoNotFound")
        if write:
            self.check_write(user, m["ns"])
        rev = unquote(m["rev"] or "main")
        return repo, rev

    def _branch(self, repo: Repo, rev: str) -> dict[str, bytes]:
        if rev not in repo.branches:
            raise HubError(404, f"Invalid rev id: {rev}", code="RevisionNotFound")
        return repo.branches[rev]

    def repo_info(self, req, m):
        repo, rev = self._repo(m, req, write=False)
        with self._lock:
            files = self._branch(repo, rev)
            sha = repo.commits[-1]["oid"] if repo.commits else "0" * 40
            siblings = [{"rfilename": path} for path in sorted(files)]
        return 200, {"id": repo.repo_id, "private": repo.private, "sha": sha, "siblings": siblings}

    def create_branch(self, req, m):
        repo, branch = self._repo(m, req, write=True)
        with self._lock:
            if branch in repo.branches:
                raise HubError(409, f"Reference already exists: {branch}")
            repo.branches[branch] = dict(repo.branches["main"])
        return 200, {}

    def preupload(self, req, m):
        repo, rev = self._repo(m, req, write=True)
        with self._lock:
            existing = self._branch(repo, rev)
            files = [
                {
                    "path": f["path"],
                    "uploadMode": "regular",  # "lfs" would send the client to Xet storage
                    "shouldIgnore": False,
                    "oid": git_blob_sha1(existing[f["path"]]) if f["path"] in existing else None,
                }
                for f in req.json()["files"]
            ]
        return 200, {"files": files, "commitOid": repo.commits[-1]["oid"] if repo.commits else "0" * 40}

    def commit(self, req, m):
        repo, rev = self._repo(m, req, write=True)
        lines = [json.loads(line) for line in req.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "the first NDJSON line must be the commit header")
        header, added, deleted = lines[0]["value"], {}, []
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, f"unsupported encoding {value.get('encoding')!r}")
                added[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append((key, value["path"]))
            else:  # lfsFile etc.: preupload never asked for them
                raise HubError(400, f"unexpected commit operation {key!r} (the fake hub only accepts regular files)")
        with self._lock:
            files = self._branch(repo, rev)
            for key, path in deleted:
                for p in [p for p in files if p == path or (key == "deletedFolder" and p.startswith(path + "/"))]:
                    del files[p]
            files.update(added)
            oid = hashlib.sha1(req.body + str(len(repo.commits)).encode()).hexdigest()
            repo.commits.append(
                {"oid": oid, "revision": rev, "summary": header.get("summary"),
                 "description": header.get("description"), "files": sorted(added), "deleted": deleted}
            )
        url = f"{self.endpoint}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}/commit/{oid}"
        return 200, {"success": True, "commitOid": oid, "commitUrl": url, "pullRequestUrl": None}


class _ParsedRequest:
    def __init__(self, handler: BaseHTTPRequestHandler, body: bytes):
        self.authorization = handler.headers.get("authorization")
        self.body = body

    def json(self) -> dict:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError as err:
            raise HubError(400, f"body is not JSON: {err}") from err


class _Handler(BaseHTTPRequestHandler):
    fake_hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # keep pytest output clean; requests are in hub.requests
        pass

    def _body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _handle(self, method: str) -> None:
        hub = self.fake_hub
        body = self._body()
        path = urlsplit(self.path).path
        status, payload, headers, routed = 404, {"error": f"fake hub: no route for {method} {path}"}, {}, False
        for route_method, pattern, name in ROUTES:
            m = pattern.fullmatch(path)
            if m and route_method == method:
                routed = True
                try:
                    status, payload = getattr(hub, name)(_ParsedRequest(self, body), m.groupdict())
                except HubError as err:
                    status, payload = err.status, {"error": err.message, **err.extra}
                    headers["X-Error-Message"] = err.message
                    if err.code:
                        headers["X-Error-Code"] = err.code
                break
        recorded = {k.lower(): v for k, v in self.headers.items()}
        if routed:
            recorded["_routed"] = "1"
        with hub._lock:  # recorded before answering, so a client that has finished sees its requests here
            hub.requests.append(Request(method, self.path, status, recorded, body))
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(data)

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_HEAD(self):
        self._handle("HEAD")

    def do_PUT(self):
        self._handle("PUT")

    def do_DELETE(self):
        self._handle("DELETE")
