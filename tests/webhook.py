"""A webhook receiver for the notifier's tests and drills: Python's own HTTP server in a thread."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Webhook:
    """A real HTTP server in a thread; fails the first ``fail_first`` requests with HTTP 500."""

    def __init__(self, fail_first: int = 0, always_fail: bool = False) -> None:
        self.requests: list[dict] = []
        self.delivered: list[dict] = []
        self.fail_first, self.always_fail = fail_first, always_fail
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.requests.append({"body": body, "key": self.headers.get("Idempotency-Key")})
                if hook.always_fail or len(hook.requests) <= hook.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                hook.delivered.append({"body": body, "key": self.headers.get("Idempotency-Key")})
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Webhook":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
