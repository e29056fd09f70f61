"""A Hugging Face Hub stand-in on loopback: enough of the HTTP API for `create_repo`, `upload_folder` and
`from_pretrained` (through `HF_ENDPOINT`), storing what it receives as plain files under a folder. `whoami`
knows the tokens in `tokens` (token -> role, "write" or "read"), all of the user `user`; others get 401.

    server = LoopbackHub(tmp_path / "hub"); server.start(); ... server.url ...; server.stop()
"""

import base64
import gzip
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import yaml


class LoopbackHub:
    def __init__(self, root: Path, user: str = "me", tokens: dict[str, str] | None = None):
        self.root = Path(root)
        self.user = user
        self.tokens = {"hf_loopback": "write"} if tokens is None else tokens
        self.root.mkdir(parents=True, exist_ok=True)
        self.requests: list[tuple[str, str]] = []
        self.commits: dict[str, list[str]] = {}
        self.card_metadata: dict | None = None
        self.refuse_commits = False  # True: every commit is answered 500, as by a Hub outage mid-upload
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "LoopbackHub":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def repo_dir(self, repo_id: str) -> Path:
        return self.root / repo_id

    def revision(self, repo_id: str) -> str:
        commits = self.commits.get(repo_id) or ["0" * 40]
        return commits[-1]

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                return gzip.decompress(data) if self.headers.get("Content-Encoding") == "gzip" else data

            def _json(self, payload, status=200, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _not_found(self, message):
                self._json({"error": message}, 404, {"X-Error-Code": "EntryNotFound", "X-Error-Message": message})

            def do_POST(self):
                path = unquote(urlparse(self.path).path)
                hub.requests.append(("POST", path))
                body = self._body()
                if path == "/api/repos/create":
                    request = json.loads(body)
                    repo_id = "/".join(p for p in (request.get("organization"), request["name"]) if p)
                    exists = hub.repo_dir(repo_id).exists()
                    hub.repo_dir(repo_id).mkdir(parents=True, exist_ok=True)
                    self._json({"url": f"{hub.url}/{repo_id}", "name": repo_id}, 409 if exists else 200)
                elif path == "/api/validate-yaml":
                    self._validate_yaml(json.loads(body)["content"])
                elif "/preupload/" in path:
                    files = json.loads(body)["files"]
                    self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                          for f in files]})
                elif "/commit/" in path and hub.refuse_commits:
                    self._json({"error": "Internal Error"}, 500)
                elif "/commit/" in path:
                    repo_id = path.removeprefix("/api/models/").split("/commit/")[0]
                    self._commit(repo_id, body)
                else:
                    self._not_found(f"POST {path} is not served here")

            def _validate_yaml(self, content):
                # The Hub rejects a README whose YAML header does not parse to a mapping.
                header = content.split("---")[1] if content.startswith("---") else ""
                try:
                    metadata = yaml.safe_load(header)
                except yaml.YAMLError as error:
                    return self._json({"errors": [{"message": str(error)}]}, 400)
                if not isinstance(metadata, dict):
                    return self._json({"errors": [{"message": "metadata is not a mapping"}]}, 400)
                hub.card_metadata = metadata
                self._json({"errors": [], "warnings": []})

            def _commit(self, repo_id, body):
                digest = hashlib.sha1(body)
                for line in body.decode().splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        value = item["value"]
                        target = hub.repo_dir(repo_id) / value["path"]
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(base64.b64decode(value["content"]))
                    elif item["key"] == "deletedFile":
                        (hub.repo_dir(repo_id) / item["value"]["path"]).unlink(missing_ok=True)
                oid = digest.hexdigest()
                hub.commits.setdefault(repo_id, []).append(oid)
                self._json({"success": True, "commitOid": oid, "commitUrl": f"{hub.url}/{repo_id}/commit/{oid}"})

            def _resolve(self, send_body):
                path = unquote(urlparse(self.path).path).lstrip("/")
                hub.requests.append(("GET" if send_body else "HEAD", "/" + path))
                if path == "api/whoami-v2":
                    return self._whoami()
                if "/resolve/" not in path:
                    return self._repo_info(path, send_body)
                repo_id, rest = path.split("/resolve/", 1)
                filename = rest.split("/", 1)[1]
                file = hub.repo_dir(repo_id) / filename
                if not file.is_file():
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = file.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
                self.send_header("X-Repo-Commit", hub.revision(repo_id))
                self.end_headers()
                if send_body:
                    self.wfile.write(data)

            def _whoami(self):
                token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                if token not in hub.tokens:
                    return self._json({"error": "Invalid credentials in Authorization header"}, 401)
                self._json({"type": "user", "name": hub.user, "orgs": [],
                            "auth": {"type": "access_token", "accessToken": {"role": hub.tokens[token]}}})

            def _repo_info(self, path, send_body):
                # GET /api/models/{repo_id}[/revision/{rev}]: what `model_info` / `repo_info` read.
                if not path.startswith("api/models/"):
                    return self._not_found(f"{path} is not served here")
                repo_id = path.removeprefix("api/models/").split("/revision/")[0]
                folder = hub.repo_dir(repo_id)
                if not folder.is_dir():
                    self._json({"error": "Repository not found"}, 404, {"X-Error-Code": "RepoNotFound"})
                    return
                siblings = [{"rfilename": str(p.relative_to(folder))} for p in sorted(folder.rglob("*")) if p.is_file()]
                self._json({"id": repo_id, "modelId": repo_id, "sha": hub.revision(repo_id), "siblings": siblings,
                            "private": False, "tags": []})

            def do_HEAD(self):
                self._resolve(send_body=False)

            def do_GET(self):
                self._resolve(send_body=True)

        return Handler
