"""Linear probe speed: pooled features cached once vs the frozen backbone run on audio every epoch, same run.

    .venv/bin/python benchmarks/probe_cache.py                     # mini-NSynth, the demo's small backbone
    .venv/bin/python benchmarks/probe_cache.py --nsynth_dir data/nsynth --model facebook/wav2vec2-base --epochs 5

Both variants run `hf_music_w2v.training.finetune --freeze_base_model` as separate processes on the same data and model
(the second with `--no_feature_cache`), and report its own timings from `all_results.json`: the one-off feature
pass, the training loop, and the wall time of the whole run including evaluation. The trained heads agree
(tests/test_finetuning.py checks that), so the ratio is the price of the audio passes alone.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(variant: str, args, model: str, random_init: bool, output_dir: Path) -> dict:
    command = [sys.executable, "-m", "hf_music_w2v.training.finetune", "--model_name_or_path", model,
               "--nsynth_dir", str(args.nsynth_dir), "--output_dir", str(output_dir), "--freeze_base_model",
               "--num_train_epochs", str(args.epochs), "--per_device_train_batch_size", str(args.batch_size),
               "--report_to", "none", "--checkpointing_steps", "100000"]
    if random_init:
        command.append("--random_init")
    if variant == "uncached":
        command.append("--no_feature_cache")
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    wall = time.perf_counter() - start
    results = json.loads((output_dir / "all_results.json").read_text())
    return {"variant": variant, "wall_seconds": wall, "feature_seconds": results["feature_cache_seconds"],
            "train_seconds": results["train_seconds"], "epochs": results["epochs"],
            "train_notes": results["train_notes"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nsynth_dir", default=None, help="default: a mini-NSynth rendered into a temporary folder")
    parser.add_argument("--model", default=None, help="default: the demo's small backbone with random weights")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.nsynth_dir is None:
            from hf_music_w2v.data.mini import make_mini_nsynth

            args.nsynth_dir = tmp / "nsynth"
            make_mini_nsynth(args.nsynth_dir, notes_per_instrument=8)
        model, random_init = args.model, False
        if model is None:
            from hf_music_w2v.presets import preset_config

            model, random_init = str(tmp / "small"), True
            preset_config("wav2vec2-small").save_pretrained(model)
        rows = [run(variant, args, model, random_init, tmp / variant) for variant in ("uncached", "cached")]
    for row in rows:
        per_epoch = (row["train_seconds"] + row["feature_seconds"]) / row["epochs"]
        print(f"{row['variant']:>8}: {row['epochs']} epochs over {row['train_notes']} notes; feature pass "
              f"{row['feature_seconds']:.2f} s, training loop {row['train_seconds']:.2f} s "
              f"({per_epoch:.3f} s per epoch incl. features), whole run {row['wall_seconds']:.1f} s")
    base, ours = rows
    print(f"speed-up of the cached probe: training {(base['train_seconds'] + base['feature_seconds']) / (ours['train_seconds'] + ours['feature_seconds']):.1f}x, "
          f"whole run {base['wall_seconds'] / ours['wall_seconds']:.1f}x")
    print("command: " + " ".join(["python", "benchmarks/probe_cache.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
