"""Rate limits of one session: token buckets and an error budget (docs/protocol.md, "Limits")."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class TokenBucket:
    """``rate`` units per second, at most ``burst`` saved up; ``take(n)`` is all-or-nothing."""

    def __init__(self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, max(burst, 0.0), clock
        self.tokens = self.burst
        self.stamp = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def can_take(self, amount: float) -> bool:
        """Whether ``take(amount)`` would succeed now (takes nothing)."""
        self._refill()
        return amount <= self.tokens + 1e-9

    def take(self, amount: float) -> bool:
        self._refill()
        if amount > self.tokens + 1e-9:
            return False
        self.tokens -= amount
        return True


class ErrorBudget:
    """At most ``limit`` errors within any ``window_s`` seconds; ``allow()`` records one."""

    def __init__(self, limit: int, window_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self.clock = limit, window_s, clock
        self.times: deque[float] = deque()

    def allow(self) -> bool:
        now = self.clock()
        self.times.append(now)
        while self.times and self.times[0] < now - self.window:
            self.times.popleft()
        return len(self.times) <= self.limit
