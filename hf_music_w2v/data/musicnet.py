"""MusicNet as fixed-length 16 kHz windows: a `datasets.Dataset`, or an `IterableDataset` when streaming."""

import csv
import functools
import math
import os
from pathlib import Path

import numpy as np
from datasets import Dataset, IterableDataset, load_from_disk

from ..audio import (
    check_window_options,
    resample_blocks,
    resampled_length,
    window_starts,
)
from .cache import cache_key, publish_dataset, resolve_cache_dir
from .recordings import Recording, WindowOptions, decode_windows, index_windows, stream_windows
from .validation import DataError, audio_info, check_on_error, read_audio_blocks

MUSICNET_SAMPLING_RATE = 44_100
METADATA_COLUMNS = (
    "id", "composer", "composition", "movement", "ensemble", "source", "transcriber", "catalog_name", "seconds",
)
LABEL_COLUMNS = ("start_time", "end_time", "instrument", "note", "start_beat", "end_beat", "note_value")
# A recording may differ from its metadata `seconds` by rounding; more than this means a cut-off file.
DURATION_TOLERANCE_SECONDS = 1.0


def find_root(path: str | os.PathLike) -> Path:
    """The folder holding train_data/ etc.; also finds the common mirror's extra `musicnet/` nesting."""
    path = Path(path)
    for candidate in (path, path / "musicnet", path / "musicnet" / "musicnet"):
        if (candidate / "musicnet_metadata.csv").is_file() or (candidate / "train_data").is_dir():
            return candidate
    raise DataError(path, "not a MusicNet folder: expected train_data/, train_labels/, test_data/, test_labels/ "
                          "and musicnet_metadata.csv (directly or under musicnet/)")


def read_metadata(path: Path) -> dict[int, dict | DataError]:
    """musicnet_metadata.csv as {id: row}, checking columns and number formats.

    A row whose values are wrong (seconds not a positive number, an id given twice) maps its id to the
    `DataError` instead, raised when that recording is read, so `on_error="skip"` can leave it out.
    """
    if not path.is_file():
        raise DataError(path, "metadata file not found")
    metadata = {}
    for line, row in enumerate(read_csv_rows(path, dict_rows=True, expected=METADATA_COLUMNS), start=2):
        try:
            recording = int(row["id"])
            row["seconds"] = float(row["seconds"])
        except (TypeError, ValueError) as error:
            raise DataError(f"{path}:{line}", f"id must be an integer and seconds a number ({error})") from error
        if recording in metadata:
            metadata[recording] = DataError(f"{path}:{line}", f"recording id {recording} appears more than once")
        elif not (math.isfinite(row["seconds"]) and row["seconds"] > 0):
            metadata[recording] = DataError(f"{path}:{line}", f"seconds must be a positive number, found "
                                                              f"{row['seconds']}")
        else:
            metadata[recording] = row
    return metadata


def read_csv_rows(path: Path, dict_rows: bool, expected: tuple[str, ...]) -> list:
    """A UTF-8 CSV's rows (dicts, or lists after the header), its header checked; `DataError` naming the file."""
    try:
        with open(path, newline="", encoding="utf-8") as file:
            if dict_rows:
                reader = csv.DictReader(file)
                missing = [name for name in expected if name not in (reader.fieldnames or [])]
                if missing:
                    raise DataError(path, f"expected columns {', '.join(expected)}; missing {', '.join(missing)}")
                return list(reader)
            reader = csv.reader(file)
            header = next(reader, None)
            if header is None or tuple(h.strip() for h in header) != expected:
                raise DataError(path, f"expected the header {','.join(expected)}, found {header}")
            return list(reader)
    except UnicodeDecodeError as error:
        raise DataError(path, f"not UTF-8 text ({error})") from None
    except csv.Error as error:
        raise DataError(path, f"not a readable CSV file ({error})") from None


def read_labels(path: Path) -> dict[str, np.ndarray]:
    """One label CSV as arrays: start/end (samples at 44.1 kHz), instrument (GM program, 1-based), note (MIDI)."""
    if not path.is_file():
        raise DataError(path, "label file not found")
    rows = []
    for line, row in enumerate(read_csv_rows(path, dict_rows=False, expected=LABEL_COLUMNS), start=2):
        try:
            start, end, instrument, note = (int(value) for value in row[:4])
            beats = float(row[4]), float(row[5])
        except (ValueError, IndexError) as error:
            raise DataError(f"{path}:{line}", f"expected integer sample times, program and note, then beats "
                                              f"({error})") from error
        if not 0 <= start < end or not 0 <= note <= 127 or not 1 <= instrument <= 128:
            raise DataError(f"{path}:{line}", f"need 0 <= start < end, note in [0, 127], program in [1, 128]; "
                                              f"found {row[:4]}")
        if not all(math.isfinite(b) for b in beats):
            raise DataError(f"{path}:{line}", f"start_beat and end_beat must be finite numbers, found {row[4:6]}")
        rows.append((start, end, instrument, note))
    columns = np.asarray(rows, dtype=np.int64).reshape(-1, 4).T
    return dict(zip(("start", "end", "instrument", "note"), columns))


def window_notes(labels: dict[str, np.ndarray], start: int, segment: int, sampling_rate: int) -> dict:
    """Notes sounding in a window, with onset/offset in seconds from the window start (clipped to it)."""
    window_start = start / sampling_rate
    window_end = (start + segment) / sampling_rate
    onsets = labels["start"] / MUSICNET_SAMPLING_RATE
    offsets = labels["end"] / MUSICNET_SAMPLING_RATE
    inside = (onsets < window_end) & (offsets > window_start)
    return {
        "onset": np.clip(onsets[inside] - window_start, 0, None).round(6).tolist(),
        "offset": np.clip(offsets[inside] - window_start, None, window_end - window_start).round(6).tolist(),
        "instrument": labels["instrument"][inside].tolist(),
        "note": labels["note"][inside].tolist(),
    }


def list_recordings(root: Path, split: str) -> list[dict]:
    if split not in ("train", "test"):
        raise ValueError(f"MusicNet's splits are 'train' and 'test', got {split!r}")
    data_dir, label_dir = root / f"{split}_data", root / f"{split}_labels"
    if not data_dir.is_dir():
        raise DataError(data_dir, "folder not found")
    metadata = read_metadata(root / "musicnet_metadata.csv")
    recordings = []
    for wav in sorted(data_dir.glob("*.wav"), key=lambda p: p.stem):
        if not (wav.stem.isascii() and wav.stem.isdigit()):  # str.isdigit accepts "²", which int() refuses
            recordings.append({"id": None, "wav": wav, "labels": label_dir / f"{wav.stem}.csv",
                               "error": DataError(wav, "expected a file named <recording id>.wav (ASCII digits)")})
            continue
        recordings.append({
            "id": int(wav.stem),
            "wav": wav,
            "labels": label_dir / f"{wav.stem}.csv",
            "metadata": metadata.get(int(wav.stem)),
        })
    if not recordings:
        raise DataError(data_dir, "contains no .wav recordings")
    return recordings


def check_recording(recording: dict) -> None:
    """Raise what is wrong with a recording's name or metadata row, before anything is read."""
    if recording.get("error"):
        raise recording["error"]
    if recording["metadata"] is None:
        raise DataError(recording["wav"], f"recording {recording['id']} has no row in musicnet_metadata.csv")
    if isinstance(recording["metadata"], DataError):
        raise recording["metadata"]


def recording_length(recording: dict, sampling_rate: int) -> int:
    """Samples of the recording once resampled, from its header; checked against its metadata row."""
    check_recording(recording)
    frames, rate = audio_info(recording["wav"])
    if rate != MUSICNET_SAMPLING_RATE:
        raise DataError(recording["wav"], f"expected a sample rate of {MUSICNET_SAMPLING_RATE} Hz, found {rate} Hz")
    if frames == 0:
        raise DataError(recording["wav"], "contains no samples")
    expected, found = recording["metadata"]["seconds"], frames / MUSICNET_SAMPLING_RATE
    if abs(found - expected) > DURATION_TOLERANCE_SECONDS:
        raise DataError(recording["wav"], f"lasts {found:.1f} s but the metadata says {expected:.1f} s (truncated?)")
    return resampled_length(frames, MUSICNET_SAMPLING_RATE, sampling_rate)


def resampled_pieces(recording: dict, sampling_rate: int):
    """The recording at `sampling_rate` in consecutive pieces, decoded and resampled a block at a time."""
    blocks = read_audio_blocks(recording["wav"], downmix=False)
    return resample_blocks(blocks, MUSICNET_SAMPLING_RATE, sampling_rate)


def describe_recording(recording: dict, options: WindowOptions) -> Recording:
    """The `Recording` of a MusicNet recording: its name and metadata row checked, its labels read."""
    check_recording(recording)
    labels = read_labels(recording["labels"])
    segment, hop, sampling_rate, remainder, _ = options
    return Recording(
        path=recording["wav"],
        total=lambda: recording_length(recording, sampling_rate),
        pieces=lambda: resampled_pieces(recording, sampling_rate),
        rows=lambda samples: recording_rows(recording, labels, samples, segment, hop, sampling_rate, remainder),
    )


def recording_rows(recording: dict, labels: dict, num_samples: int, segment: int, hop: int, sampling_rate: int,
                   remainder: str) -> list[dict]:
    meta = recording["metadata"]
    return [
        {
            "id": recording["id"],
            "start_seconds": start / sampling_rate,
            "composer": meta["composer"],
            "ensemble": meta["ensemble"],
            "notes": window_notes(labels, start, segment, sampling_rate),
            "_start": start,
        }
        for start in window_starts(num_samples, segment, hop, remainder)
    ]


def load_musicnet(
    path: str | os.PathLike,
    split: str = "train",
    segment_seconds: float = 20.0,
    hop_seconds: float = 10.0,
    sampling_rate: int = 16_000,
    streaming: bool = False,
    remainder: str = "end_aligned",
    on_error: str = "raise",
    cache_dir: str | os.PathLike | None = None,
) -> Dataset | IterableDataset:
    """MusicNet recordings cut into windows of `segment_seconds` every `hop_seconds`, resampled to 16 kHz.

    Each row: `audio` ({"array": float32 [segment samples], "sampling_rate"}), `id` (recording), `start_seconds`,
    `composer`, `ensemble`, and `notes` sounding in the window (`onset`/`offset` in seconds from the window
    start, `instrument` as a 1-based GM program, `note` as MIDI). See `window_starts` for the `remainder`
    policy. Decoding and resampling happen once per recording and are cached under `cache_dir` (default
    `$HF_MUSIC_W2V_CACHE` or ~/.cache/hf_music_w2v); windows are then read from memory-mapped files. With
    `streaming=True` nothing is cached: recordings are decoded on the fly, one at a time, and the
    `IterableDataset` has one shard per recording so it splits across processes.
    """
    check_on_error(on_error)
    segment = round(segment_seconds * sampling_rate)
    hop = round(hop_seconds * sampling_rate)
    check_window_options(segment, hop, remainder)
    root = find_root(path)
    recordings = list_recordings(root, split)
    options = (segment, hop, sampling_rate, remainder, on_error)
    if streaming:
        return IterableDataset.from_generator(stream_windows, gen_kwargs={
            "items": recordings, "describe": functools.partial(describe_recording, options=options),
            "options": options, "what": "MusicNet recordings"})
    key = cache_key("musicnet", split, root / "musicnet_metadata.csv", *options,
                    *(p for r in recordings for p in (r["wav"], r["labels"]) if p.exists()))
    cache = resolve_cache_dir(cache_dir) / "musicnet"
    index_dir = cache / f"index-{key}"
    if not index_dir.exists():
        publish_dataset(index_windows(recordings, functools.partial(describe_recording, options=options), options,
                                      cache, "MusicNet recordings", root / f"{split}_data"), index_dir)
    dataset = load_from_disk(str(index_dir))
    dataset.set_transform(decode_windows)
    return dataset
