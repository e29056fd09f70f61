"""Long recordings as fixed-length windows: decoded and resampled once into cached .npy files, cut on access.

Shared by every source of pretraining audio (MusicNet, a folder of audio files). A source describes each
recording as a `Recording`; `index_windows` turns a list of them into the rows of a `datasets.Dataset` whose
`audio` column points into the cached files, and `stream_windows` yields the same rows without a cache.
"""

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset
from tqdm.auto import tqdm

from ..atomic import atomic_path
from ..audio import cut, windows_of_stream
from .cache import cache_key
from .validation import DataError, SkipLog


@dataclass
class Recording:
    """What windowing needs to know of one recording; building one may raise `DataError` (it is then skipped)."""

    path: Path
    total: Callable[[], int]  # samples once resampled (checked against what the source expects)
    pieces: Callable[[], Iterator[np.ndarray]]  # the resampled signal in consecutive pieces
    rows: Callable[[int], list[dict]]  # one row per window of a signal this long, each with its "_start" sample


#: (segment samples, hop samples, sampling rate, remainder policy, on_error) of a windowing.
WindowOptions = tuple[int, int, int, str, str]


def write_resampled(recording: Recording, path: Path) -> None:
    """The resampled recording as a .npy written piece by piece (atomically)."""
    total = recording.total()
    with atomic_path(path) as staging, open(staging, "wb") as file:
        # Plain writes, not a memory map: a map's written pages would count in the process's memory.
        np.lib.format.write_array_header_1_0(file, {"descr": "<f4", "fortran_order": False, "shape": (total,)})
        position = 0
        for piece in recording.pieces():
            file.write(np.ascontiguousarray(piece, dtype="<f4").tobytes())
            position += len(piece)
        if position != total:
            raise DataError(recording.path, f"decoded to {position} samples, its header promised {total}")


@functools.lru_cache(maxsize=8)
def open_resampled(path: str) -> np.ndarray:
    return np.load(path, mmap_mode="r")


def decode_windows(batch: dict) -> dict:
    """`set_transform` hook: slice each window out of its memory-mapped resampled recording."""
    decoded = [
        {"array": cut(open_resampled(item["path"]), item["start"], item["length"]), "sampling_rate": item["sampling_rate"]}
        for item in batch["audio"]
    ]
    return {**batch, "audio": decoded}


def index_windows(items: list, describe: Callable[[object], Recording], options: WindowOptions, cache: Path,
                  what: str, where: Path) -> Dataset:
    """Rows for every window of every item (`describe(item)` -> its `Recording`), resampling each once into `cache`."""
    segment, _, sampling_rate, _, on_error = options
    skips = SkipLog(what)
    rows = []
    for item in tqdm(items, desc=f"decoding + resampling {what}", unit="recording"):
        try:
            recording = describe(item)
            resampled_path = cache / "resampled" / f"{cache_key(recording.path, sampling_rate)}.npy"
            if not resampled_path.exists():
                write_resampled(recording, resampled_path)
        except DataError as error:
            skips.handle(error, on_error)
            continue
        for row in recording.rows(open_resampled(str(resampled_path)).shape[0]):
            start = row.pop("_start")
            row["audio"] = {"path": str(resampled_path), "start": start, "length": segment,
                            "sampling_rate": sampling_rate}
            rows.append(row)
    skips.report()
    if not rows:
        raise DataError(where, "no valid windows")
    return Dataset.from_list(rows)


def stream_windows(items: list, describe: Callable[[object], Recording], options: WindowOptions, what: str):
    """Generator behind streaming loaders: decode, resample and cut one recording at a time, caching nothing."""
    segment, _, sampling_rate, _, on_error = options
    skips = SkipLog(what)
    for item in items:
        try:
            recording = describe(item)
            total = recording.total()
            rows = recording.rows(total)
            windows = windows_of_stream(recording.pieces(), total, [row["_start"] for row in rows], segment)
            for row, (_, window) in zip(rows, windows):  # new dicts: `rows` must not keep every window alive
                yield {**{k: v for k, v in row.items() if k != "_start"},
                       "audio": {"array": window, "sampling_rate": sampling_rate}}
        except DataError as error:  # a block that fails to decode part way through ends the recording there
            skips.handle(error, on_error)
    skips.report()
