"""One chat prompt in, n texts out: the `openai` client plus our own retry policy.

The client's built-in retries are switched off (``max_retries=0``) because they do not
retry what matters here: a 200 answer with broken JSON or empty text is as useless as
a 500, and deserves the same backoff. Every error text that leaves this module has the
API key masked, since OpenAI-compatible servers sometimes echo it back.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

import openai

# Status codes worth waiting for; any other HTTP error (401, 400, 404) will not heal by retrying.
_RETRYABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))
_MAX_REASON_CHARS = 300
# A class description is a few sentences; an answer this long is a runaway generation
# (or a prompt echoed back), and embedding it would swamp the class name.
MAX_ANSWER_CHARS = 4000


class LLMCallError(RuntimeError):
    """A request failed for good; the message says why and never contains the key."""


class LLMCallAbandoned(LLMCallError):
    """A call given up while waiting to retry, because `ChatLLM.stop` was called."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter; `max_retries` counts retries after the first attempt."""

    max_retries: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0

    def delay(self, retry: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait before retry number `retry` (0-based); a server's Retry-After wins."""
        if retry_after_s is not None:
            return min(retry_after_s, self.max_backoff_s)
        return min(self.backoff_s * 2**retry, self.max_backoff_s) * random.uniform(0.5, 1.0)


class _Retryable(Exception):
    """An attempt failed in a way that another attempt may fix."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class ChatLLM:
    """A thread-safe chat-completions caller for one (model, temperature) pair."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None,
        model: str,
        temperature: float,
        timeout_s: float,
        retry: RetryPolicy,
    ) -> None:
        self._key = api_key
        self._model = model
        self._temperature = temperature
        self._timeout_s = timeout_s
        self._retry = retry
        self._stop = threading.Event()
        # base_url=None lets the client apply its own convention (OPENAI_BASE_URL).
        self._client = openai.OpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=0
        )

    def __enter__(self) -> ChatLLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()

    def stop(self) -> None:
        """Make calls still waiting out a backoff give up at once (another class failed for good)."""
        self._stop.set()

    def complete(self, prompt: str, n: int = 1) -> list[str]:
        """Return `n` non-empty answers to `prompt`.

        Asks for all `n` in one request; servers that ignore the `n` parameter get
        asked again for the remainder, so the result is always exactly `n` texts.
        """
        texts: list[str] = []
        while len(texts) < n:
            texts += self._request_with_retries(prompt, n - len(texts))
        return texts[:n]

    def _request_with_retries(self, prompt: str, n: int) -> list[str]:
        for retry in range(self._retry.max_retries + 1):
            try:
                return self._request(prompt, n)
            except _Retryable as failure:
                reason = failure.reason
                if retry == self._retry.max_retries:
                    break
                if self._stop.wait(self._retry.delay(retry, failure.retry_after_s)):
                    raise LLMCallAbandoned(f"abandoned after {reason}") from None
        attempts = self._retry.max_retries + 1
        raise LLMCallError(f"{reason} (gave up after {attempts} attempts)") from None

    def _request(self, prompt: str, n: int) -> list[str]:
        """One HTTP request; raise `_Retryable` for transient trouble, `LLMCallError` for the rest."""
        try:
            completion = self._client.chat.completions.create(
                model=self._model,
                messages=[{"role": "user", "content": prompt}],
                temperature=self._temperature,
                # Sent only when needed: some OpenAI-compatible servers reject `n`.
                **({"n": n} if n > 1 else {}),
            )
        except openai.APITimeoutError:
            raise _Retryable(f"no answer within {self._timeout_s:g} s") from None
        except openai.APIConnectionError as exc:
            raise _Retryable(f"connection error: {self._mask(str(exc))}") from None
        except openai.APIStatusError as exc:
            reason = f"HTTP {exc.status_code}: {self._mask(str(exc.message))}"
            if exc.status_code in _RETRYABLE_STATUS:
                raise _Retryable(reason, _retry_after_s(exc.response.headers.get("retry-after"))) from None
            raise LLMCallError(reason) from None
        except (openai.APIResponseValidationError, ValueError) as exc:
            raise _Retryable(f"malformed answer: {self._mask(str(exc))}") from None
        contents = [getattr(getattr(c, "message", None), "content", None) for c in getattr(completion, "choices", None) or []]
        if any(c is not None and not isinstance(c, str) for c in contents):
            kind = next(type(c).__name__ for c in contents if c is not None and not isinstance(c, str))
            raise _Retryable(f"answer is not text (content is {kind})")
        texts = [text for text in map(_collapse, contents) if text]
        if not texts:
            raise _Retryable("empty answer")
        longest = max(map(len, texts))
        if longest > MAX_ANSWER_CHARS:
            raise _Retryable(f"answer too long ({longest} characters, at most {MAX_ANSWER_CHARS})")
        return texts

    def _mask(self, text: str) -> str:
        if self._key:
            text = text.replace(self._key, "***")
        return text[:_MAX_REASON_CHARS]


def _collapse(content: str | None) -> str:
    """An answer's text with whitespace collapsed, or "" when it has none."""
    return " ".join(content.split()) if content else ""


def _retry_after_s(header: str | None) -> float | None:
    """Retry-After in seconds when the server sent a number (the HTTP-date form is ignored)."""
    try:
        return max(float(header), 0.0) if header is not None else None
    except ValueError:
        return None
