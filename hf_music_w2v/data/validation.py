"""Reading audio and label files with errors that name the file and what was expected."""

import io
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from transformers.utils import logging

logger = logging.get_logger(__name__)


class DataError(ValueError):
    """A dataset file is missing, unreadable or not what the official layout says it should be."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass
class SkipLog:
    """Counts inputs skipped under `on_error="skip"` and reports them once, at the end."""

    what: str
    skipped: list[DataError] = field(default_factory=list)

    def handle(self, error: DataError, on_error: str) -> None:
        if on_error == "raise":
            raise error
        self.skipped.append(error)

    def report(self) -> None:
        if not self.skipped:
            return
        shown = "\n".join(f"  {error}" for error in self.skipped[:10])
        more = f"\n  ... and {len(self.skipped) - 10} more" if len(self.skipped) > 10 else ""
        logger.warning(f"skipped {len(self.skipped)} invalid {self.what}:\n{shown}{more}")


def check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


#: 16- and 32-bit PCM read as integers and scaled here: libsndfile's own conversion to float is a scalar loop (a
#: 16-bit WAV note reads 2.4x faster as int16, 32-bit 2.3x; FLAC and AIFF the same either way; 8- and 24-bit were
#: slower, so they are left to libsndfile). The scale is a power of two, so the samples are the same bits.
_INTEGER_READS = {"PCM_16": ("int16", 2.0**-15), "PCM_32": ("int32", 2.0**-31)}


@contextmanager
def open_audio(source: str | os.PathLike | io.IOBase, name: str | os.PathLike | None = None):
    """An audio file (a path or a file object) open for reading, as a `soundfile.SoundFile`.

    A failure to decode it, on opening or on any read inside the `with` block, raises `DataError` naming `name`
    (the path by default) with libsndfile's reason.
    """
    try:
        with sf.SoundFile(source) as file:
            yield file
    except (sf.LibsndfileError, RuntimeError, OSError) as error:
        raise DataError(name or source, f"not a readable audio file ({error})") from error


def read_float32(file: sf.SoundFile, frames: int = -1) -> np.ndarray:
    """The next `frames` of an open file (the rest by default) as float32 `[frame, channel]`.

    Bit for bit what `file.read(frames, dtype="float32", always_2d=True)` returns, read faster from integer PCM.
    """
    integer = _INTEGER_READS.get(file.subtype)
    if integer is None:
        return file.read(frames, dtype="float32", always_2d=True)
    dtype, scale = integer
    return np.multiply(file.read(frames, dtype=dtype, always_2d=True), np.float32(scale), dtype=np.float32)


def to_mono(audio: np.ndarray) -> np.ndarray:
    """`[frame, channel]` -> `[frame]`: the channels' mean (a mono file's one channel as it is, a view)."""
    return audio[:, 0] if audio.shape[1] == 1 else audio.mean(axis=1)


def read_audio(
    path: str | os.PathLike,
    expected_sampling_rate: int | None = None,
    expected_samples: int | None = None,
    downmix: bool = False,
) -> tuple[np.ndarray, int]:
    """Read a mono audio file as float32 `[sample]`, checking it exists, decodes, is mono, finite and non-empty.

    With `downmix`, any channel count is accepted and averaged to mono. Raises `DataError` naming the file and
    what was expected.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    if path.stat().st_size == 0:
        raise DataError(path, "file is empty (0 bytes)")
    with open_audio(path) as file:
        audio, sampling_rate = read_float32(file), file.samplerate
    if audio.shape[1] != 1 and not downmix:
        raise DataError(path, f"expected mono audio, found {audio.shape[1]} channels")
    if expected_sampling_rate is not None and sampling_rate != expected_sampling_rate:
        raise DataError(path, f"expected a sample rate of {expected_sampling_rate} Hz, found {sampling_rate} Hz")
    audio = to_mono(audio)
    if audio.size == 0:
        raise DataError(path, "contains no samples")
    if expected_samples is not None and audio.size != expected_samples:
        raise DataError(path, f"expected {expected_samples} samples, found {audio.size} (truncated or wrong length?)")
    if not np.isfinite(audio).all():
        raise DataError(path, f"contains {int((~np.isfinite(audio)).sum())} NaN or infinite samples")
    return audio, sampling_rate


def audio_info(path: str | os.PathLike) -> tuple[int, int]:
    """(frames, sample rate) of an audio file from its header; `DataError` naming the file if it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found" if not path.is_dir() else "is a folder; expected an audio file")
    if path.stat().st_size == 0:
        raise DataError(path, "file is empty (0 bytes)")
    with open_audio(path) as file:
        return file.frames, file.samplerate


def read_audio_blocks(path: str | os.PathLike, block_frames: int = 1 << 20, downmix: bool = True):
    """A file as consecutive mono float32 blocks of `block_frames`, checked as `read_audio` checks a whole file.

    Memory is bounded by one block whatever the file's length. Raises `DataError` naming the file (a NaN
    block, a multi-channel file without `downmix`, a decoding error part way through).
    """
    path = Path(path)
    audio_info(path)
    with open_audio(path) as file:
        if file.channels != 1 and not downmix:
            raise DataError(path, f"expected mono audio, found {file.channels} channels")
        while len(block := read_float32(file, block_frames)):
            mono = to_mono(block)
            if not np.isfinite(mono).all():
                raise DataError(path, "contains NaN or infinite samples")
            yield mono
