"""What the allocator setting (`hf_music_w2v/allocator.py`) costs in peak memory on a fine-tuning run, and gains.

    .venv/bin/python benchmarks/allocator_memory.py --notes_per_instrument 16 --steps 30 --repeats 2

Renders a miniature NSynth (or reads `--nsynth_dir`), then runs the fine-tuning program (what `hf-music-w2v
finetune` launches) on the demo's small model (`preset:wav2vec2-small`, batch 64 notes, fp32) in fresh processes,
interleaved, each reporting its own peak RSS (VmHWM), the seconds its run took and its minor page faults. Arms:
- ours: the run's own setting (`keep_freed_memory()`, made when `train()` starts);
- glibc defaults: the thresholds named through `MALLOC_MMAP_THRESHOLD_`/`MALLOC_TRIM_THRESHOLD_` = 128 KiB (a run
  leaves an operator's setting alone; naming them also turns off glibc's dynamic raising of the mmap threshold);
- heap < 32 MB: the setting before (buffers below 32 MB from the heap, 256 MB of freed memory kept);
- ours + THP: with torch's transparent huge pages for large CPU tensors (`THP_MEM_ALLOC_ENABLE=1`).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from peak_memory import peak_rss_mb
from hf_music_w2v.training.finetune import main
start = time.perf_counter()
main(sys.argv[1:])
print("RESULT", json.dumps({"peak_rss_mib": peak_rss_mb(), "seconds": time.perf_counter() - start,
                  "minor_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt}))
"""
ARMS = {"ours": {}, "glibc defaults": {"MALLOC_MMAP_THRESHOLD_": str(128 << 10), "MALLOC_TRIM_THRESHOLD_": str(128 << 10)},
        "heap < 32 MB": {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)},
        "ours + THP": {"THP_MEM_ALLOC_ENABLE": "1"}}


def measure(arm: str, nsynth: Path, out: Path, args: argparse.Namespace) -> dict:
    here = str(Path(__file__).resolve().parent)  # for peak_memory
    env = {name: value for name, value in os.environ.items() if not name.startswith("MALLOC_")}
    env.pop("GLIBC_TUNABLES", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    env.pop("THP_MEM_ALLOC_ENABLE", None)
    env.update(ARMS[arm])
    command = [sys.executable, "-c", CHILD, "--model_name_or_path", "preset:wav2vec2-small",
               "--nsynth_dir", str(nsynth), "--output_dir", str(out), "--overwrite_output_dir",
               "--max_train_steps", str(args.steps), "--per_device_train_batch_size", str(args.batch_size),
               "--mixed_precision", "no", "--dataloader_num_workers", str(args.workers),
               "--cache_dir", str(out.parent / "cache"), "--checkpointing_steps", str(10 * args.steps)]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode:
        raise SystemExit(f"the {arm} run failed:\n{result.stderr[-4000:]}")
    return json.loads(next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))[7:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nsynth_dir", type=Path, help="an NSynth folder (default: render a miniature one)")
    parser.add_argument("--notes_per_instrument", type=int, default=24, help="size of the rendered NSynth")
    parser.add_argument("--steps", type=int, default=40, help="updates per run")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (their memory is not counted)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    args = parser.parse_args()
    arms = args.arms
    rows = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        nsynth = args.nsynth_dir
        if nsynth is None:
            from hf_music_w2v.data.mini import make_mini_nsynth

            nsynth = tmp / "nsynth"
            counts = make_mini_nsynth(nsynth, notes_per_instrument=args.notes_per_instrument)
            print(f"rendered a miniature NSynth: {counts}")
        for repeat in range(args.repeats):
            for arm in arms if repeat % 2 == 0 else arms[::-1]:
                rows[arm].append(measure(arm, nsynth, tmp / "run", args))
                print(f"{arm:<15} {json.dumps(rows[arm][-1])}", flush=True)
    print(f"\n{'setting':<15} {'peak RSS MiB (min-max)':>24} {'seconds (best)':>15} {'minor faults (min)':>19}")
    for arm in arms:
        peaks, seconds = [row["peak_rss_mib"] for row in rows[arm]], [row["seconds"] for row in rows[arm]]
        faults = min(row["minor_faults"] for row in rows[arm])
        print(f"{arm:<15} {min(peaks):>11.0f}-{max(peaks):<12.0f} {min(seconds):>15.1f} {faults:>19}")
    if "ours" in rows:
        for arm in arms:
            if arm != "ours":
                extra = max(row["peak_rss_mib"] for row in rows["ours"]) - max(row["peak_rss_mib"] for row in rows[arm])
                faster = min(row["seconds"] for row in rows[arm]) / min(row["seconds"] for row in rows["ours"])
                print(f"ours against {arm}: peak RSS {extra:+.0f} MiB, speed {faster:.2f}x")
    print("command: .venv/bin/python benchmarks/allocator_memory.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
