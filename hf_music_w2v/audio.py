"""Audio constants and helpers shared by the loaders, training, inference and the dataset renderer."""

import functools

import numpy as np

#: The rate every model of the package reads (wav2vec 2.0's).
SAMPLING_RATE = 16_000
#: NSynth's notes: 4 s at 16 kHz (held 3 s, released 1 s).
NOTE_SAMPLES = 64_000
REMAINDER_POLICIES = ("end_aligned", "pad", "drop")


def midi_to_hz(pitch: float) -> float:
    """Equal-tempered frequency of a MIDI note number (69 -> 440 Hz)."""
    return 440.0 * 2.0 ** ((pitch - 69) / 12)


def harmonic_note(
    pitch: int,
    seconds: float = 4.0,
    sampling_rate: int = SAMPLING_RATE,
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


@functools.lru_cache(maxsize=16)
def resampler(orig_rate: int, new_rate: int):
    """torchaudio's windowed-sinc resampler between two rates, its filter built once (0.6 ms a file otherwise)."""
    import torchaudio.transforms

    return torchaudio.transforms.Resample(orig_rate, new_rate)


def resample(audio: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited resampling of a `[sample]` float array (torchaudio's windowed-sinc filter)."""
    if orig_rate == new_rate:
        return audio.astype(np.float32, copy=False)
    import torch

    with torch.inference_mode():
        resampled = resampler(orig_rate, new_rate)(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)))
    return resampled.numpy()


def resampled_length(num_samples: int, orig_rate: int, new_rate: int) -> int:
    """Samples `resample` makes of `num_samples` (torchaudio's ceil(new * length / orig))."""
    from math import gcd

    g = gcd(orig_rate, new_rate)
    return -(-(new_rate // g) * num_samples // (orig_rate // g))


def resample_blocks(blocks, orig_rate: int, new_rate: int, min_frames: int = 64):
    """Resample a recording given as consecutive `[sample]` blocks; yields the output in consecutive pieces.

    The concatenated output equals `resample` of the concatenated input (up to float rounding), while memory
    stays bounded by a few blocks. torchaudio's resampler computes each group of `new` outputs (rates reduced
    by their gcd) from the inputs around the matching group of `orig` inputs, `width` on either side; so each
    piece is resampled with `width` samples of real context on both sides (rounded up to whole groups) and the
    context's outputs are dropped.
    """
    from math import ceil, gcd

    if orig_rate == new_rate:
        for block in blocks:
            yield np.asarray(block, dtype=np.float32)
        return
    g = gcd(orig_rate, new_rate)
    o, n = orig_rate // g, new_rate // g
    width = ceil(6 * o / (min(o, n) * 0.99))  # torchaudio's default lowpass_filter_width=6, rolloff=0.99
    context = ceil(width / o) * o
    buffer, buffer_start, total, frame = np.zeros(0, dtype=np.float32), 0, 0, 0

    def piece(first_frame: int, last_frame: int | None) -> np.ndarray:
        start = max(0, first_frame * o - context)
        end = total if last_frame is None else min(total, last_frame * o + width)
        out = resample(buffer[start - buffer_start : end - buffer_start], orig_rate, new_rate)
        skip = (first_frame * o - start) // o * n
        return out[skip:] if last_frame is None else out[skip : skip + (last_frame - first_frame) * n]

    for block in blocks:
        buffer = np.concatenate([buffer, np.asarray(block, dtype=np.float32)])
        total += len(block)
        ready = (total - width) // o  # frames whose right context has arrived
        if ready - frame >= min_frames:
            yield piece(frame, ready)
            frame = ready
            keep_from = max(0, frame * o - context)
            buffer, buffer_start = buffer[keep_from - buffer_start :], keep_from
    if total > frame * o:
        yield piece(frame, None)


def fixed_length(audio: np.ndarray, samples: int = NOTE_SAMPLES) -> np.ndarray:
    """Cut or zero-pad a `[sample]` note to `samples` (NSynth notes are all 4 s; some copies are not)."""
    if len(audio) >= samples:
        return audio[:samples]
    return np.pad(audio, (0, samples - len(audio)))


def normalize_audio(audio, in_place: bool = False):
    """Zero mean and unit variance per example of a `[batch, sample]` tensor, as `Wav2Vec2FeatureExtractor` does.

    Row by row, each row centred into the output and scaled there by the inverse root of its mean square: the
    same values to fp32 rounding as `(x - mean) / sqrt(var + 1e-7)` over the whole batch, 5x faster on a batch of
    4 s notes (each row stays in the cache; no batch-sized temporaries). `in_place` overwrites `audio`.
    """
    if audio.requires_grad:  # in-place row updates would break autograd: the batch formula instead
        centred = audio - audio.mean(dim=-1, keepdim=True)
        return centred * ((centred * centred).mean(dim=-1, keepdim=True) + 1e-7).rsqrt()
    if in_place and not audio.is_contiguous():
        raise ValueError("normalize_audio(in_place=True) needs a contiguous tensor (its rows are written in place)")
    output = audio if in_place else audio.new_empty(audio.shape)
    samples = audio.shape[-1]
    for source, row in zip(audio.reshape(-1, samples), output.reshape(-1, samples)):
        if not in_place:
            row.copy_(source)
        row.sub_(row.mean())
        row.mul_((row.dot(row) / samples + 1e-7).rsqrt())
    return output


def check_window_options(segment: int, hop: int, remainder: str) -> None:
    if remainder not in REMAINDER_POLICIES:
        raise ValueError(f"remainder must be one of {REMAINDER_POLICIES}, got {remainder!r}")
    if segment <= 0 or hop <= 0:
        raise ValueError(f"segment and hop must be positive, got {segment} and {hop} samples")


def window_starts(num_samples: int, segment: int, hop: int, remainder: str = "end_aligned") -> list[int]:
    """Start samples of the windows cut from a recording of `num_samples` samples.

    Windows start every `hop` samples while a whole `segment` fits. What is left at the end is covered by
    one more window that ends with the recording ("end_aligned", the default: every sample is seen and no
    window is padded), by a zero-padded window at the next hop ("pad"), or not at all ("drop"). A recording
    shorter than one segment gives a single zero-padded window unless the policy is "drop".
    """
    check_window_options(segment, hop, remainder)
    if num_samples <= segment:
        return [] if num_samples == 0 or (num_samples < segment and remainder == "drop") else [0]
    starts = list(range(0, num_samples - segment + 1, hop))
    if starts[-1] + segment < num_samples:
        if remainder == "end_aligned":
            starts.append(num_samples - segment)
        elif remainder == "pad":
            starts.append(starts[-1] + hop)
    return starts


def cut(audio: np.ndarray, start: int, segment: int) -> np.ndarray:
    """`audio[start:start+segment]`, zero-padded to `segment` samples."""
    window = np.asarray(audio[start : start + segment], dtype=np.float32)
    if window.size < segment:
        window = np.pad(window, (0, segment - window.size))
    return window


def windows_of_stream(pieces, total: int, starts: list[int], segment: int):
    """(start, window) for each start, cut from consecutive `pieces` of a signal of `total` samples, in order;
    windows running past the end are zero-padded. Holds about one window and one piece in memory."""
    buffer, buffer_start = np.zeros(0, dtype=np.float32), 0
    pieces = iter(pieces)
    for start in starts:
        needed = min(start + segment, total)
        while buffer_start + len(buffer) < needed:
            buffer = np.concatenate([buffer, next(pieces)])
        yield start, cut(buffer[start - buffer_start :], 0, segment)
        buffer, buffer_start = buffer[start - buffer_start :], start
