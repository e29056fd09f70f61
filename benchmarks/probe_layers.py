"""Layer-wise probing cost: all layers vs the last layer alone, and a cached probe epoch vs an epoch over audio.

    .venv/bin/python benchmarks/probe_layers.py                          # wav2vec2-base architecture, mini-NSynth
    .venv/bin/python benchmarks/probe_layers.py --model facebook/wav2vec2-base --nsynth_dir data/nsynth --max_notes 2000

Each repetition runs `probe_model` twice in this process, interleaved, each with an empty feature cache: every
layer (13 for BASE), then the last layer alone, with the same probes (linear + MLP, and the weighted sum for
all layers). The ratio of their wall times is the price of probing every layer. Separately it times one probe
epoch on the cached features (linear and MLP on every layer at once, the way `probe` trains them) against one
epoch over audio, which needs at least the frozen encoder's forward pass over the train split (the feature
pass's train part, measured in the same run).
"""

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: wav2vec2-base's architecture, random weights")
    parser.add_argument("--nsynth_dir", default=None, help="default: mini-NSynth (3 notes per instrument)")
    parser.add_argument("--max_notes", type=int, default=None, help="notes per split")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from hf_music_w2v.probing import (
        ProbeSettings,
        ProbeSplits,
        load_encoder,
        probe_model,
        split_features,
        split_notes,
        standardised,
        task_labels,
        train_probes,
    )

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.nsynth_dir is None:
            from hf_music_w2v.data.mini import make_mini_nsynth

            args.nsynth_dir = str(tmp / "nsynth")
            make_mini_nsynth(args.nsynth_dir, notes_per_instrument=3)
        if args.model is None:
            from transformers import Wav2Vec2Model

            from hf_music_w2v.presets import preset_config

            args.model = str(tmp / "base")
            torch.manual_seed(0)
            Wav2Vec2Model(preset_config("wav2vec2-base")).save_pretrained(args.model)
        settings = ProbeSettings(seeds=tuple(args.seeds), max_notes=args.max_notes)
        encoder, _ = load_encoder(args.model)
        last = encoder.config.num_hidden_layers
        del encoder

        walls, parts = {"all": [], "last": []}, {"all": [], "last": []}
        for repeat in range(args.repeats):
            for name, layers in (("all", None), ("last", (last,))):
                run_settings = ProbeSettings(**{**settings.__dict__, "layers": layers})
                report, wall = timed(probe_model, args.model, args.nsynth_dir, tmp / f"out-{name}-{repeat}", run_settings,
                                feature_cache_dir=tmp / f"features-{name}-{repeat}")
                walls[name].append(wall)
                parts[name].append(report["timing"])
                print(f"repeat {repeat}: {name} layers {wall:.1f} s ({report['timing']})", flush=True)

        # One epoch over audio needs at least the encoder's forward pass over the train split.
        encoder, extractor = load_encoder(args.model)
        layers = list(range(last + 1))
        notes = {split: split_notes(args.nsynth_dir, split, settings, None) for split in ("train", "valid", "test")}
        _, audio_epoch = timed(split_features, encoder, extractor, notes["train"], layers, settings.batch_size,
                               tmp / "features-epoch", "weights", "train features")
        features = {split: split_features(encoder, extractor, n, layers, settings.batch_size, tmp / "features-epoch",
                                          "weights", f"{split} features") for split, n in notes.items()}
        labels = {split: task_labels(n, "instrument", 128)[0] for split, n in notes.items()}
        data = ProbeSplits(standardised(features, slice(None)), labels, 11)
        epoch_settings = ProbeSettings(max_epochs=5, patience=100)
        probe_epoch = {}
        for kind in ("linear", "mlp"):
            _, seconds = timed(train_probes, kind, data, 0, epoch_settings, False)
            probe_epoch[kind] = seconds / epoch_settings.max_epochs

    ratio = [a / b for a, b in zip(walls["all"], walls["last"])]
    report = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "model": args.model if not args.model.startswith(str(tmp)) else "wav2vec2-base architecture, random weights",
        "notes": {split: len(n) for split, n in notes.items()},
        "layers": len(layers), "all_layers_seconds": walls["all"], "last_layer_seconds": walls["last"],
        "all_over_last": ratio, "timing": parts,
        "audio_epoch_seconds": audio_epoch,
        "probe_epoch_seconds": probe_epoch,
        "probe_epoch_over_audio_epoch": {kind: seconds / audio_epoch for kind, seconds in probe_epoch.items()},
    }
    print(json.dumps(report, indent=2))
    print(f"all {len(layers)} layers / last layer: {', '.join(f'{r:.2f}x' for r in ratio)}; probe epoch / audio "
          f"epoch: linear {probe_epoch['linear'] / audio_epoch:.4f}, mlp {probe_epoch['mlp'] / audio_epoch:.4f}")


if __name__ == "__main__":
    main()
