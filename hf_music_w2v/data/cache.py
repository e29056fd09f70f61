"""On-disk caches of validated indexes and resampled audio, each published atomically."""

import hashlib
import os
from pathlib import Path

import numpy as np
from datasets import Dataset

from ..atomic import atomic_path, staged_directory

CACHE_FORMAT = 1  # bump when what is cached changes meaning


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if "HF_MUSIC_W2V_CACHE" in os.environ:
        return Path(os.environ["HF_MUSIC_W2V_CACHE"])
    return Path.home() / ".cache" / "hf_music_w2v"


def cache_key(*parts: object) -> str:
    """Hash of the inputs: paths count by location, size and modification time, anything else by its repr."""
    digest = hashlib.sha1(f"format={CACHE_FORMAT}".encode())
    for part in parts:
        if isinstance(part, Path):
            stat = part.stat()
            digest.update(f"{part.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        else:
            digest.update(repr(part).encode())
    return digest.hexdigest()[:20]


def publish_dataset(dataset: Dataset, target: Path) -> None:
    """`save_to_disk` into a temporary sibling, then move it to `target` in one rename."""
    with staged_directory(target) as staging:
        dataset.save_to_disk(str(staging))


def publish_array(array: np.ndarray, target: Path) -> None:
    """Write `array` as .npy through a temporary file and an atomic rename."""
    with atomic_path(target) as staging:
        np.save(staging, array)
