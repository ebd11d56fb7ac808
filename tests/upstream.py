"""A protected app for proxy tests: answers every request with what it received, and keeps
the requests, so a test can tell whether a denied request ever reached it."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Upstream:
    """The protected app: answers every request with what it received."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                upstream.seen.append({"path": self.path, **dict(self.headers.items())})
                body = json.dumps(
                    {
                        "path": self.path,
                        "user": self.headers.get("X-Auth-Request-User"),
                        "decision": self.headers.get("X-Trustplane-Decision-Id"),
                    }
                ).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
