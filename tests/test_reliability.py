"""The fast part of bench/reliability.py: 500 fuzzed messages against a real server."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT, start_server

pytestmark = pytest.mark.slow


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_reliability", Path(REPO_ROOT) / "bench" / "reliability.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_500_fuzzed_messages() -> None:
    """0 closes with 1011, 0 messages with reprs/paths/tracebacks, every error code documented,
    and the server still answers afterwards."""
    bench = _bench()
    srv = start_server(limits={"max_errors_per_10s": 1_000_000}, pipeline={"max_output_tokens": 4})
    try:
        stats = asyncio.run(bench.fuzz(srv.ws_url, 500, seed=7, connections=2))  # type: ignore[attr-defined]
        assert stats["sent"] == 500
        assert stats["closes_1011"] == 0, stats["closes"]
        assert stats["leak_count"] == 0, stats["leaks"]
        assert stats["undocumented"] == [], stats["undocumented"]
        assert stats["errors"] >= 400, stats["codes"]   # nearly every message is refused with a code
        assert set(stats["closes"]) <= {"1000"}, stats["closes"]
    finally:
        srv.stop()  # type: ignore[attr-defined]
