"""On-disk caches of validated indexes and resampled audio, each published atomically."""

import hashlib
import os
from pathlib import Path

from datasets import Dataset

from ..atomic import staged_directory

CACHE_FORMAT = 2  # bump when what is cached changes meaning


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if "HF_MUSIC_W2V_CACHE" in os.environ:
        return Path(os.environ["HF_MUSIC_W2V_CACHE"])
    return Path.home() / ".cache" / "hf_music_w2v"


def cache_key(*parts: object) -> str:
    """Hash of the inputs: a file counts by location, size and modification time; a folder by those of every
    file in it (so a file rewritten in place is validated again); anything else by its repr.

    Size and mtime_ns, not a hash of the content: hashing would read the whole dataset (NSynth is ~30 GB) on
    every load, while a stat of each file costs about a second for NSynth's 289k notes. A rewrite that keeps
    both the size and the nanosecond modification time is not noticed.
    """
    digest = hashlib.sha1(f"format={CACHE_FORMAT}".encode())
    for part in parts:
        if isinstance(part, Path) and part.is_dir():
            digest.update(f"{part.resolve()}/".encode())
            with os.scandir(part) as entries:
                for entry in sorted(entries, key=lambda e: e.name):
                    stat = entry.stat()
                    digest.update(f"{entry.name}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        elif isinstance(part, Path):
            stat = part.stat()
            digest.update(f"{part.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        else:
            digest.update(repr(part).encode())
    return digest.hexdigest()[:20]


def publish_dataset(dataset: Dataset, target: Path) -> None:
    """`save_to_disk` into a temporary sibling, then move it to `target` in one rename.

    A `target` published meanwhile by another process (two runs sharing a cache) is kept, not replaced: that
    process may be reading it, and a content-keyed entry holds the same data either way.
    """
    with staged_directory(target, replace=False) as staging:
        dataset.save_to_disk(str(staging))
