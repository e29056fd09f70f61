"""Pretraining throughput and memory: our update step vs a loop in the straightforward style, same model, same run.

    .venv/bin/python benchmarks/pretrain_throughput.py                       # CPU: the small demo config
    .venv/bin/python benchmarks/pretrain_throughput.py --config base --batch_size 8 --crop_seconds 15.6   # GPU
    .venv/bin/python benchmarks/pretrain_throughput.py --interleaved --steps 60   # CPU, one process, alternated

Each variant runs in a fresh process on synthetic audio (the data pipeline has its own benchmark), so model
FLOPs and memory are what is measured:
- baseline: masks and negatives from transformers' numpy helpers for each batch, fp32, plain AdamW, loss divided
  by the masked frames of the batch, no clipping, no compile;
- ours: `pretraining_batch` + `pretraining_update` through accelerate (per-example keyed masks, global
  normalisation, clipping); on a GPU also bf16 and fused AdamW, and with `--compile` torch.compile.
Prints seconds of audio per second, peak memory (CUDA allocator on a GPU, process RSS on CPU), the ratio against
the baseline and, on a GPU, model FLOPs utilisation (torch's FLOP counter over one update / time / peak FLOPs).
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
SAMPLING_RATE = 16_000
# Dense bf16 peak of the GPUs this project is benchmarked on (NVIDIA data sheets), for MFU.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def load_config(name: str):
    from transformers import Wav2Vec2Config

    from hf_music_w2v.presets import preset_config

    if name in ("base", "small"):
        return preset_config(f"wav2vec2-{name}")
    return Wav2Vec2Config.from_pretrained(name)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def baseline_step(model, optimizer, audio, config, device):
    import numpy as np
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

    batch, samples = audio.shape
    frames = int(model._get_feat_extract_output_lengths(samples))
    mask = _compute_mask_indices((batch, frames), config.mask_time_prob, config.mask_time_length,
                                 min_masks=config.mask_time_min_masks)
    negatives = _sample_negative_indices((batch, frames), config.num_negatives, mask)
    values = (audio - audio.mean(-1, keepdim=True)) / torch.sqrt(audio.var(-1, keepdim=True) + 1e-7)
    output = model(values.to(device), mask_time_indices=torch.from_numpy(mask).to(device),
                   sampled_negative_indices=torch.from_numpy(negatives.astype(np.int64)).to(device))
    (output.loss / int(mask.sum())).backward()
    optimizer.step()
    optimizer.zero_grad()


def measure(variant: str, args) -> dict:
    from accelerate import Accelerator
    from transformers import Wav2Vec2ForPreTraining

    from hf_music_w2v.training.pretrain import pretraining_batch, pretraining_update

    config = load_config(args.config)
    config.num_negatives = args.num_negatives
    torch.manual_seed(0)
    crop = round(args.crop_seconds * SAMPLING_RATE)
    audio = torch.randn(args.batch_size, crop)
    cuda = torch.cuda.is_available()
    ours = variant != "baseline"
    accelerator = Accelerator(mixed_precision="bf16" if ours and cuda else "no")
    device = accelerator.device
    model = Wav2Vec2ForPreTraining(config).to(device).train()
    model.set_gumbel_temperature(2.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.98), eps=1e-6,
                                  fused=ours and cuda)
    if ours:
        model, optimizer = accelerator.prepare(model, optimizer)
        if variant == "ours+compile":
            model = torch.compile(model)

    def step(index):
        if ours:
            batch = pretraining_batch(audio, [(0, index, i) for i in range(args.batch_size)], config)
            pretraining_update(accelerator, model, optimizer, [{k: v.to(device) for k, v in batch.items()}], 25.0)
        else:
            baseline_step(model, optimizer, audio, config, device)

    for index in range(args.warmup):
        step(index)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for index in range(args.steps):
        step(args.warmup + index)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    result = {"variant": variant, "device": torch.cuda.get_device_name() if cuda else "cpu",
              "audio_seconds_per_second": args.steps * args.batch_size * args.crop_seconds / seconds,
              "seconds_per_update": seconds / args.steps, "peak_memory_mb": peak_memory_mb(device)}
    if cuda:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            step(10_000)
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in result["device"]), None)
        result["model_tflops_per_update"] = counter.get_total_flops() / 1e12
        if peak and ours:
            result["mfu"] = counter.get_total_flops() / result["seconds_per_update"] / peak
    return result


def interleaved(args) -> None:
    """Both variants in one process, their updates alternated: per-update medians without process-to-process noise.

    Peak memory cannot be told apart this way, so this mode reports time only.
    """
    import statistics

    from accelerate import Accelerator
    from transformers import Wav2Vec2ForPreTraining

    from hf_music_w2v.training.pretrain import pretraining_batch, pretraining_update

    config = load_config(args.config)
    config.num_negatives = args.num_negatives
    crop = round(args.crop_seconds * SAMPLING_RATE)
    torch.manual_seed(0)
    audio = torch.randn(args.batch_size, crop)
    accelerator = Accelerator(mixed_precision="no", cpu=True)
    models, optimizers = {}, {}
    for variant in ("baseline", "ours"):
        torch.manual_seed(0)
        models[variant] = Wav2Vec2ForPreTraining(config).train()
        models[variant].set_gumbel_temperature(2.0)
        optimizers[variant] = torch.optim.AdamW(models[variant].parameters(), lr=1e-5, betas=(0.9, 0.98), eps=1e-6)
    models["ours"], optimizers["ours"] = accelerator.prepare(models["ours"], optimizers["ours"])

    def step(variant: str, index: int) -> None:
        if variant == "ours":
            batch = pretraining_batch(audio, [(0, index, i) for i in range(args.batch_size)], config)
            pretraining_update(accelerator, models["ours"], optimizers["ours"], [batch], 25.0)
        else:
            baseline_step(models["baseline"], optimizers["baseline"], audio, config, "cpu")

    seconds = {"baseline": [], "ours": []}
    for index in range(args.warmup + args.steps):
        for variant in seconds:
            start = time.perf_counter()
            step(variant, index)
            if index >= args.warmup:
                seconds[variant].append(time.perf_counter() - start)
    print(f"config {args.config}, batch {args.batch_size} x {args.crop_seconds} s, {args.num_negatives} negatives, "
          f"{args.steps} alternated updates per variant after {args.warmup}, one process, device cpu")
    base = statistics.median(seconds["baseline"])
    for variant, values in seconds.items():
        median = statistics.median(values)
        print(f"{variant:<10} median {median * 1e3:7.1f} ms/update  {args.batch_size * args.crop_seconds / median:7.1f} "
              f"audio s/s  {base / median:5.2f}x")
    print("command: " + " ".join([Path(sys.executable).name, "benchmarks/pretrain_throughput.py", *sys.argv[1:]]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="small", help="small (preset:wav2vec2-small), base, or a config path")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--crop_seconds", type=float, default=4.0)
    parser.add_argument("--num_negatives", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternate the variants this many times and report each one's median (noisy machines)")
    parser.add_argument("--compile", action="store_true", help="also measure ours under torch.compile")
    parser.add_argument("--interleaved", action="store_true",
                        help="CPU: both variants in one process, updates alternated (time only, no memory)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.interleaved:
        interleaved(args)
        return
    if args.measure:
        print(json.dumps(measure(args.measure, args)))
        return
    variants = ["baseline", "ours"] + (["ours+compile"] if args.compile else [])
    passthrough = [a for a in sys.argv[1:] if a != "--compile"]
    runs = {variant: [] for variant in variants}
    for _ in range(args.rounds):
        for variant in variants:
            run = subprocess.run([sys.executable, __file__, *passthrough, "--measure", variant], capture_output=True,
                                 text=True, check=True)
            runs[variant].append(json.loads(run.stdout.strip().splitlines()[-1]))
    results = [sorted(r, key=lambda x: x["audio_seconds_per_second"])[len(r) // 2] for r in runs.values()]
    base = results[0]["audio_seconds_per_second"]
    print(f"config {args.config}, batch {args.batch_size} x {args.crop_seconds} s, {args.num_negatives} negatives, "
          f"{args.steps} timed updates after {args.warmup}, median of {args.rounds} rounds, device {results[0]['device']}")
    print(f"{'variant':<14}{'audio s/s':>12}{'s/update':>11}{'peak MB':>10}{'vs baseline':>13}{'MFU':>8}")
    for r in results:
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-"
        print(f"{r['variant']:<14}{r['audio_seconds_per_second']:>12.1f}{r['seconds_per_update']:>11.3f}"
              f"{r['peak_memory_mb']:>10.0f}{r['audio_seconds_per_second'] / base:>12.2f}x{mfu:>8}")
    print("command: " + " ".join([Path(sys.executable).name, "benchmarks/pretrain_throughput.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
