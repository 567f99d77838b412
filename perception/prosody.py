"""Prosody of the voiced part of an utterance: energy, pitch (YIN) and speaking rate, in numpy."""

from __future__ import annotations

import numpy as np

from .config import SAMPLE_RATE
from .types import Prosody
from .vad import VoicedRegion

FRAME = 400               # 25 ms analysis window at 16 kHz
HOP = 160                 # 10 ms hop
F0_MIN, F0_MAX = 60.0, 400.0   # covers adult and child voices
TAU_MIN = int(SAMPLE_RATE / F0_MAX)   # 40 samples
TAU_MAX = int(SAMPLE_RATE / F0_MIN)   # 266 samples
YIN_THRESHOLD = 0.15      # de Cheveigné & Kawahara's absolute threshold
SILENCE_DB = -50.0        # frames quieter than this carry no pitch


def _frames(x: np.ndarray, length: int) -> np.ndarray:
    """(n,) → (n_frames, length) strided view with a 10 ms hop."""
    if x.size < length:
        x = np.pad(x, (0, length - x.size))
    n = 1 + (x.size - length) // HOP
    return np.lib.stride_tricks.sliding_window_view(x, length)[::HOP][:n]


def energy_db(x: np.ndarray) -> np.ndarray:
    """Per-frame RMS in dBFS, (n_frames,)."""
    fr = _frames(x, FRAME)
    return 20.0 * np.log10(np.sqrt(np.mean(fr.astype(np.float64) ** 2, axis=1)) + 1e-10)


def yin_f0(x: np.ndarray) -> np.ndarray:
    """F0 per frame in Hz (0 where unvoiced), (n_frames,). Vectorised YIN with an FFT autocorrelation."""
    fr = _frames(x, FRAME + TAU_MAX).astype(np.float64)              # (N, W + tau_max)
    if fr.shape[0] == 0:
        return np.zeros(0)
    w = FRAME
    nfft = 1 << int(np.ceil(np.log2(w + TAU_MAX + w)))
    a = np.fft.rfft(fr[:, :w], nfft)
    b = np.fft.rfft(fr, nfft)
    r = np.fft.irfft(np.conj(a) * b, nfft)[:, :TAU_MAX + 1]          # r(tau) = sum_j x_j x_{j+tau}
    sq = np.concatenate([np.zeros((fr.shape[0], 1)), np.cumsum(fr ** 2, axis=1)], axis=1)
    taus = np.arange(TAU_MAX + 1)
    e_tau = sq[:, taus + w] - sq[:, taus]                            # energy of x[tau : tau + w]
    d = sq[:, [w]] + e_tau - 2.0 * r                                 # difference function (N, tau_max+1)
    cum = np.cumsum(d[:, 1:], axis=1)
    cmndf = np.ones_like(d)
    cmndf[:, 1:] = d[:, 1:] * taus[1:] / np.maximum(cum, 1e-12)
    seg = cmndf[:, TAU_MIN:]
    below = seg < YIN_THRESHOLD
    # First dip under the threshold (then walk to its local minimum); else no pitch.
    first = np.where(below.any(axis=1), below.argmax(axis=1), -1)
    f0 = np.zeros(fr.shape[0])
    for i in np.nonzero(first >= 0)[0]:
        t = first[i]
        while t + 1 < seg.shape[1] and seg[i, t + 1] < seg[i, t]:
            t += 1
        tau = float(t + TAU_MIN)
        if 0 < t < seg.shape[1] - 1:  # parabolic interpolation for sub-sample precision
            y0, y1, y2 = seg[i, t - 1], seg[i, t], seg[i, t + 1]
            den = y0 - 2 * y1 + y2
            if abs(den) > 1e-12:
                tau += 0.5 * (y0 - y2) / den
        f0[i] = SAMPLE_RATE / tau
    return f0


def prosody(samples: np.ndarray, regions: list[VoicedRegion], n_words: int) -> Prosody:
    """Prosody of ``samples`` (n,) float32 at 16 kHz over its voiced ``regions``."""
    duration = samples.size / SAMPLE_RATE
    voiced_s = sum(r.end - r.start for r in regions) / SAMPLE_RATE
    if not regions:
        return Prosody(energy_db_mean=-100.0, energy_db_std=0.0, pitch_hz_mean=0.0, pitch_hz_std=0.0,
                       pitch_hz_range=0.0, speaking_rate_wps=0.0, voiced_ratio=0.0, duration_s=duration)
    energies, pitches = [], []
    for r in regions:
        seg = samples[r.start:r.end]
        e = energy_db(seg)
        f0 = yin_f0(seg)
        n = min(e.size, f0.size)
        energies.append(e)
        pitches.append(f0[:n][(e[:n] > SILENCE_DB) & (f0[:n] > 0)])
    e_all = np.concatenate(energies)
    # Pauses inside a voiced region (digital silence in synthetic speech: -200 dB) would swamp
    # the statistics; energy describes the sounding frames, floored for all-quiet input.
    sounding = e_all[e_all > SILENCE_DB - 10.0]
    e_all = sounding if sounding.size else np.maximum(e_all, -100.0)
    f_all = np.concatenate(pitches)
    if f_all.size:
        # Octave errors show up as outliers; a robust median-based filter keeps the contour honest.
        med = np.median(f_all)
        f_all = f_all[(f_all > med / 1.8) & (f_all < med * 1.8)]
    has_pitch = f_all.size >= 3
    return Prosody(
        energy_db_mean=float(e_all.mean()),
        energy_db_std=float(e_all.std()),
        pitch_hz_mean=float(f_all.mean()) if has_pitch else 0.0,
        pitch_hz_std=float(f_all.std()) if has_pitch else 0.0,
        pitch_hz_range=float(np.percentile(f_all, 90) - np.percentile(f_all, 10)) if has_pitch else 0.0,
        speaking_rate_wps=n_words / voiced_s if voiced_s > 0 else 0.0,
        voiced_ratio=min(1.0, voiced_s / duration) if duration > 0 else 0.0,
        duration_s=duration,
    )
