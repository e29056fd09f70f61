"""Pretraining throughput, FLOPs and MFU: the engine's update with each speed option vs a straightforward loop.

    .venv/bin/python benchmarks/pretrain_throughput.py                                  # the demo's small model
    .venv/bin/python benchmarks/pretrain_throughput.py --config base --batch_size 1 --crop_seconds 15.6 --steps 5
    .venv/bin/python benchmarks/pretrain_throughput.py --config base --batch_size 8 --crop_seconds 15.6   # GPU

Every variant is built in one process on the same synthetic audio (the data pipeline has its own benchmark) and
their updates are interleaved, so drift of the machine hits all alike and the ratios come from one run:
- baseline: masks and negatives from transformers' numpy helpers per batch, fp32, transformers' contrastive loss,
  AdamW with torch's default kernel, loss divided by the masked frames of the batch, no clipping, no compile;
- ours: `pretraining_batch` + `pretraining_update` (keyed masks, global normalisation, clipping), fp32, transformers'
  loss, for-loop AdamW; then ours with one option each: the fast contrastive loss, fused AdamW, bf16 autocast,
  torch.compile of the static-shape parts; ours with the engine's defaults on hardware with native bf16 (fast
  loss, fused AdamW, bf16); and ours with all four (`--no_compile` leaves compile out).
bf16 is autocast around the update, as accelerate's mixed precision does around the forward pass.

Reported per variant: median seconds per update and audio-seconds per second, the ratio against the baseline,
MFU (model FLOPs of one update, counted by torch's FlopCounterMode on the eager fp32 model, per second, over the
peak of this device in the variant's dtype, measured in this run with a large matmul) and peak memory (the CUDA
allocator's peak during the variant's own updates; on CPU the peak RSS (VmHWM) of a fresh process running that
variant alone for two updates, skipped with `--no_memory`; `--memory_only` measures that alone).
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from peak_memory import peak_rss_mb

SAMPLING_RATE = 16_000
OPTIONS = ("fast_loss", "fused", "bf16", "compile")


#: The engine's defaults where bf16 is native: `--mixed_precision auto` and `--adamw_implementation fused`.
DEFAULTS = {"fast_loss", "fused", "bf16"}


def variant_names(compile_: bool) -> list[str]:
    options = [o for o in OPTIONS if compile_ or o != "compile"]
    return ["baseline", "ours"] + [f"ours+{o}" for o in options] + ["ours+defaults"] + (["ours+all"] if compile_ else [])


def options_of(variant: str, compile_: bool) -> set[str]:
    if variant == "ours+defaults":
        return set(DEFAULTS)
    if variant == "ours+all":
        return set(OPTIONS)
    return {variant.split("+", 1)[1]} if "+" in variant else set()


def load_config(name: str, num_negatives: int):
    from transformers import Wav2Vec2Config

    from hf_music_w2v.presets import preset_config

    config = preset_config(f"wav2vec2-{name}") if name in ("base", "small") else Wav2Vec2Config.from_pretrained(name)
    config.num_negatives = num_negatives
    return config


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measured_peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large square matmul in `dtype` on `device`, best of a few: the attainable peak."""
    size = 8192 if device.type == "cuda" else 2048
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    repeats = 20 if device.type == "cuda" else 3
    best = float("inf")
    for _ in range(4):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / repeats)
    return 2 * size**3 / best


class Variant:
    """One model and optimizer with the settings of `name`, and its update step."""

    def __init__(self, name: str, config, audio: torch.Tensor, accelerator, compile_: bool):
        from transformers import Wav2Vec2ForPreTraining

        from hf_music_w2v.training.pretrain import compile_static_parts

        self.name, self.config, self.audio, self.accelerator = name, config, audio, accelerator
        self.options = options_of(name, compile_)
        device = accelerator.device
        torch.manual_seed(0)
        model = Wav2Vec2ForPreTraining(config).to(device).train()
        model.set_gumbel_temperature(2.0)
        if name == "baseline":
            kernel = {}
        else:
            kernel = {"fused": True} if "fused" in self.options else {"foreach": False}
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.98), eps=1e-6, **kernel)
        if "compile" in self.options:
            compile_static_parts(model)
        if name == "baseline":
            self.model = model
        else:
            self.model, self.optimizer = accelerator.prepare(model, self.optimizer)
        self.seconds: list[float] = []
        self.peak_memory_mb = None

    def autocast(self):
        device = self.accelerator.device.type
        return torch.autocast(device, dtype=torch.bfloat16) if "bf16" in self.options else nullcontext()

    def step(self, index: int) -> None:
        if self.name == "baseline":
            self.baseline_step()
            return
        from hf_music_w2v.training.pretrain import pretraining_batch, pretraining_update

        batch = pretraining_batch(self.audio, [(0, index, i) for i in range(len(self.audio))], self.config)
        batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
        with self.autocast():
            pretraining_update(self.accelerator, self.model, self.optimizer, [batch], 25.0,
                               fast_loss="fast_loss" in self.options)

    def baseline_step(self) -> None:
        import numpy as np
        from transformers.models.wav2vec2.modeling_wav2vec2 import (
            _compute_mask_indices,
            _sample_negative_indices,
        )

        model, config, device = self.model, self.config, self.accelerator.device
        batch, samples = self.audio.shape
        frames = int(model._get_feat_extract_output_lengths(samples))
        mask = _compute_mask_indices((batch, frames), config.mask_time_prob, config.mask_time_length,
                                     min_masks=config.mask_time_min_masks)
        negatives = _sample_negative_indices((batch, frames), config.num_negatives, mask)
        audio = self.audio
        values = (audio - audio.mean(-1, keepdim=True)) / torch.sqrt(audio.var(-1, keepdim=True) + 1e-7)
        output = model(values.to(device), mask_time_indices=torch.from_numpy(mask).to(device),
                       sampled_negative_indices=torch.from_numpy(negatives.astype(np.int64)).to(device))
        (output.loss / int(mask.sum())).backward()
        self.optimizer.step()
        self.optimizer.zero_grad()

    def timed_step(self, index: int) -> float:
        device = self.accelerator.device
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        self.step(index)
        synchronize(device)
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**20
            self.peak_memory_mb = max(self.peak_memory_mb or 0.0, peak)
        return time.perf_counter() - start


def model_flops_per_update(config, audio: torch.Tensor, device: torch.device) -> float:
    """FLOPs of one fp32 eager update of the model (forward and backward), counted by torch's FlopCounterMode."""
    from accelerate import Accelerator
    from torch.utils.flop_counter import FlopCounterMode

    variant = Variant("ours", config, audio, Accelerator(mixed_precision="no", cpu=device.type == "cpu"), False)
    counter = FlopCounterMode(display=False)
    with counter:
        variant.step(10_000)
    return float(counter.get_total_flops())


def memory_of(variant: str, args) -> float:
    """Peak RSS (MB) of a fresh process that builds `variant` alone and runs two updates of it."""
    command = [sys.executable, __file__, "--config", args.config, "--batch_size", str(args.batch_size),
               "--crop_seconds", str(args.crop_seconds), "--num_negatives", str(args.num_negatives),
               "--memory_of", variant] + ([] if args.compile else ["--no_compile"])
    run = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="small", help="small (preset:wav2vec2-small), base, or a config path")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--crop_seconds", type=float, default=4.0)
    parser.add_argument("--num_negatives", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=3, help="untimed updates per variant (compilation happens here)")
    parser.add_argument("--steps", type=int, default=20, help="timed updates per variant, interleaved")
    parser.add_argument("--no_compile", dest="compile", action="store_false", help="leave torch.compile out")
    parser.add_argument("--no_memory", dest="memory", action="store_false",
                        help="CPU: skip the per-variant fresh processes that measure peak RSS")
    parser.add_argument("--memory_only", action="store_true", help="CPU: only the per-variant peak RSS")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--memory_of", help=argparse.SUPPRESS)
    args = parser.parse_args()

    from accelerate import Accelerator

    config = load_config(args.config, args.num_negatives)
    torch.manual_seed(0)
    audio = torch.randn(args.batch_size, round(args.crop_seconds * SAMPLING_RATE))
    cuda = torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision="no", cpu=not cuda)
    device = accelerator.device
    if args.memory_of:
        variant = Variant(args.memory_of, config, audio, accelerator, args.compile)
        variant.step(0)
        variant.step(1)
        print(peak_rss_mb())
        return
    if args.memory_only:
        for name in variant_names(args.compile):
            print(f"{name:<16}{memory_of(name, args):>9.0f} MB peak RSS")
        return

    names = variant_names(args.compile)
    peaks = {torch.float32: measured_peak_flops(device, torch.float32),
             torch.bfloat16: measured_peak_flops(device, torch.bfloat16)}
    flops = model_flops_per_update(config, audio, device)
    variants = [Variant(name, config, audio, accelerator, args.compile) for name in names]
    for variant in variants:
        for index in range(args.warmup):
            variant.step(index)
    for index in range(args.steps):
        for variant in variants:
            variant.seconds.append(variant.timed_step(args.warmup + index))
    if not cuda and args.memory:
        for variant in variants:
            variant.peak_memory_mb = memory_of(variant.name, args)

    device_name = torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)"
    audio_seconds = args.batch_size * args.crop_seconds
    base = statistics.median(variants[0].seconds)
    rows = []
    for variant in variants:
        seconds = statistics.median(variant.seconds)
        dtype = torch.bfloat16 if "bf16" in variant.options else torch.float32
        rows.append({"variant": variant.name, "seconds_per_update": seconds,
                     "audio_seconds_per_second": audio_seconds / seconds, "vs_baseline": base / seconds,
                     "mfu": flops / seconds / peaks[dtype], "peak_memory_mb": variant.peak_memory_mb})
    print(f"config {args.config}, batch {args.batch_size} x {args.crop_seconds} s, {args.num_negatives} negatives, "
          f"{args.steps} interleaved updates per variant after {args.warmup}, device {device_name}")
    print(f"model FLOPs per update: {flops / 1e9:.1f} GFLOP; measured peak: {peaks[torch.float32] / 1e9:.0f} GFLOP/s "
          f"fp32, {peaks[torch.bfloat16] / 1e9:.0f} GFLOP/s bf16")
    print(f"{'variant':<16}{'s/update':>10}{'audio s/s':>11}{'vs baseline':>13}{'MFU':>8}{'peak MB':>9}")
    for row in rows:
        memory = f"{row['peak_memory_mb']:.0f}" if row["peak_memory_mb"] else "-"
        print(f"{row['variant']:<16}{row['seconds_per_update']:>10.3f}{row['audio_seconds_per_second']:>11.1f}"
              f"{row['vs_baseline']:>12.2f}x{100 * row['mfu']:>7.1f}%{memory:>9}")
    print("command: " + " ".join([Path(sys.executable).name, "benchmarks/pretrain_throughput.py", *sys.argv[1:]]))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "config": args.config, "batch_size": args.batch_size, "crop_seconds": args.crop_seconds,
            "device": device_name, "model_flops_per_update": flops,
            "peak_flops": {"fp32": peaks[torch.float32], "bf16": peaks[torch.bfloat16]}, "variants": rows},
            indent=2))


if __name__ == "__main__":
    main()
