"""A tiny Prometheus text-format registry: counters, gauges and histograms with labels.

Thread-safe (model worker threads observe batch sizes); rendering follows the text exposition
format 0.0.4 served at ``/metrics``.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)

LabelKey = tuple[tuple[str, str], ...]


def _labels(key: LabelKey, extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in key]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_: str) -> None:
        self.name, self.help = name, help_
        self._lock = threading.Lock()

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_: str) -> None:
        super().__init__(name, help_)
        self._values: dict[LabelKey, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> Iterable[str]:
        yield from super().render()
        with self._lock:
            items = sorted(self._values.items())
        for key, v in items:
            yield f"{self.name}{_labels(key)} {v:g}"


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        with self._lock:
            self._values[tuple(sorted(labels.items()))] = value


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_: str, buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        super().__init__(name, help_)
        self.buckets = tuple(sorted(buckets))
        self._data: dict[LabelKey, tuple[list[int], list[float]]] = {}  # counts per bucket (+inf), [sum]

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            counts, total = self._data.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
            counts[bisect.bisect_left(self.buckets, value)] += 1
            total[0] += value

    def count(self, **labels: str) -> int:
        d = self._data.get(tuple(sorted(labels.items())))
        return sum(d[0]) if d else 0

    def render(self) -> Iterable[str]:
        yield from super().render()
        with self._lock:
            items = sorted((k, (list(c), s[0])) for k, (c, s) in self._data.items())
        for key, (counts, total) in items:
            acc = 0
            for bound, c in zip(self.buckets, counts, strict=False):
                acc += c
                le = f'le="{bound:g}"'
                yield f"{self.name}_bucket{_labels(key, le)} {acc}"
            acc += counts[-1]
            inf = 'le="+Inf"'
            yield f"{self.name}_bucket{_labels(key, inf)} {acc}"
            yield f"{self.name}_sum{_labels(key)} {total:g}"
            yield f"{self.name}_count{_labels(key)} {acc}"


class Metrics:
    """The server's metrics, one instance per server."""

    def __init__(self) -> None:
        self.sessions_open = Gauge("mmagent_sessions_open", "WebSocket sessions currently open.")
        self.sessions_total = Counter("mmagent_sessions_total", "Sessions accepted since start.")
        self.turns = Counter("mmagent_turns_total", "Responses finished, by status.")
        self.errors = Counter("mmagent_errors_total", "Error events sent to clients, by code.")
        self.preemptive = Counter("mmagent_preemptive_responses_total",
                                  "Responses started at a pause in speech, by outcome (released, discarded).")
        self.slow_clients = Counter("mmagent_slow_clients_dropped_total",
                                    "Clients dropped because they stopped reading (close 4410).")
        self.turns_waiting = Gauge("mmagent_turns_waiting",
                                   "Turns between their end of input and their first reply delta, all sessions.")
        self.turns_shed = Counter("mmagent_turns_shed_total",
                                  "Turns refused with server_busy (admission control), by reason.")
        self.stage = Histogram("mmagent_stage_seconds", "Latency of each pipeline stage in seconds.")
        self.batch = Histogram("mmagent_batch_size", "Calls served per model forward pass.", BATCH_BUCKETS)
        self.sessions_open.set(0)
        self.turns_waiting.set(0)
        self.first_delta_s = 1.0   # moving average of end of input → first delta (the retry hint)

    def note_first_delta(self, seconds: float) -> None:
        self.first_delta_s += 0.2 * (seconds - self.first_delta_s)

    def render(self) -> str:
        lines: list[str] = []
        for m in (self.sessions_open, self.sessions_total, self.turns, self.errors, self.slow_clients,
                  self.turns_waiting, self.turns_shed, self.stage, self.batch):
            lines.extend(m.render())
        return "\n".join(lines) + "\n"
