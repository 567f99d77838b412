"""Continuous batching of the local model (``responder.local.batching``): concurrent replies are
decoded together, one token per step, and give the same greedy text as a reply alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from agent.responders import CancelToken

SYSTEM = {"role": "system", "content": "You are a helpful shop assistant. Answer briefly."}
QUESTIONS = ["where is the service desk?", "what are your opening hours?", "do you take credit cards?",
             "can I return something without a receipt?"]
MAX_NEW = 20  # keeps the runtime small; long enough for several deltas per reply


def messages(q: str) -> list[dict[str, str]]:
    return [SYSTEM, {"role": "user", "content": q}]


@pytest.fixture(scope="module")
def local_llm() -> Iterator[Any]:
    """The default model with float weights: these tests check that the scheduler is exact (a reply
    batched = the same reply alone, token for token), which holds for float arithmetic; int8
    dynamic quantization (the CPU default) scales activations over the whole batch, by design."""
    from agent.config import LocalLLMConfig
    from agent.responders import LocalLLM

    llm = LocalLLM(LocalLLMConfig(quantize=None))
    llm.load()
    yield llm


@contextmanager
def settings(llm: Any, **values: Any) -> Iterator[None]:
    old = {k: getattr(llm.config, k) for k in values}
    for k, v in values.items():
        setattr(llm.config, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(llm.config, k, v)


class Stream:
    """One reply generated in a thread, its deltas time-stamped."""

    def __init__(self, llm: Any, q: str, cancel_after: int | None = None) -> None:
        self.llm, self.q, self.cancel_after = llm, q, cancel_after
        self.cancel = CancelToken()
        self.deltas: list[tuple[float, str]] = []
        self.stats: dict[str, float] = {}
        self.text = ""
        self.t_done = 0.0
        self.thread = threading.Thread(target=self._run)

    def _on_text(self, piece: str) -> None:
        self.deltas.append((time.perf_counter(), piece))
        if self.cancel_after is not None and len(self.deltas) >= self.cancel_after:
            self.cancel.set()

    def _run(self) -> None:
        self.text = self.llm.generate(messages(self.q), self._on_text, self.cancel, self.stats, static_messages=1)
        self.t_done = time.perf_counter()


def run_all(streams: list[Stream]) -> None:
    for s in streams:
        s.thread.start()
    for s in streams:
        s.thread.join(timeout=120)
        assert not s.thread.is_alive(), f"{s.q!r} did not finish"


def alone(llm: Any, q: str, *, batching: bool) -> str:
    with settings(llm, batching=batching, max_new_tokens=MAX_NEW):
        s = Stream(llm, q)
        run_all([s])
    assert "".join(p for _, p in s.deltas) == s.text
    return s.text


@pytest.fixture(scope="module")
def serial(local_llm: Any) -> dict[str, str]:
    """Each question's greedy reply alone through ``model.generate`` (``batching=False``)."""
    return {q: alone(local_llm, q, batching=False) for q in QUESTIONS}


def test_batched_alone_is_token_identical_to_serial(local_llm: Any, serial: dict[str, str]) -> None:
    """Greedy: a reply through the scheduler alone is the same text as ``model.generate``."""
    assert {q: alone(local_llm, q, batching=True) for q in QUESTIONS} == serial


def test_concurrent_replies_match_alone_and_interleave(local_llm: Any, serial: dict[str, str]) -> None:
    """4 concurrent replies are each identical to the same reply alone, stream interleaved (every
    first delta before any reply finishes) and are decoded in one batch."""
    with settings(local_llm, batching=True, max_new_tokens=MAX_NEW):
        streams = [Stream(local_llm, q) for q in QUESTIONS]
        run_all(streams)
    for s in streams:
        assert s.text == serial[s.q], (s.q, s.text, serial[s.q])
        assert len(s.deltas) >= 3, s.deltas
        assert "".join(p for _, p in s.deltas) == s.text
    first_done = min(s.t_done for s in streams)
    assert all(s.deltas[0][0] < first_done for s in streams)
    assert max(s.stats["batch_size_max"] for s in streams) >= 3, [s.stats for s in streams]


def test_cancelling_one_stream_leaves_the_others_alone(local_llm: Any, serial: dict[str, str]) -> None:
    """One of 4 concurrent replies is cancelled after its second delta: it stops within one step,
    the other three complete with the text they have alone."""
    expected = serial
    with settings(local_llm, batching=True, max_new_tokens=MAX_NEW):
        victim = Stream(local_llm, QUESTIONS[0], cancel_after=2)
        others = [Stream(local_llm, q) for q in QUESTIONS[1:]]
        run_all([victim, *others])
    assert victim.cancel.is_set()
    assert victim.stats["tokens_after_cancel"] <= 1, victim.stats
    assert victim.stats["generated_tokens"] < MAX_NEW, victim.stats
    for s in others:
        assert s.text == expected[s.q], (s.q, s.text, expected[s.q])


def test_batch_size_is_capped_and_cancel_while_queued(local_llm: Any) -> None:
    """``max_batch`` bounds the batch (the rest wait in the queue); a reply cancelled before it
    starts returns at once with nothing generated."""
    with settings(local_llm, batching=True, max_new_tokens=6, max_batch=2):
        streams = [Stream(local_llm, q) for q in QUESTIONS[:3]]
        run_all(streams)
        assert all(s.stats["batch_size_max"] <= 2 for s in streams), [s.stats for s in streams]
        assert all(s.text for s in streams)
        early = Stream(local_llm, QUESTIONS[0])
        early.cancel.set()
        run_all([early])
        assert early.text == "" and "generated_tokens" not in early.stats


def test_prompt_cache_reuses_the_longest_shared_prefix(local_llm: Any, serial: dict[str, str]) -> None:
    """A prompt starts from the KV cache of the longest prefix it shares with a recent prompt:
    the same prompt again runs one token; the text is the same greedy reply as without caches."""
    q = QUESTIONS[1]
    with settings(local_llm, batching=True, max_new_tokens=MAX_NEW):
        first = Stream(local_llm, q)
        run_all([first])
        again = Stream(local_llm, q)
        run_all([again])
        other = Stream(local_llm, QUESTIONS[2])   # shares the system message and the user header
        run_all([other])
    total = again.stats["prompt_tokens"]
    assert again.stats["cached_prompt_tokens"] == total - 1
    assert again.text == first.text == serial[q]
    system_len = local_llm.encode_chat([SYSTEM], add_generation_prompt=False).shape[1]
    assert system_len < other.stats["cached_prompt_tokens"] < other.stats["prompt_tokens"]
    assert other.text == serial[QUESTIONS[2]]
    with settings(local_llm, batching=True, max_new_tokens=MAX_NEW, prompt_cache_entries=0):
        local_llm.clear_prompt_cache()
        plain = Stream(local_llm, q)
        run_all([plain])
    assert plain.stats["cached_prompt_tokens"] == system_len and plain.text == serial[q]


@pytest.mark.parametrize("prompt_cache", [0, 8])
def test_replies_arriving_together_are_prefilled_in_one_pass(local_llm: Any, serial: dict[str, str],
                                                            prompt_cache: int) -> None:
    """Replies queued while the model is busy are prefilled together in one forward pass (rows
    padded and masked; with the prompt cache, rows start from cached prefixes of different
    lengths); each still gets exactly its greedy reply alone."""
    qs = QUESTIONS[1:4] if not prompt_cache else [QUESTIONS[0], QUESTIONS[1], QUESTIONS[2]]
    with settings(local_llm, batching=True, max_new_tokens=MAX_NEW, prompt_cache_entries=prompt_cache,
                  group_prefill=True):
        local_llm.clear_prompt_cache()
        first = Stream(local_llm, QUESTIONS[0])
        rest = [Stream(local_llm, q) for q in qs]
        with local_llm._gen_lock:          # the scheduler takes the first reply, then waits for the lock
            first.thread.start()
            deadline = time.time() + 30
            while local_llm._batcher is None or local_llm._batcher.pending or first.stats.get("prompt_tokens") is None:
                assert time.time() < deadline
                time.sleep(0.01)
            time.sleep(0.05)
            for s in rest:
                s.thread.start()
            while len(local_llm._batcher.pending) < len(rest):
                assert time.time() < deadline
                time.sleep(0.01)
        for s in [first, *rest]:
            s.thread.join(timeout=120)
            assert not s.thread.is_alive()
    assert first.stats["prefill_group"] == 1
    assert [s.stats["prefill_group"] for s in rest] == [len(rest)] * len(rest)
    for s in [first, *rest]:
        assert s.text == serial[s.q], (s.q, s.text, serial[s.q])
    if prompt_cache:   # the repeated question started from the first one's cached prompt
        assert rest[0].stats["cached_prompt_tokens"] == rest[0].stats["prompt_tokens"] - 1
        assert rest[1].stats["cached_prompt_tokens"] < rest[1].stats["prompt_tokens"] - 1
