"""Content digests: of a file, a network's weights and a split's notes (what cached features depend on).

Fine-tuning's pooled-feature cache and the layer-wise probe's feature cache are both keyed on these, so a
cache is reused for the same weights and notes wherever they come from, and recomputed when either changes.
"""

import hashlib
import json
import os
from pathlib import Path

import torch

from .data.audio_column import audio_entries


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read a MiB at a time (checkpoint manifests, converted sources, probe clips)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers (names, dtypes, shapes and bytes): its content, not its path."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def notes_digest(notes) -> str:
    """SHA-256 of a split's notes: their labels and each audio file's size and modification time (or its bytes).

    Hashing the audio itself would read the whole dataset; a rewritten file changes its size or mtime_ns.
    """
    table = notes.with_format(None)
    digest = hashlib.sha256()
    for note_str, pitch, family, audio in zip(table["note_str"], table["pitch"], table["instrument_family"],
                                              audio_entries(notes)):
        digest.update(f"{note_str}|{pitch}|{family}|".encode())
        if audio.get("bytes"):
            digest.update(hashlib.sha256(audio["bytes"]).digest())
        else:
            stat = os.stat(audio["path"])
            digest.update(f"{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def fingerprint_key(fingerprint: dict) -> str:
    """A short file-name-safe name for a fingerprint."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:20]


def fingerprint_matches(meta_path: Path, fingerprint: dict) -> bool:
    """Whether the JSON file `meta_path` records exactly `fingerprint` (a missing or torn file does not)."""
    try:
        return json.loads(Path(meta_path).read_text()) == fingerprint
    except (OSError, ValueError):
        return False
