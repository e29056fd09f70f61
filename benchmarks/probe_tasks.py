"""Several probe tasks in one command vs one command per task, same tasks, same model, same run.

    .venv/bin/python benchmarks/probe_tasks.py                   # mini tasks, the demo's small model, random weights
    .venv/bin/python benchmarks/probe_tasks.py --tasks tasks/gtzan tasks/mtt tasks/emomusic --model runs/w2v-musicnet

Runs `hf-music-w2v probe MODEL --tasks A B C` once, then `--tasks A`, `--tasks B`, `--tasks C` as three processes,
each variant with an empty feature cache of its own (the three separate commands share theirs, as they would share
the user's cache), and reports the wall times and their ratio. By default the tasks are the package's mini tasks
(`write_mini_tasks`): NSynth register and pitch (the same notes) and the MusicNet instruments (other clips).
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


def probe(model: str, tasks: list[str], output_dir: Path, feature_dir: Path, args) -> float:
    command = [sys.executable, "-m", "hf_music_w2v.cli", "probe", model, "--tasks", *tasks, "--output_dir",
               str(output_dir), "--feature_cache_dir", str(feature_dir), "--probe", *args.probe, "--seeds", "0",
               "--max_epochs", str(args.max_epochs)]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=None, help="task folders (default: the mini tasks)")
    parser.add_argument("--model", default=None, help="default: the demo's small model with random weights")
    parser.add_argument("--notes_per_instrument", type=int, default=2, help="mini-NSynth's size (default 2)")
    parser.add_argument("--musicnet_seconds", type=float, default=12.0, help="mini-MusicNet's length (default 12)")
    parser.add_argument("--probe", nargs="+", default=["linear"])
    parser.add_argument("--max_epochs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tasks = args.tasks
        if tasks is None:
            from hf_music_w2v.data.mini import make_mini_musicnet, make_mini_nsynth
            from hf_music_w2v.data.mini_tasks import write_mini_tasks

            make_mini_nsynth(tmp / "mini" / "nsynth", notes_per_instrument=args.notes_per_instrument)
            make_mini_musicnet(tmp / "mini" / "musicnet", seconds=args.musicnet_seconds)
            written = write_mini_tasks(tmp / "mini", tmp / "tasks")
            tasks = [str(written[f"marble/{name}"]) for name in ("nsynth_register", "nsynth_pitch",
                                                                 "musicnet_instruments")]
        model = args.model
        if model is None:
            from transformers import Wav2Vec2Model

            from hf_music_w2v.presets import preset_config

            model = str(tmp / "small")
            Wav2Vec2Model(preset_config("wav2vec2-small")).save_pretrained(model)
        together = probe(model, tasks, tmp / "together", tmp / "features_together", args)
        apart = [probe(model, [task], tmp / f"apart_{index}", tmp / "features_apart", args)
                 for index, task in enumerate(tasks)]
        clips = json.loads((tmp / "together" / "probe_summary.json").read_text())["tasks"]
    for name, task in clips.items():
        print(f"{name}: {task['kind']}, clips {task['clips']}")
    print(f"one command, {len(tasks)} tasks: {together:.1f} s")
    print(f"{len(tasks)} commands, one task each: " + " + ".join(f"{seconds:.1f}" for seconds in apart)
          + f" = {sum(apart):.1f} s")
    print(f"separate / together: {sum(apart) / together:.2f}x")
    print("command: " + " ".join(["python", "benchmarks/probe_tasks.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
