"""A circuit breaker per data source: stop calling a server that fails most of its calls.

The rules (pure; time comes from an injected clock, so tests never wait):

- **Closed**: calls go through. The outcomes of the last ``window`` (100) calls are kept;
  when more than ``threshold`` (50%) of them failed, and at least ``min_calls`` (10) were
  made since the breaker last closed, it opens. The minimum keeps a source's first unlucky
  call or two from shutting it out for ``open_s``.
- **Open**: calls fail fast, without reaching the server, for ``open_s`` (30 s).
- **Half open**: after that, exactly one call (the probe) is let through; other calls still
  fail fast. The probe's success closes the breaker with a fresh window; its failure opens
  it again for another ``open_s``. A probe that ends without an outcome (cancelled) lets the
  next call probe instead.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    """See the module docstring.

    Args:
        window: How many recent calls are judged.
        threshold: The failing fraction above which the breaker opens.
        min_calls: The fewest calls in the window before the breaker may open.
        open_s: How long the breaker stays open before a probe is let through.
        clock: Monotonic time in seconds.
    """

    def __init__(self, *, window: int = 100, threshold: float = 0.5, min_calls: int = 10, open_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if window < 1 or not 0 <= threshold < 1 or not 1 <= min_calls <= window or open_s < 0:
            raise ValueError("need window >= 1, 0 <= threshold < 1, 1 <= min_calls <= window, open_s >= 0")
        self.window, self.threshold, self.min_calls, self.open_s = window, threshold, min_calls, open_s
        self.clock = clock
        self._outcomes: deque[bool] = deque(maxlen=window)  # True: failed
        self._failures = 0
        self._state = CLOSED
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open`` (open with its period over counts as half open)."""
        if self._state == OPEN and self.clock() - self._opened_at >= self.open_s:  # type: ignore[operator]
            return HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """Whether a call may go now; when it may, its outcome must be given to :meth:`record`
        (or :meth:`abandon` if it never got one)."""
        state = self.state
        if state == CLOSED:
            return True
        if state == HALF_OPEN and not self._probing:
            self._state, self._probing = HALF_OPEN, True
            return True
        return False

    def record(self, ok: bool) -> None:
        """The outcome of a call :meth:`allow` let through."""
        if self._state == HALF_OPEN:
            self._probing = False
            if ok:
                self._close()
            else:
                self._open()
            return
        if self._state == OPEN:  # a call let through before the breaker opened: it changes nothing now
            return
        if len(self._outcomes) == self.window:
            self._failures -= self._outcomes[0]
        self._outcomes.append(not ok)
        self._failures += not ok
        if len(self._outcomes) >= self.min_calls and self._failures > self.threshold * len(self._outcomes):
            self._open()

    def abandon(self) -> None:
        """A call let through ended without an outcome (cancelled): a probe's turn passes to the next call."""
        if self._state == HALF_OPEN:
            self._probing = False

    def snapshot(self) -> dict:
        """``{"state", "failures", "calls", "opened_at"}`` for status, events and metrics."""
        return {"state": self.state, "failures": self._failures, "calls": len(self._outcomes),
                "opened_at": self._opened_at}

    def _open(self) -> None:
        self._state, self._opened_at = OPEN, self.clock()

    def _close(self) -> None:
        self._state, self._opened_at = CLOSED, None
        self._outcomes.clear()
        self._failures = 0
