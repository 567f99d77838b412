"""``mmagent ask`` / ``mmagent sessions`` end to end (real encoders, fusion, extractive replies)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.cli import main
from tests.conftest import synth_speech


def _json_out(capsys: pytest.CaptureFixture[str]) -> dict:  # type: ignore[type-arg]
    out = capsys.readouterr().out
    return json.loads(out[out.index("{"):])


def test_ask_json_with_speech_and_image_then_sessions(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """ask --json gives transcript, perception, fused outputs, reply, actions, timings; sessions
    list/show/export read the stored turn back."""
    from PIL import Image
    from skimage import data

    monkeypatch.setenv("MMAGENT_CACHE_DIR", str(tmp_path / "cache"))
    db = tmp_path / "s.db"
    img = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(img)
    wav = tmp_path / "q.wav"
    synth_speech("Where are the batteries?", out=wav)
    rc = main(["ask", "--audio", str(wav), "--image", str(img), "--json", "--responder", "extractive",
               "--db", str(db)])
    result = _json_out(capsys)
    assert rc == 0, result
    assert "batter" in result["transcript"].lower()
    assert result["perception"]["face_count"] >= 1 and result["perception"]["frames"][0]["labels"]
    assert result["perception"]["speech"]["confidence"] > 0.35
    fused = result["fused"]
    if fused is not None:  # with the fusion checkpoint
        assert set(fused["modality_weights"]) <= {"text", "speech", "vision", "context"}
        assert abs(sum(fused["modality_weights"].values()) - 1) < 1e-3
        assert {"intent", "emotion", "addressee"} <= set(fused)
    assert "aisle 7" in result["reply"]
    assert result["status"] == "completed" and result["route"] == "extractive"
    assert {"perception", "total"} <= set(result["timings_ms"])
    sid = result["session_id"]

    assert main(["sessions", "--db", str(db), "list", "--json"]) == 0
    assert [s["id"] for s in json.loads(capsys.readouterr().out)] == [sid]
    assert main(["sessions", "--db", str(db), "show", sid]) == 0
    assert "aisle 7" in capsys.readouterr().out
    out = tmp_path / "export.json"
    assert main(["sessions", "--db", str(db), "export", sid, "-o", str(out)]) == 0
    exported = json.loads(out.read_text())
    assert exported["id"] == sid and exported["turns"][0]["reply"] == result["reply"]
    assert exported["turns"][0]["transcript"] == result["transcript"]
    assert main(["sessions", "--db", str(db), "export", "sess_nope"]) == 1
    assert "session_not_found" in capsys.readouterr().err


def test_ask_without_input_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    """ask with nothing to ask exits 1 with a coded error."""
    assert main(["ask", "--responder", "extractive", "--no-store"]) == 1
    assert "invalid_input" in capsys.readouterr().err
