"""``mmagent perceive``: run perception on files and text, print JSON with per-stage timings.

    mmagent perceive --image photo.jpg --audio question.wav --text "where is the milk?"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .errors import InvalidImageError


def register(subparsers: Any) -> None:
    """Add the ``perceive`` subcommand to the top-level ``mmagent`` parser."""
    p = subparsers.add_parser(
        "perceive", help="encode images, audio and text with the perception models; print JSON",
        description="Run the perception layer on files and text and print the results as JSON, "
                    "with model load times and per-stage timings (seconds).")
    p.add_argument("--image", action="append", default=[], metavar="FILE",
                   help="JPEG/PNG/WebP/BMP image (repeatable; all images go through one batch)")
    p.add_argument("--audio", metavar="FILE",
                   help="speech recording: WAV read directly, other formats decoded with ffmpeg")
    p.add_argument("--text", action="append", default=[], metavar="TEXT", help="text to encode (repeatable)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda:N")
    p.add_argument("--top-k", type=int, default=5, help="labels per image (default 5)")
    p.add_argument("--embeddings", action="store_true", help="include the embedding vectors in the output")
    p.add_argument("--indent", type=int, default=2, help="JSON indent (0 = one line)")
    p.set_defaults(func=_perceive)


def _perceive(args: argparse.Namespace) -> int:
    from .audio import read_audio_file
    from .config import PerceptionConfig
    from .facade import Perception

    if not (args.image or args.audio or args.text):
        print("mmagent perceive: give at least one of --image, --audio, --text", file=sys.stderr)
        return 2
    config = PerceptionConfig(device=args.device, top_k=args.top_k)
    perception = Perception(config)
    timings: dict[str, float] = {}
    out: dict[str, Any] = {"device": str(perception.device)}

    # Read every input first: a missing or undecodable file fails before any model loads.
    blobs: list[bytes] = []
    with perception.timed("read_images", timings):
        for f in args.image:
            path = Path(f)
            if not path.is_file():
                raise InvalidImageError(f"image file not found: {path}")
            blobs.append(path.read_bytes())
    if args.audio:
        with perception.timed("read_audio", timings):
            samples, rate = read_audio_file(args.audio, config.limits)

    # Load only what this call needs, and report it apart from the work itself.
    needed = tuple(m for m, wanted in (("text", args.text), ("speech", args.audio), ("vision", args.image))
                   if wanted)
    with perception.timed("load_models", timings):
        perception.warmup(needed)

    if blobs:
        with perception.timed("vision", timings):
            frames = perception.encode_frames(blobs)
        out["images"] = [{"file": f, **_with_embedding(fr.to_json(), fr.embedding, args.embeddings)}
                         for f, fr in zip(args.image, frames, strict=True)]
    if args.audio:
        with perception.timed("speech", timings):
            speech = perception.encode_speech(samples, rate)
        out["speech"] = {"file": args.audio, **_with_embedding(speech.to_json(), speech.embedding, args.embeddings)}
        if speech.duration_s > 0:
            out["speech"]["real_time_factor"] = round(timings["speech"] / speech.duration_s, 4)
    if args.text:
        with perception.timed("text", timings):
            texts = perception.encode_text(args.text)
        out["text"] = [_with_embedding(t.to_json(), t.embedding, args.embeddings) for t in texts]

    out["identities"] = perception.identities()
    out["load_times_s"] = {k: round(v, 4) for k, v in perception.load_times().items()}
    out["timings_s"] = {k: round(v, 4) for k, v in timings.items()}
    print(json.dumps(out, indent=args.indent or None, ensure_ascii=False))
    return 0


def _with_embedding(data: dict[str, Any], embedding: Any, include: bool) -> dict[str, Any]:
    if include:
        data["embedding"] = [round(float(x), 6) for x in embedding.detach().float().cpu().tolist()]
    return data
