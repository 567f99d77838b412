"""Text encoder: shapes, normalisation, batching, truncation, and paraphrase geometry."""

from __future__ import annotations

import threading

import pytest
import torch

from perception import Perception, TextEncoding

# (sentence, paraphrase, unrelated): kiosk questions and small talk.
PARAPHRASES = [
    ("Where can I find the batteries?", "Which aisle are the batteries in?", "What time do you close tonight?"),
    ("I want to return these shoes.", "I'd like to bring back this pair of shoes.", "Do you sell fresh bread?"),
    ("How much does this jacket cost?", "What is the price of this coat?", "Can I talk to a manager?"),
    ("Can I pay with a credit card?", "Do you accept card payments?", "Where is the toilet?"),
    ("What are your opening hours on Sunday?", "When are you open on Sundays?", "This phone screen is broken."),
    ("I need to speak to a real person.", "Can I talk to a human, please?", "Is this milk lactose free?"),
    ("Thank you, goodbye!", "Thanks, see you later.", "My card was charged twice."),
    ("Hello there!", "Hi, good morning!", "The printer is out of paper."),
]


def _cos(a: TextEncoding, b: TextEncoding) -> float:
    return float(a.embedding @ b.embedding)


def test_shapes_and_normalisation(perception: Perception) -> None:
    """Each text gives a (384,) L2-normalised embedding on the perception device."""
    out = perception.encode_text(["hello", "where are the batteries?", "a" * 50])
    assert len(out) == 3
    for enc in out:
        assert enc.embedding.shape == (384,)
        assert enc.embedding.device.type == perception.device.type
        assert abs(float(enc.embedding.norm()) - 1.0) < 1e-4
        assert enc.feature_vector().dtype == torch.float32 and enc.feature_vector().device.type == "cpu"
        assert enc.n_tokens >= 3 and not enc.truncated
    assert out[1].to_json()["embedding_dim"] == 384
    assert perception.encode_text([]) == []


def test_paraphrases_closer_than_unrelated(perception: Perception) -> None:
    """For every row, the paraphrase is closer to the sentence than the unrelated text is."""
    flat = [s for row in PARAPHRASES for s in row]
    enc = perception.encode_text(flat)
    for i, (a, p, u) in enumerate(zip(enc[0::3], enc[1::3], enc[2::3], strict=True)):
        assert _cos(a, p) > _cos(a, u) + 0.1, (PARAPHRASES[i], _cos(a, p), _cos(a, u))
        assert _cos(a, p) > _cos(p, u) + 0.1, (PARAPHRASES[i], _cos(a, p), _cos(p, u))


def test_batch_matches_single(perception: Perception) -> None:
    """Padding in a batch does not change a text's embedding."""
    texts = ["hi", "could you tell me where the frozen pizzas are kept in this store?"]
    batch = perception.encode_text(texts)
    for t, b in zip(texts, batch, strict=True):
        single = perception.encode_text([t])[0]
        assert torch.allclose(single.embedding, b.embedding, atol=1e-4)


def test_truncation_is_reported(perception: Perception) -> None:
    """A text longer than the encoder window is truncated and says so."""
    long = " ".join(["shelf"] * 600)
    enc = perception.encode_text([long, "short"])
    assert enc[0].truncated and enc[0].n_tokens == 256
    assert not enc[1].truncated


def test_batches_larger_than_batch_size(perception: Perception) -> None:
    """More texts than text_batch_size are split into passes and keep their order."""
    texts = [f"question number {i}" for i in range(perception.config.text_batch_size + 5)]
    out = perception.encode_text(texts)
    assert [o.text for o in out] == texts


def test_thread_safe(perception: Perception) -> None:
    """One instance encodes from several threads at once with the same results."""
    texts = ["where is the milk?", "I want a refund", "good morning"]
    expected = perception.encode_text(texts)
    results: list[list[TextEncoding]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                results.append(perception.encode_text(texts))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 20
    for r in results:
        for a, b in zip(r, expected, strict=True):
            assert torch.allclose(a.embedding, b.embedding, atol=1e-4)


@pytest.mark.parametrize("modality", ["text"])
def test_load_time_recorded(perception: Perception, modality: str) -> None:
    """Load times are recorded once a model is loaded."""
    perception.encode_text(["x"])
    assert perception.load_times()[modality] > 0
