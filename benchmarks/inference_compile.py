"""torch.compile for inference: one forward of the classifier on a batch of 4 s windows, eager vs compiled.

    .venv/bin/python benchmarks/inference_compile.py --preset wav2vec2-small --batch_size 8 --steps 10
    .venv/bin/python benchmarks/inference_compile.py --preset wav2vec2-base --batch_size 4 --steps 4

Both run under `inference_mode`, in fp32 and in bf16 autocast, with the same random weights and input; prints the
median forward time of each, the ratio, the compilation time, and the largest difference between their logits.
"""

import argparse
import statistics
import sys
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="wav2vec2-small")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    import hf_music_w2v
    from hf_music_w2v.precision import autocast
    from hf_music_w2v.presets import preset_overrides

    torch.manual_seed(0)
    config = hf_music_w2v.MusicWav2Vec2Config(**preset_overrides(args.preset))
    model = hf_music_w2v.Wav2Vec2ForMusicClassification(config).eval()
    compiled = torch.compile(model, dynamic=False)
    windows = torch.randn(args.batch_size, 64_000)

    def forward(network, precision):
        with torch.inference_mode(), autocast(precision, torch.device("cpu")):
            return network(input_values=windows)

    start = time.perf_counter()
    for precision in ("fp32", "bf16"):
        forward(compiled, precision)
    print(f"{args.preset}, batch {args.batch_size} x 4 s, torch threads {torch.get_num_threads()}; "
          f"compilation {time.perf_counter() - start:.1f} s")
    for precision in ("fp32", "bf16"):
        medians = {}
        for name, network in (("eager", model), ("compiled", compiled)):
            forward(network, precision)
            times = []
            for _ in range(args.steps):
                start = time.perf_counter()
                forward(network, precision)
                times.append(time.perf_counter() - start)
            medians[name] = statistics.median(times)
        eager, ours = forward(model, precision), forward(compiled, precision)
        difference = max((getattr(eager, name) - getattr(ours, name)).abs().max().item()
                         for name in ("pitch_logits", "instrument_logits"))
        print(f"{precision}: eager {medians['eager'] * 1000:.0f} ms, compiled {medians['compiled'] * 1000:.0f} ms, "
              f"{medians['eager'] / medians['compiled']:.2f}x; largest logit difference {difference:.2g}")
    print("command: " + " ".join(["python", "benchmarks/inference_compile.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
