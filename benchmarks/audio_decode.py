"""Decoding a 4 s file to float32: libsndfile's own float read vs the integer read + numpy scaling of `read_float32`.

    .venv/bin/python benchmarks/audio_decode.py

For each container and encoding, mono and stereo: 50 reads of the same file, best of 7 runs for each way; prints
the ratio (libsndfile's time / ours) and checks that both give the same bits. Decides which encodings
`hf_music_w2v.data.validation.read_float32` reads as integers.
"""

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

CASES = [("WAV", "PCM_U8"), ("WAV", "PCM_16"), ("WAV", "PCM_24"), ("WAV", "PCM_32"), ("AIFF", "PCM_16"),
         ("AIFF", "PCM_24"), ("FLAC", "PCM_16"), ("FLAC", "PCM_24")]
INTEGERS = {"PCM_U8": ("int16", 2.0**-15), "PCM_16": ("int16", 2.0**-15), "PCM_24": ("int32", 2.0**-31),
            "PCM_32": ("int32", 2.0**-31)}


def libsndfile_read(path: Path) -> np.ndarray:
    return sf.read(path, dtype="float32", always_2d=True)[0]


def integer_read(path: Path) -> np.ndarray:
    with sf.SoundFile(path) as file:
        dtype, scale = INTEGERS[file.subtype]
        return np.multiply(file.read(dtype=dtype, always_2d=True), np.float32(scale), dtype=np.float32)


def best_of(read, path: Path, runs: int = 7, reads: int = 50) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(reads):
            read(path)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for channels in (1, 2):
            for container, subtype in CASES:
                path = Path(tmp) / f"{subtype}_{channels}.{container.lower()}"
                sf.write(path, rng.uniform(-1, 1, (64_000, channels)), 16_000, format=container, subtype=subtype)
                same = np.array_equal(libsndfile_read(path).view(np.int32), integer_read(path).view(np.int32))
                ratio = best_of(libsndfile_read, path) / best_of(integer_read, path)
                print(f"{container:<5} {subtype:<7} {'mono' if channels == 1 else 'stereo':<7} {ratio:5.2f}x"
                      f"  {'same bits' if same else 'DIFFERENT'}")
    print("command: " + " ".join(["python", "benchmarks/audio_decode.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
