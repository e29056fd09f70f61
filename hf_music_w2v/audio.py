"""Small audio helpers shared by the CLI, the dataset generator and the tests."""

import numpy as np


def midi_to_hz(pitch: float) -> float:
    """Equal-tempered frequency of a MIDI note number (69 -> 440 Hz)."""
    return 440.0 * 2.0 ** ((pitch - 69) / 12)


def harmonic_note(
    pitch: int,
    seconds: float = 4.0,
    sampling_rate: int = 16_000,
    note_on_seconds: float = 3.0,
    harmonics: int = 6,
) -> np.ndarray:
    """A plucked-string-like test note: decaying harmonics of `pitch`, released after `note_on_seconds`.

    Returns mono float32 in [-1, 1] of `round(seconds * sampling_rate)` samples. Harmonics above Nyquist are
    dropped, so high notes stay alias-free.
    """
    time = np.arange(round(seconds * sampling_rate)) / sampling_rate
    fundamental = midi_to_hz(pitch)
    wave = np.zeros_like(time)
    for k in range(1, harmonics + 1):
        if k * fundamental < sampling_rate / 2:
            wave += np.sin(2 * np.pi * k * fundamental * time) / k
    envelope = np.exp(-time * 1.5)
    release = time > note_on_seconds
    envelope[release] *= np.exp(-(time[release] - note_on_seconds) * 12)
    wave *= envelope
    peak = np.abs(wave).max()
    return (wave / peak * 0.8 if peak > 0 else wave).astype(np.float32)


def resample(audio: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited resampling of a `[sample]` float array (torchaudio's windowed-sinc filter)."""
    if orig_rate == new_rate:
        return audio.astype(np.float32, copy=False)
    import torch
    import torchaudio.functional

    resampled = torchaudio.functional.resample(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), orig_rate, new_rate)
    return resampled.numpy()
