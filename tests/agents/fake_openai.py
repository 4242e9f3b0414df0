"""A real OpenAI-compatible HTTP server for tests: scripted chat completions, 429s and 5xx on demand.

It listens on 127.0.0.1 (a free port) in a thread, answers ``POST /v1/chat/completions``
(and, for google-genai clients, any other POST path) with the next scripted reply,
and records every request (path, headers, JSON body) so tests can count attempts and
check what reached the wire.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One scripted answer: an HTTP status, headers and a JSON body."""

    status: int
    body: dict
    headers: dict[str, str] = field(default_factory=dict)


def text(content: str, *, tokens: int = 15) -> Reply:
    """A final assistant message."""
    return _completion({"role": "assistant", "content": content}, "stop", tokens)


def tool_call(name: str, arguments: dict, *, call_id: str = "call_1", tokens: int = 20) -> Reply:
    """An assistant message calling one function with JSON arguments."""
    message = {"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}]}
    return _completion(message, "tool_calls", tokens)


def error(status: int, *, retry_after: str | None = None, message: str | None = None) -> Reply:
    """An error answer (429 with ``Retry-After`` when given, 500, 503 ...)."""
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    kind = "rate_limit_exceeded" if status == 429 else "server_error"
    return Reply(status, {"error": {"message": message or f"scripted {status}", "type": kind, "code": status,
                                    "status": "RESOURCE_EXHAUSTED" if status == 429 else "UNAVAILABLE"}}, headers)


def gemini_text(content: str, *, tokens: int = 5) -> Reply:
    """A google-genai ``generateContent`` answer (for ``gemini-…`` models pointed here by base_url)."""
    return Reply(200, {"candidates": [{"content": {"role": "model", "parts": [{"text": content}]},
                                       "finishReason": "STOP", "index": 0}],
                       "usageMetadata": {"promptTokenCount": tokens - 2, "candidatesTokenCount": 2,
                                         "totalTokenCount": tokens}})


def _completion(message: dict, finish: str, tokens: int) -> Reply:
    return Reply(200, {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": "fake",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": tokens - 5, "completion_tokens": 5, "total_tokens": tokens},
    })


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any


class FakeOpenAI:
    """The server's state: the script still to answer and what was asked so far."""

    def __init__(self) -> None:
        self.script: list[Reply] = []
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self.url = ""   # the OpenAI-style base URL (…/v1)
        self.root = ""  # the server's root (google-genai adds its own version path)

    def push(self, *replies: Reply) -> None:
        with self._lock:
            self.script.extend(replies)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def _next(self, recorded: Recorded) -> Reply:
        with self._lock:
            self.requests.append(recorded)
            if not self.script:  # loud: a test asked for more than it scripted
                return Reply(500, {"error": {"message": "fake server: script exhausted", "code": 500}})
            return self.script.pop(0)


@contextmanager
def serve() -> Iterator[FakeOpenAI]:
    """Run a fake server for the duration of the ``with`` block; ``.url`` is its ``/v1`` base URL."""
    state = FakeOpenAI()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                body = raw.decode("utf-8", "replace")
            reply = state._next(Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            data = json.dumps(reply.body).encode()
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in reply.headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="fake-openai", daemon=True)
    thread.start()
    state.root = f"http://127.0.0.1:{server.server_address[1]}"
    state.url = f"{state.root}/v1"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
