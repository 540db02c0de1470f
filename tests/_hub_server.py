"""A tiny Hugging Face hub on 127.0.0.1 serving one model repo from a folder, for tests.

It answers what huggingface_hub (2.x) asks for `model_info` / `repo_info`
(GET /api/models/{repo}[/revision/{rev}]), `list_repo_files` / `list_repo_tree`
(GET /api/models/{repo}/tree/{rev}?recursive=..., paginated with a `Link: <...>; rel="next"` header as
the hub does, here after `page_size` entries) and `hf_hub_download` (HEAD and GET
/{repo}/resolve/{rev}/{path}, with the X-Repo-Commit, ETag and Content-Length headers it needs;
404s carry X-Error-Code RepoNotFound / RevisionNotFound / EntryNotFound as the hub's do). The revision
is `main` or the one commit. Every request is recorded as (method, path) in `requests`.

    with HubServer(folder, "org/repo") as hub:
        env["HF_ENDPOINT"] = hub.url
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit


class HubServer:
    def __init__(self, folder: Path, repo: str, commit: str = "0123456789abcdef0123456789abcdef01234567",
                 page_size: int = 3):
        self.folder, self.repo, self.commit, self.page_size = Path(folder), repo, commit, page_size
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    # -- lifecycle
    def __enter__(self) -> HubServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> str:
        server = self

        class Handler(_Handler):
            hub = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self.url

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # -- what was asked
    def record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))

    def count(self, method: str | None = None, suffix: str = "") -> int:
        with self._lock:
            return sum(1 for m, p in self.requests if (method is None or m == method) and p.endswith(suffix))

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- the repo
    def files(self) -> list[str]:
        return sorted(p.relative_to(self.folder).as_posix() for p in self.folder.rglob("*") if p.is_file())

    @staticmethod
    def sha256(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _send(self, status: int, headers: dict[str, str], data: bytes = b"", body: bool = True) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body and data:
            self.wfile.write(data)

    def _error(self, status: int, code: str, body: bool) -> None:
        data = json.dumps({"error": code}).encode()
        self._send(status, {"X-Error-Code": code, "X-Repo-Commit": self.hub.commit,
                            "Content-Type": "application/json"}, data, body)

    def _json(self, obj, body: bool, extra: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self._send(200, {"Content-Type": "application/json", **(extra or {})}, data, body)

    def _serve(self, body: bool) -> None:
        hub = self.hub
        url = urlsplit(self.path)
        path = unquote(url.path)
        hub.record(self.command, path)
        revs = ("main", hub.commit)
        api = f"/api/models/{hub.repo}"
        if path.startswith("/api/models/"):
            if not (path == api or path.startswith(api + "/")):
                return self._error(404, "RepoNotFound", body)
            rest = path[len(api):]
            if rest in ("", f"/revision/{revs[0]}", f"/revision/{revs[1]}"):
                files = hub.files()
                return self._json({"id": hub.repo, "modelId": hub.repo, "sha": hub.commit, "private": False,
                                   "siblings": [{"rfilename": f} for f in files]}, body)
            if rest.startswith("/tree/"):
                rev, _, sub = rest[len("/tree/"):].partition("/")
                if rev not in revs:
                    return self._error(404, "RevisionNotFound", body)
                return self._tree(sub, parse_qs(url.query), body)
            return self._error(404, "RepoNotFound", body)
        prefix = f"/{hub.repo}/resolve/"
        if not path.startswith(prefix):
            return self._error(404, "RepoNotFound", body)
        rev, _, rel = path[len(prefix):].partition("/")
        if rev not in revs:
            return self._error(404, "RevisionNotFound", body)
        file = hub.folder / rel
        if not rel or ".." in rel.split("/") or not file.is_file():
            return self._error(404, "EntryNotFound", body)
        data = file.read_bytes()
        self._send(200, {"X-Repo-Commit": hub.commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                         "Content-Length": str(len(data)), "Content-Type": "application/octet-stream",
                         "Accept-Ranges": "none"}, data, body)

    def _tree(self, sub: str, query: dict[str, list[str]], body: bool) -> None:
        hub = self.hub
        recursive = query.get("recursive", ["False"])[0].lower() == "true"
        base = hub.folder / sub if sub else hub.folder
        if not base.is_dir():
            return self._error(404, "EntryNotFound", body)
        entries = []
        for p in sorted(base.rglob("*") if recursive else base.iterdir()):
            rel = p.relative_to(hub.folder).as_posix()
            if p.is_dir():
                entries.append({"type": "directory", "oid": hashlib.sha1(rel.encode()).hexdigest(), "path": rel})
            else:
                data = p.read_bytes()
                oid = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
                entries.append({"type": "file", "oid": oid, "size": len(data), "path": rel,
                                "lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}})
        start = int(query.get("cursor", ["0"])[0])
        page = entries[start:start + hub.page_size]
        extra = {}
        if start + hub.page_size < len(entries):
            nxt = (f"{hub.url}/api/models/{hub.repo}/tree/{self.path.split('/tree/', 1)[1].split('?')[0]}"
                   f"?recursive={recursive}&expand=False&cursor={start + hub.page_size}")
            extra["Link"] = f'<{nxt}>; rel="next"'
        self._json(page, body, extra)
