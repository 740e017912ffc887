"""A fault-injecting HTTP proxy for an S3 endpoint on localhost.

Clients set ``AWS_ENDPOINT_URL`` to the proxy. Each request, chosen by a seeded
random draw, is either forwarded, delayed and then forwarded, answered with
``503 SlowDown`` (as S3 does when throttling), or dropped: the connection is
closed with no response, either before the request reaches the store or after
it was carried out there (the nasty case, where a retry repeats a done write).
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")
ACCESS_DENIED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
                 b"<Message>Access Denied</Message></Error>")


@dataclass
class Faults:
    slow_down: float = 0.0      # share of requests answered 503 SlowDown
    drop_before: float = 0.0    # share dropped before reaching the store
    drop_after: float = 0.0     # share carried out by the store, then dropped
    delay: float = 0.0          # share delayed by up to max_delay seconds
    max_delay: float = 0.5
    only: str = ""              # faults only for requests whose "METHOD /path" contains this
    limit: int = -1             # at most this many faults in all (-1: no limit)
    deny: str = ""              # requests whose "METHOD /path" contains this are answered 403 AccessDenied


class FaultProxy:
    def __init__(self, upstream: str, faults: Faults, seed: int = 0):
        self.upstream = urlparse(upstream)
        self.faults = faults
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.counts = {"requests": 0, "slow_down": 0, "drop_before": 0, "drop_after": 0, "delay": 0, "deny": 0}
        self.seen: list[tuple[str, str]] = []  # ("METHOD /path", fate) of every request
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FaultProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _draw(self, request: str) -> str:
        fate = self._fate(request)
        with self.lock:
            self.seen.append((request, fate))
        return fate

    def _fate(self, request: str) -> str:
        f = self.faults
        with self.lock:
            self.counts["requests"] += 1
            x = self.random.random()
            if f.deny and f.deny in request:
                self.counts["deny"] += 1
                return "deny"
            faults = sum(v for k, v in self.counts.items() if k != "requests")
            if f.only not in request or (f.limit >= 0 and faults >= f.limit):
                return "forward"
            for name, share in (("slow_down", f.slow_down), ("drop_before", f.drop_before),
                                ("drop_after", f.drop_after), ("delay", f.delay)):
                if x < share:
                    self.counts[name] += 1
                    return name
                x -= share
        return "forward"

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fate = proxy._draw(f"{self.command} {self.path}")
                if fate in ("slow_down", "deny"):
                    status, answer = (503, SLOW_DOWN) if fate == "slow_down" else (403, ACCESS_DENIED)
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                    return
                if fate == "drop_before":
                    self.close_connection = True
                    return
                if fate == "delay":
                    time.sleep(proxy.random.uniform(0, proxy.faults.max_delay))
                upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                upstream.close()
                if fate == "drop_after":
                    self.close_connection = True
                    return
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in HOP_BY_HOP | {"content-length"}:
                        self.send_header(key, value)
                # A HEAD answer has no body but reports the object's length.
                length = response.getheader("Content-Length", "0") if self.command == "HEAD" else len(data)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve

        return Handler
