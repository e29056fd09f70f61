"""`hf-music-w2v predict` throughput vs the audio-classification pipeline called once per file, same run.

    .venv/bin/python benchmarks/predict_throughput.py                       # CPU, the demo's small model
    .venv/bin/python benchmarks/predict_throughput.py --preset wav2vec2-base --files 16 --rounds 3
    .venv/bin/python benchmarks/predict_throughput.py --model runs/w2v-nsynth --files 256 --device cuda

All read the same WAV files (4 s mono notes at 44.1 kHz, so all resample) and run the same model:
- baseline: `pipeline("audio-classification", model=...)` called on each file in turn (one head, fp32), given
  the file's samples read with soundfile (the pipeline resamples them);
- ours: `AudioRunner` as `predict` uses it (files read and resampled, windows batched, both heads,
  `inference_mode`), at each `--batch_sizes` in fp32 and, where the device has native bf16, in bf16 autocast.
Rounds alternate between all variants; the median of the rounds is reported in files per second.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a fine-tuned model folder (default: a random --preset model)")
    parser.add_argument("--preset", default="wav2vec2-small", help="wav2vec2-small (the demo's) or wav2vec2-base")
    parser.add_argument("--files", type=int, default=64)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    from transformers import AutoFeatureExtractor, AutoModel, pipeline

    import hf_music_w2v
    from hf_music_w2v.audio import harmonic_note
    from hf_music_w2v.inference import AudioRunner, class_probabilities
    from hf_music_w2v.precision import bf16_is_native
    from hf_music_w2v.presets import preset_overrides

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = args.model
        if model_dir is None:
            torch.manual_seed(0)
            config = hf_music_w2v.MusicWav2Vec2Config(**preset_overrides(args.preset))
            model_dir = hf_music_w2v.save_pretrained_atomic(hf_music_w2v.Wav2Vec2ForMusicClassification(config),
                                                            tmp / "model")
        paths = []
        for index in range(args.files):
            path = tmp / f"note_{index:04d}.wav"
            sf.write(path, harmonic_note(36 + index % 60, seconds=4.0, sampling_rate=44_100), 44_100)
            paths.append(str(path))
        model = AutoModel.from_pretrained(model_dir)
        extractor = AutoFeatureExtractor.from_pretrained(model_dir)
        classifier = pipeline("audio-classification", model=model, feature_extractor=extractor, device=args.device)

        def baseline():
            # The pipeline decodes file names with an ffmpeg binary; soundfile + the raw-array input needs none.
            for path in paths:
                audio, rate = sf.read(path, dtype="float32")
                classifier({"raw": audio, "sampling_rate": rate}, top_k=1)

        def ours(runner):
            return lambda: [r.outputs for r in runner.run(paths)]

        variants = {"pipeline per file": baseline}
        precisions = ["fp32"] + (["bf16"] if bf16_is_native(args.device) else [])
        for precision in precisions:
            for batch_size in args.batch_sizes:
                runner = AudioRunner(model, extractor, class_probabilities, batch_size=batch_size, device=args.device,
                                     precision=precision)
                variants[f"predict {precision} batch {batch_size}"] = ours(runner)
        timings = {name: [] for name in variants}
        for function in variants.values():
            function()  # warm-up
        for _ in range(args.rounds):
            for name, function in variants.items():
                start = time.perf_counter()
                function()
                timings[name].append(time.perf_counter() - start)
    rates = {name: args.files / statistics.median(values) for name, values in timings.items()}
    base = rates["pipeline per file"]
    print(f"model {args.model or args.preset}, {args.files} files of 4 s at 44.1 kHz, median of {args.rounds} "
          f"alternating rounds, device {args.device}, torch threads {torch.get_num_threads()}")
    for name, rate in rates.items():
        print(f"{name:>24}: {rate:7.1f} files/s  {rate / base:5.2f}x")
    print("command: " + " ".join(["python", "benchmarks/predict_throughput.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
