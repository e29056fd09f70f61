"""`hf-music-w2v predict` throughput vs the audio-classification pipeline called once per file, same run.

    .venv/bin/python benchmarks/predict_throughput.py                       # CPU, the demo's small model
    .venv/bin/python benchmarks/predict_throughput.py --model runs/w2v-nsynth --files 256 --device cuda

Both read the same WAV files (4 s mono notes at 44.1 kHz, so both resample) and run the same model:
- baseline: `pipeline("audio-classification", model=...)` called on each file in turn (one head), given the
  file's samples read with soundfile (the pipeline resamples them);
- ours: `AudioRunner` as `predict` uses it: files read and resampled, windows batched, both heads.
Rounds alternate between the two; the median of the rounds is reported in files per second.
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
    parser.add_argument("--model", default=None, help="a fine-tuned model folder (default: the demo's small model)")
    parser.add_argument("--files", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    from transformers import AutoFeatureExtractor, AutoModel, pipeline

    import hf_music_w2v
    from hf_music_w2v.audio import harmonic_note
    from hf_music_w2v.inference import AudioRunner, class_probabilities
    from hf_music_w2v.presets import preset_overrides

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = args.model
        if model_dir is None:
            torch.manual_seed(0)
            model = hf_music_w2v.Wav2Vec2ForMusicClassification(hf_music_w2v.MusicWav2Vec2Config(**preset_overrides("wav2vec2-small")))
            model_dir = hf_music_w2v.save_pretrained_atomic(model, tmp / "model")
        paths = []
        for index in range(args.files):
            path = tmp / f"note_{index:04d}.wav"
            sf.write(path, harmonic_note(36 + index % 60, seconds=4.0, sampling_rate=44_100), 44_100)
            paths.append(str(path))
        model = AutoModel.from_pretrained(model_dir)
        extractor = AutoFeatureExtractor.from_pretrained(model_dir)
        runner = AudioRunner(model, extractor, class_probabilities, batch_size=args.batch_size, device=args.device)
        classifier = pipeline("audio-classification", model=model, feature_extractor=extractor, device=args.device)

        def ours():
            return [r.outputs for r in runner.run(paths)]

        def baseline():
            # The pipeline decodes file names with an ffmpeg binary; soundfile + the raw-array input needs none.
            results = []
            for path in paths:
                audio, rate = sf.read(path, dtype="float32")
                results.append(classifier({"raw": audio, "sampling_rate": rate}, top_k=1))
            return results

        timings = {"pipeline per file": [], "predict (batched)": []}
        ours(), baseline()  # warm-up
        for _ in range(args.rounds):
            for name, function in (("pipeline per file", baseline), ("predict (batched)", ours)):
                start = time.perf_counter()
                function()
                timings[name].append(time.perf_counter() - start)
    rates = {name: args.files / statistics.median(values) for name, values in timings.items()}
    for name, rate in rates.items():
        print(f"{name:>18}: {rate:7.1f} files/s (median of {args.rounds} rounds, {args.files} files of 4 s at 44.1 kHz)")
    print(f"ratio predict / pipeline: {rates['predict (batched)'] / rates['pipeline per file']:.2f}x "
          f"on {args.device}, batch {args.batch_size}, torch threads {torch.get_num_threads()}")
    print("command: " + " ".join(["python", "benchmarks/predict_throughput.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
