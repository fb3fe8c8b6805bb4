"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests: POST /v1/chat/completions.

It answers deterministically from the prompt, records every request, and can be
told to misbehave: `script(...)` queues failure modes for the next requests (any
prompt), `fail_matching(text, mode)` fails every request whose prompt contains
`text` until `clear_failures()`.

Modes: "slow" (answers after `slow_s`, longer than a test client's timeout), "429",
"500", "garbage" (200 with a body that is not JSON), "wrong_shape" (JSON with no
choices), "empty" (a choice with empty content), "long" (an answer of LONG_ANSWER_CHARS
characters), "not_text" (content that is a JSON number, not a string), "401" (echoes the
bearer token in the error text, as some servers do, to check that clients mask it).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODES = ("slow", "429", "500", "garbage", "wrong_shape", "empty", "long", "not_text", "401")
LONG_ANSWER_CHARS = 20_000


@dataclass(frozen=True)
class RecordedRequest:
    prompt: str
    model: str
    n: int
    temperature: float | None
    authorization: str


def answer_text(prompt: str, index: int = 0) -> str:
    """The deterministic reply to `prompt`, so tests can predict descriptions."""
    last_line = prompt.strip().splitlines()[-1]
    return f"Answer {index} about {last_line} with {len(prompt)} prompt chars."


class FakeLLMServer:
    """Start with `with FakeLLMServer() as server:`; point clients at `server.base_url`."""

    def __init__(self, slow_s: float = 2.0, answer_delay_s: float = 0.0, honour_n: bool = True) -> None:
        self.slow_s = slow_s
        self.answer_delay_s = answer_delay_s  # every answer waits this long (to observe concurrency)
        self.honour_n = honour_n  # False: one choice whatever `n` asks, as some servers do
        self.requests: list[RecordedRequest] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._script: deque[str] = deque()
        self._rules: dict[str, str] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.fake = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def prompts(self) -> list[str]:
        return [request.prompt for request in self.requests]

    def script(self, *modes: str) -> None:
        """The next len(modes) requests fail in these ways, in order; later ones answer normally."""
        unknown = set(modes) - set(MODES)
        if unknown:
            raise ValueError(f"unknown failure modes {sorted(unknown)}; known: {MODES}")
        with self._lock:
            self._script.extend(modes)

    def fail_matching(self, text: str, mode: str) -> None:
        """Every request whose prompt contains `text` fails with `mode` ("" matches all)."""
        if mode not in MODES:
            raise ValueError(f"unknown failure mode {mode!r}; known: {MODES}")
        with self._lock:
            self._rules[text] = mode

    def clear_failures(self) -> None:
        with self._lock:
            self._script.clear()
            self._rules.clear()

    def wait_quiet(self, quiet_s: float = 0.5, timeout_s: float = 30.0) -> None:
        """Return once no request is being answered and none has arrived for `quiet_s`: the
        requests a killed client had sent are then all recorded, so a later count is only
        the next client's."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                seen, busy = len(self.requests), self._in_flight
            time.sleep(quiet_s)
            with self._lock:
                if not busy and not self._in_flight and len(self.requests) == seen:
                    return
        raise TimeoutError(f"the fake LLM server did not go quiet within {timeout_s} s")

    def __enter__(self) -> FakeLLMServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()  # wakes "slow" handlers so they do not outlive the test
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def _begin(self, body: dict[str, Any], authorization: str) -> str | None:
        """Record one request and decide its failure mode (None: answer normally)."""
        prompt = _prompt_of(body)
        with self._lock:
            self.requests.append(
                RecordedRequest(prompt, body.get("model", ""), int(body.get("n", 1)), body.get("temperature"), authorization)
            )
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            if self._script:
                return self._script.popleft()
            return next((mode for text, mode in self._rules.items() if text in prompt), None)

    def _end(self) -> None:
        with self._lock:
            self._in_flight -= 1


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches on
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        fake: FakeLLMServer = self.server.fake  # type: ignore[attr-defined]
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        authorization = self.headers.get("Authorization", "")
        mode = fake._begin(body, authorization)
        try:
            self._respond(fake, mode, body, authorization)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout): exactly what "slow" is for
        finally:
            fake._end()

    def _respond(self, fake: FakeLLMServer, mode: str | None, body: dict[str, Any], authorization: str) -> None:
        if mode == "429":
            self._send(429, {"error": {"message": "Rate limit reached", "type": "rate_limit_exceeded"}})
        elif mode == "500":
            self._send(500, {"error": {"message": "The server had an error", "type": "server_error"}})
        elif mode == "401":
            token = authorization.removeprefix("Bearer ")
            self._send(401, {"error": {"message": f"Incorrect API key provided: {token}", "type": "invalid_request_error"}})
        elif mode == "garbage":
            self._send_raw(200, b'{"id": "chatcmpl-fake", "choices": [ this is not json')
        elif mode == "wrong_shape":
            self._send(200, {"unexpected": True})
        else:
            fake._closing.wait(fake.slow_s if mode == "slow" else fake.answer_delay_s)
            special = {"empty": "", "long": "word " * (LONG_ANSWER_CHARS // 5), "not_text": 12345}
            texts = [
                special[mode] if mode in special else answer_text(_prompt_of(body), index)
                for index in range(int(body.get("n", 1)) if fake.honour_n else 1)
            ]
            self._send(200, _completion(body.get("model", ""), texts))

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        self._send_raw(status, json.dumps(payload).encode())

    def _send_raw(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Silence per-request lines on stderr."""


def _prompt_of(body: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content", "")) for m in body.get("messages", []))


def _completion(model: str, texts: list[Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            for i, text in enumerate(texts)
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
