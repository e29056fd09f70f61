"""Data pipeline throughput and memory: our cached loaders vs decoding + resampling every item on the fly.

    .venv/bin/python benchmarks/data_pipeline.py --work_dir /tmp/bench_data

Renders mini datasets once, grows them by copying files (x1 and x4), then measures, each in a fresh process:
- MusicNet windows (20 s, 10 s hop, 16 kHz): seconds of audio delivered per second of wall time;
- NSynth notes: clips per second, row by row, in batches of 64 (`.iter(batch_size=64)`), and through fine-tuning's
  path (a DataLoader of batches of 64 with `collate_notes`, which also stacks and normalises: model inputs), each
  also with "+heap": after `keep_freed_memory()`, as the training runs do (glibc keeps freed audio buffers);
for ours (after the first, caching pass) and for the baseline (soundfile read of the item's span + torchaudio
resample per item, no cache), plus each process's peak RSS. Each mode is measured `--repeats` times, the modes
alternating; the median is reported, with ratios against the baseline of the same run.
"""

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import soundfile as sf
import torch
import torchaudio.functional
from peak_memory import peak_rss_mb


def grow_musicnet(source: Path, target: Path, factor: int) -> None:
    """Copy of mini-MusicNet's train split with every recording repeated `factor` times under new ids."""
    if target.exists():
        return
    for folder in ("train_data", "train_labels"):
        (target / folder).mkdir(parents=True)
    with open(source / "musicnet_metadata.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    grown = []
    for copy in range(factor):
        for row in rows:
            wav = source / "train_data" / f"{row['id']}.wav"
            if not wav.exists():
                continue
            new_id = int(row["id"]) + 10_000 * copy
            shutil.copy(wav, target / "train_data" / f"{new_id}.wav")
            shutil.copy(source / "train_labels" / f"{row['id']}.csv", target / "train_labels" / f"{new_id}.csv")
            grown.append({**row, "id": new_id})
    with open(target / "musicnet_metadata.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(grown)


def grow_nsynth(source: Path, target: Path, factor: int) -> None:
    """Copy of mini-NSynth's train split with every note repeated `factor` times under new names."""
    if target.exists():
        return
    (target / "audio").mkdir(parents=True)
    examples = json.loads((source / "examples.json").read_text())
    grown = {}
    for copy in range(factor):
        for note_str, entry in examples.items():
            instrument_str = f"{entry['instrument_str']}{copy}"
            new = f"{instrument_str}-{entry['pitch']:03d}-{entry['velocity']:03d}"
            shutil.copy(source / "audio" / f"{note_str}.wav", target / "audio" / f"{new}.wav")
            grown[new] = {**entry, "note_str": new, "instrument_str": instrument_str}
    (target / "examples.json").write_text(json.dumps(grown))


def measure(kind: str, mode: str, data: Path, cache: Path) -> dict:
    """One measurement, run inside its own process so peak RSS belongs to it alone."""
    from hf_music_w2v.allocator import keep_freed_memory
    from hf_music_w2v.data import load_musicnet, load_nsynth

    torch.set_num_threads(1)
    if mode.endswith("+heap"):  # as the training runs do
        keep_freed_memory()
        mode = mode.removesuffix("+heap")
    if kind == "musicnet" and mode == "ours":
        load_musicnet(data, "train", cache_dir=cache)  # first pass: decode + resample + cache
        start = time.perf_counter()
        dataset = load_musicnet(data, "train", cache_dir=cache)
        seconds = sum(row["audio"]["array"].size for row in dataset) / 16000
    elif kind == "musicnet":
        start = time.perf_counter()
        seconds = 0.0
        with open(data / "musicnet_metadata.csv", newline="") as file:
            ids = [row["id"] for row in csv.DictReader(file)]
        for recording in ids:
            wav = data / "train_data" / f"{recording}.wav"
            frames = sf.info(wav).frames
            for begin in range(0, max(frames - 20 * 44100, 0) + 1, 10 * 44100):
                audio, _ = sf.read(wav, start=begin, frames=20 * 44100, dtype="float32")
                window = torchaudio.functional.resample(torch.from_numpy(audio), 44100, 16000)
                seconds += window.numel() / 16000
    elif mode.startswith("ours"):
        from hf_music_w2v.data.nsynth import COLLATED_COLUMNS, collate_notes

        load_nsynth(data, "train", cache_dir=cache)  # first pass: validate + cache
        start = time.perf_counter()
        dataset = load_nsynth(data, "train", cache_dir=cache)
        if mode == "ours":
            seconds = sum(1 for row in dataset if row["audio"]["array"].size)
        elif mode == "ours-iter64":
            seconds = sum(len(batch["audio"]) for batch in dataset.iter(batch_size=64))
        else:  # ours-collate64: fine-tuning's path
            dataset = dataset.select_columns(list(COLLATED_COLUMNS))
            batches = [list(range(i, min(i + 64, len(dataset)))) for i in range(0, len(dataset), 64)]
            loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate_notes)
            seconds = sum(len(batch["input_values"]) for batch in loader)
    else:
        start = time.perf_counter()
        split = data / "nsynth-train"
        examples = json.loads((split / "examples.json").read_text())
        seconds = 0
        for note_str in examples:
            audio, rate = sf.read(split / "audio" / f"{note_str}.wav", dtype="float32")
            if rate != 16000:
                audio = torchaudio.functional.resample(torch.from_numpy(audio), rate, 16000).numpy()
            seconds += 1
    elapsed = time.perf_counter() - start
    return {"kind": kind, "mode": mode, "amount": seconds, "elapsed": elapsed, "rate": seconds / elapsed,
            "peak_rss_mb": peak_rss_mb()}


def run_measurement(kind: str, mode: str, data: Path, cache: Path) -> dict:
    result = subprocess.run([sys.executable, __file__, "--measure", kind, mode, str(data), str(cache)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"measurement {kind}/{mode} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", default="/tmp/hf_music_w2v_bench_data", help="rendered data and caches")
    parser.add_argument("--notes_per_instrument", type=int, default=24, help="mini-NSynth size before growing")
    parser.add_argument("--musicnet_seconds", type=float, default=60.0, help="seconds per mini-MusicNet score")
    parser.add_argument("--repeats", type=int, default=3, help="measurements of each mode (median reported)")
    parser.add_argument("--measure", nargs=4, metavar=("KIND", "MODE", "DATA", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        kind, mode, data, cache = args.measure
        print(json.dumps(measure(kind, mode, Path(data), Path(cache))))
        return

    from hf_music_w2v.data.mini import make_mini_musicnet, make_mini_nsynth

    work = Path(args.work_dir)
    if not (work / "mini" / "musicnet" / "musicnet_metadata.csv").exists():
        make_mini_nsynth(work / "mini" / "nsynth", notes_per_instrument=args.notes_per_instrument)
        make_mini_musicnet(work / "mini" / "musicnet", seconds=args.musicnet_seconds)
    results = []
    for factor in (1, 4):
        grow_musicnet(work / "mini" / "musicnet", work / f"musicnet_x{factor}", factor)
        grow_nsynth(work / "mini" / "nsynth" / "nsynth-train", work / f"nsynth_x{factor}" / "nsynth-train", factor)
        for kind, data in (("musicnet", work / f"musicnet_x{factor}"), ("nsynth", work / f"nsynth_x{factor}")):
            cache = work / f"cache_{kind}_x{factor}"
            shutil.rmtree(cache, ignore_errors=True)
            modes = ("baseline", "ours") + (("ours-iter64", "ours-iter64+heap", "ours-collate64", "ours-collate64+heap")
                                            if kind == "nsynth" else ())
            runs = {mode: [] for mode in modes}
            for _ in range(args.repeats):  # modes alternate, so the machine's drift and the page cache hit all alike
                for mode in modes:
                    runs[mode].append(run_measurement(kind, mode, data, cache))
            for mode, measured in runs.items():
                median = sorted(measured, key=lambda r: r["rate"])[len(measured) // 2]
                results.append({**median, "mode": mode, "factor": factor})
    print(f"{'data':<10}{'size':>6}{'mode':>21}{'throughput':>22}{'peak RSS':>12}{'vs baseline':>13}")
    for result in results:
        unit = "s audio/s" if result["kind"] == "musicnet" else "clips/s"
        baseline = next(r for r in results if (r["kind"], r["factor"], r["mode"]) ==
                        (result["kind"], result["factor"], "baseline"))
        realtime = f" ({result['rate']:.0f}x rt)" if result["kind"] == "musicnet" else ""
        print(f"{result['kind']:<10}{'x' + str(result['factor']):>6}{result['mode']:>21}"
              f"{result['rate']:>10.0f} {unit:<9}{realtime:>0}{result['peak_rss_mb']:>10.0f} MB"
              f"{result['rate'] / baseline['rate']:>11.2f}x")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")


if __name__ == "__main__":
    main()
