"""Any folder of audio files (a speech corpus, your own recordings) as fixed-length 16 kHz windows.

The same windows as `load_musicnet` (every file is one recording: decoded and resampled once into a cache,
then cut into `segment_seconds` windows every `hop_seconds`), so pretraining on it differs from pretraining on
MusicNet only in the audio. Files are found recursively, so LibriSpeech's speaker/chapter/*.flac layout and
`hf-music-w2v make-mini-datasets`'s mini-speech folder both load as they are.
"""

import functools
import os
from pathlib import Path

from datasets import Dataset, IterableDataset, load_from_disk

from ..audio import check_window_options, resample_blocks, resampled_length, window_starts
from .cache import cache_key, publish_dataset, resolve_cache_dir
from .recordings import Recording, WindowOptions, decode_windows, index_windows, stream_windows
from .validation import DataError, audio_info, check_on_error, read_audio_blocks

#: File types read (what libsndfile decodes), matched case-insensitively.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


def list_audio_files(root: Path) -> list[Path]:
    """Every audio file under `root`, in a stable order; hidden files and folders are left out."""
    if not root.is_dir():
        raise DataError(root, "folder not found" if not root.exists() else "is a file; expected a folder of audio")
    files = sorted(path for path in root.rglob("*") if path.suffix.lower() in AUDIO_SUFFIXES and path.is_file()
                   and not any(part.startswith(".") for part in path.relative_to(root).parts))
    if not files:
        raise DataError(root, f"contains no audio files ({', '.join(AUDIO_SUFFIXES)})")
    return files


def describe_file(path: Path, root: Path, options: WindowOptions) -> Recording:
    segment, hop, sampling_rate, remainder, _ = options
    frames, rate = audio_info(path)
    if frames == 0:
        raise DataError(path, "contains no samples")
    name = path.relative_to(root).as_posix()
    return Recording(
        path=path,
        total=lambda: resampled_length(frames, rate, sampling_rate),
        pieces=lambda: resample_blocks(read_audio_blocks(path, downmix=True), rate, sampling_rate),
        rows=lambda samples: [{"file": name, "start_seconds": start / sampling_rate, "_start": start}
                              for start in window_starts(samples, segment, hop, remainder)],
    )


def load_audio_folder(
    path: str | os.PathLike,
    segment_seconds: float = 20.0,
    hop_seconds: float = 10.0,
    sampling_rate: int = 16_000,
    streaming: bool = False,
    remainder: str = "end_aligned",
    on_error: str = "raise",
    cache_dir: str | os.PathLike | None = None,
) -> Dataset | IterableDataset:
    """Every audio file under `path` cut into windows; rows hold `audio`, `file` (relative path), `start_seconds`.

    Files of any sample rate and channel count are downmixed and resampled to `sampling_rate`, a block at a
    time. Options mean what they mean for `load_musicnet`; an unreadable file is a `DataError` naming it, or
    with `on_error="skip"` left out and counted.
    """
    check_on_error(on_error)
    segment, hop = round(segment_seconds * sampling_rate), round(hop_seconds * sampling_rate)
    check_window_options(segment, hop, remainder)
    root = Path(path).resolve()
    files = list_audio_files(root)
    options = (segment, hop, sampling_rate, remainder, on_error)
    describe = functools.partial(describe_file, root=root, options=options)
    if streaming:
        return IterableDataset.from_generator(stream_windows, gen_kwargs={
            "items": files, "describe": describe, "options": options, "what": "audio files"})
    cache = resolve_cache_dir(cache_dir) / "audio_folder"
    index_dir = cache / f"index-{cache_key('audio_folder', root, *options, *files)}"
    if not index_dir.exists():
        publish_dataset(index_windows(files, describe, options, cache, "audio files", root), index_dir)
    dataset = load_from_disk(str(index_dir))
    dataset.set_transform(decode_windows)
    return dataset
