"""Peak memory (RSS of the whole process) on long recordings: MusicNet loading and `predict`.

    .venv/bin/python benchmarks/long_recordings.py --hours 3 --predict_hours 1

Writes a MusicNet folder with one synthetic recording of `--hours` (44.1 kHz, 32-bit float, as MusicNet) and a
`--predict_hours` stereo 44.1 kHz file, then measures, each in a fresh process (its own peak RSS, VmHWM):
building the cached index (decoding and resampling the recording), reading every window of it, the streaming mode,
and `hf-music-w2v predict` on the long file. The baseline decodes and resamples the whole recording at once, as
the loader did before it read in blocks.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, sys, time
from peak_memory import peak_rss_mb
mode, root, cache = sys.argv[1], sys.argv[2], sys.argv[3]
start = time.perf_counter()
if mode == "baseline":
    from hf_music_w2v.audio import resample
    from hf_music_w2v.data.validation import read_audio
    audio, rate = read_audio(root + "/train_data/1.wav")
    count = len(resample(audio, rate, 16000))
elif mode in ("cached", "streaming"):
    from hf_music_w2v.data import load_musicnet
    windows = load_musicnet(root, "train", streaming=mode == "streaming", cache_dir=cache)
    count = sum(1 for _ in windows)
else:
    from hf_music_w2v.cli import main
    count = main(["predict", root, sys.argv[4], "--json"])
print(json.dumps({"mode": mode, "peak_rss_mib": peak_rss_mb(),
                  "seconds": time.perf_counter() - start, "count": count}))
"""


def write_long_wav(path: Path, seconds: float, rate: int, channels: int, subtype: str) -> None:
    """A sum of slow sines, written a minute at a time (the benchmark itself must not need the memory)."""
    import soundfile as sf

    with sf.SoundFile(path, "w", samplerate=rate, channels=channels, subtype=subtype) as file:
        minute = 60 * rate
        for first in range(0, int(seconds * rate), minute):
            t = (first + np.arange(min(minute, int(seconds * rate) - first))) / rate
            mono = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 331 * t)
            file.write(np.repeat(mono[:, None], channels, axis=1).astype(np.float32))


def measure(mode: str, root: Path, cache: Path, extra: str = "") -> dict:
    here = str(Path(__file__).resolve().parent)  # for peak_memory
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", CHILD, mode, str(root), str(cache), extra], capture_output=True,
                            text=True, check=True, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=3.0, help="length of the MusicNet recording")
    parser.add_argument("--predict_hours", type=float, default=1.0, help="length of the file given to predict")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = tmp / "musicnet"
        (root / "train_data").mkdir(parents=True)
        (root / "train_labels").mkdir()
        started = time.perf_counter()
        write_long_wav(root / "train_data" / "1.wav", args.hours * 3600, 44_100, 1, "FLOAT")
        (root / "train_labels" / "1.csv").write_text("start_time,end_time,instrument,note,start_beat,end_beat,"
                                                     "note_value\n0,44100,41,69,0.0,1.0,Quarter\n")
        (root / "musicnet_metadata.csv").write_text("id,composer,composition,movement,ensemble,source,transcriber,"
                                                   f"catalog_name,seconds\n1,Test,Tone,1,Solo,t,t,T1,"
                                                   f"{args.hours * 3600}\n")
        long_file = tmp / "long_stereo.wav"
        write_long_wav(long_file, args.predict_hours * 3600, 44_100, 2, "PCM_16")
        model = tmp / "model"
        subprocess.run([sys.executable, "-c", (
            "import sys, torch, hf_music_w2v; from hf_music_w2v.presets import preset_overrides\n"
            "torch.manual_seed(0)\n"
            "m = hf_music_w2v.Wav2Vec2ForMusicClassification(hf_music_w2v.MusicWav2Vec2Config("
            "**preset_overrides('wav2vec2-small')))\n"
            f"hf_music_w2v.save_pretrained_atomic(m, {str(model)!r})")], check=True)
        print(f"wrote the test files in {time.perf_counter() - started:.0f} s "
              f"({(root / 'train_data' / '1.wav').stat().st_size / 2**30:.2f} GiB recording)")
        rows = [measure("baseline", root, tmp / "cache"), measure("cached", root, tmp / "cache"),
                measure("cached", root, tmp / "cache"), measure("streaming", root, tmp / "cache"),
                measure("predict", model, tmp / "cache", str(long_file))]
    labels = ["baseline: decode + resample the whole recording", "cached mode, first load (index + resampled .npy)",
              "cached mode, windows read from the cache", "streaming mode, every window",
              f"predict on a {args.predict_hours:g} h stereo 44.1 kHz file"]
    print(f"{'what':<52} {'peak RSS MiB':>12} {'seconds':>8}")
    for label, row in zip(labels, rows):
        print(f"{label:<52} {row['peak_rss_mib']:>12.0f} {row['seconds']:>8.1f}")
    print(f"ratio of the cached first load to the baseline: {rows[1]['peak_rss_mib'] / rows[0]['peak_rss_mib']:.2f}")
    print("command: .venv/bin/python benchmarks/long_recordings.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
