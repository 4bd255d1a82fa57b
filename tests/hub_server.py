"""A minimal stand-in for the Hugging Face Hub's file API, serving local folders on 127.0.0.1.

Answers what `huggingface_hub` asks when `from_pretrained("org/name")` runs with `HF_ENDPOINT` pointing here:
`HEAD|GET /{org}/{name}/resolve/{revision}/{path}` and `GET /api/models/{org}/{name}[/revision/{rev}]`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubHandler(BaseHTTPRequestHandler):
    repos: dict[str, Path] = {}
    requests: list[str] = []

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _not_found(self, code: str) -> None:
        self._send(404, json.dumps({"error": code}).encode(), {"X-Error-Code": code, "X-Error-Message": code})

    def _route(self) -> None:
        path = unquote(urlparse(self.path).path)
        self.requests.append(f"{self.command} {path}")
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo = "/".join(parts[2:4])
            if repo not in self.repos:
                return self._not_found("RepoNotFound")
            files = sorted(
                p.relative_to(self.repos[repo]).as_posix() for p in self.repos[repo].rglob("*") if p.is_file()
            )
            body = {
                "id": repo,
                "modelId": repo,
                "sha": COMMIT,
                "private": False,
                "siblings": [{"rfilename": f} for f in files],
            }
            return self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})
        if len(parts) >= 5 and parts[2] == "resolve":
            repo = "/".join(parts[:2])
            if repo not in self.repos:
                return self._not_found("RepoNotFound")
            file = self.repos[repo] / "/".join(parts[4:])
            if not file.is_file():
                return self._not_found("EntryNotFound")
            data = file.read_bytes()
            etag = hashlib.sha256(data).hexdigest()
            headers = {"ETag": f'"{etag}"', "X-Repo-Commit": COMMIT, "Content-Type": "application/octet-stream"}
            return self._send(200, data, headers)
        return self._not_found("RepoNotFound")

    do_GET = _route
    do_HEAD = _route


class LocalHub:
    """`with LocalHub({"org/name": folder}) as hub:` then use `hub.endpoint` as HF_ENDPOINT."""

    def __init__(self, repos: dict[str, Path]):
        handler = type("Handler", (HubHandler,), {"repos": dict(repos), "requests": []})
        self.handler = handler
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def requests(self) -> list[str]:
        return self.handler.requests

    def __enter__(self) -> LocalHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
