"""The voice benchmarks' own code against the real server, one short trial each (what they
measure is printed by the scripts; here only that they run and count what they should)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow
sys.path.insert(0, str(REPO_ROOT / "bench"))


def test_echo_trial_counts_barge_ins(mm_server: Any) -> None:
    import echo
    from voice_common import espeak

    quiet = asyncio.run(echo.trial(mm_server.ws_url, 150, -12, None, 0, seed=1))
    assert quiet["false_barge_ins"] == 0 and quiet["reply_played_s"] > 2, quiet
    person = asyncio.run(echo.trial(mm_server.ws_url, 150, -6, espeak("Excuse me, I have a question."), 0, seed=2))
    assert person["barged_in"] and person["false_barge_ins"] == 0, person


def test_voice_latency_run_measures_both(mm_server: Any) -> None:
    import voice_latency
    from voice_common import espeak

    voices = [espeak("Where can I find the batteries?")]
    r = asyncio.run(voice_latency.run(mm_server.ws_url, 1, 1, voices, True))
    assert r["errors"] == [] and len(r["raw"]["audio"]) == 1 and len(r["raw"]["text"]) == 1, r
    assert r["raw"]["audio"][0] >= r["raw"]["text"][0] > 0, r
