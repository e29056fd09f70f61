"""Will a training run fit in memory? An estimate made before the first update, checked against what is free.

The estimate, in bytes, for a model of P parameters of which T train (4 bytes each: mixed precision keeps the
weights, gradients and AdamW's moments in fp32):

    weights 4P + gradients 4T + AdamW's two moments 8T + 256 MiB of workspace (kernels' scratch, the allocator)
    + 4 bytes x B examples per micro-batch x the elements one example keeps for the backward pass:
        feature encoder (when it trains)  3 x sum_i C_i x L_i          input, output and GELU of conv layer i
                                                                      (C_i channels, L_i frames of the crop)
        Transformer                       N x F x (10 H + 4 I)         F frames, N layers of width H and
                                                                      feed-forward width I
        attention                         N x 2 x A x F^2              A heads' probabilities and dropout mask
        pretraining                       4 x F x G x V + 2 x F^2      codevector logits and Gumbel softmax
                                                                      (G groups of V), the contrastive scores
                                          + 2 x F x G x V x D/G        the quantizer's codevector product and its
                                                                      gradient, held for a moment (D: codevector_dim)

With `--gradient_checkpointing` each conv and Transformer layer keeps its input only (C_(i-1) x L_(i-1) and
F x H per example) and recomputes the rest in the backward pass one layer at a time: four times the largest
layer's activations (the recomputed layer and the gradients through it, as measured) are added instead. A frozen feature encoder keeps nothing, but its
largest layer exists for a moment. The kept part is within about 20% of the bytes autograd actually saves
(`saved_tensors_hooks`, wav2vec2-base and the small preset, 1 to 8 s crops); README "Memory" compares the whole
estimate with the peak resident memory of real updates.

Free memory is `/proc/meminfo`'s MemAvailable, or what the cgroup's memory.max (v1: memory.limit_in_bytes)
leaves if that is less, or `torch.cuda.mem_get_info` on a GPU; `HF_MUSIC_W2V_MEMORY_LIMIT` (e.g. `24GB`,
`512MiB`, or bytes) replaces it. On a CPU the weights, already built, are in use and so not counted again, and
the processes of one machine share its memory.
"""

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..audio import SAMPLING_RATE
from ..errors import SettingsError

#: Sets the memory the check compares against, instead of what the system reports.
MEMORY_LIMIT_VARIABLE = "HF_MUSIC_W2V_MEMORY_LIMIT"
#: Kernels' scratch space and what the allocator keeps between updates, beyond the terms of the estimate.
WORKSPACE = 256 * 2**20
UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """Bytes of `24GB`, `512MiB`, `1e9`: decimal units, or binary ones with an i."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in UNITS:
        raise SettingsError(f"{MEMORY_LIMIT_VARIABLE}={text!r}: expected a size such as 24GB, 512MiB or bytes")
    try:
        return int(float(match.group(1)) * UNITS[match.group(2).lower()])
    except ValueError:
        raise SettingsError(f"{MEMORY_LIMIT_VARIABLE}={text!r}: expected a size such as 24GB, 512MiB or bytes"
                            ) from None


def gigabytes(size: float) -> str:
    """`30.0 GB`, `380 MB`, `100 kB`."""
    if size >= 1e9:
        return f"{size / 1e9:.1f} GB"
    return f"{size / 1e6:.0f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"


def cgroup_room() -> int | None:
    """What this process's cgroup still lets it allocate (limit minus usage), or None without a limit."""
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            limit = Path("/sys/fs/cgroup", limit_file).read_text().strip()
            usage = int(Path("/sys/fs/cgroup", usage_file).read_text())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # v1 writes "no limit" as a huge number, v2 as "max"
            return max(int(limit) - usage, 0)
    return None


def available_memory(device: torch.device) -> tuple[int, str]:
    """(bytes free for this run, where that figure comes from)."""
    if os.environ.get(MEMORY_LIMIT_VARIABLE):
        return parse_size(os.environ[MEMORY_LIMIT_VARIABLE]), MEMORY_LIMIT_VARIABLE
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0], f"free on {device}"
    free, source = None, None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free, source = int(line.split()[1]) * 1024, "MemAvailable"
    except OSError:
        pass
    room = cgroup_room()
    if room is not None and (free is None or room < free):
        free, source = room, "the cgroup's memory limit"
    if free is None:
        return math.inf, "unknown (no /proc/meminfo)"
    return free, source


def conv_frames(config, samples: int) -> list[int]:
    """Frames out of each conv layer of `config`'s feature encoder for a crop of `samples` samples."""
    frames = []
    for kernel, stride in zip(config.conv_kernel, config.conv_stride, strict=True):
        samples = max((samples - kernel) // stride + 1, 0)
        frames.append(samples)
    return frames


@dataclass
class MemoryEstimate:
    """The bytes of one process's training state and of one micro-batch's activations."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    examples: str  # what one micro-batch holds, for the message
    workspace: int = WORKSPACE

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.workspace

    def describe(self) -> str:
        return (f"weights {gigabytes(self.weights)} + gradients {gigabytes(self.gradients)} + AdamW states "
                f"{gigabytes(self.optimizer)} + activations {gigabytes(self.activations)} for {self.examples} + "
                f"workspace {gigabytes(self.workspace)}")


def estimate_training_memory(model: torch.nn.Module, batch_size: int, samples: int, pretraining: bool,
                             gradient_checkpointing: bool = False) -> MemoryEstimate:
    """The module docstring's estimate for `model` (a wav2vec2 with `.config`) on micro-batches of `batch_size`
    crops of `samples` samples; `pretraining` adds the quantizer and the contrastive loss."""
    config = model.config
    parameters = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    encoder = getattr(model, "wav2vec2", model)
    conv_trains = any(p.requires_grad for p in encoder.feature_extractor.parameters())
    backbone_trains = any(p.requires_grad for p in encoder.encoder.parameters())

    lengths = conv_frames(config, samples)
    frames = lengths[-1]
    channels = list(config.conv_dim)
    inputs = [samples, *lengths[:-1]]
    conv_outputs = [3 * c * n for c, n in zip(channels, lengths, strict=True)]
    hidden, layers, heads = config.hidden_size, config.num_hidden_layers, config.num_attention_heads
    layer = frames * (10 * hidden + 4 * config.intermediate_size) + 2 * heads * frames**2
    if not backbone_trains:
        per_example = max(conv_outputs) + layer  # a probe: nothing is kept, the largest layer exists for a moment
    elif gradient_checkpointing:
        kept = layers * frames * hidden + (sum(c * n for c, n in zip([1, *channels[:-1]], inputs, strict=True))
                                           if conv_trains else 0)
        # The layer being recomputed and the gradients through it: 4x its kept values matched measured peaks.
        per_example = kept + 4 * max(max(conv_outputs), layer)
    else:
        per_example = layers * layer + (sum(conv_outputs) if conv_trains else max(conv_outputs))
    if pretraining:
        groups, codes = config.num_codevector_groups, config.num_codevectors_per_group
        per_example += 4 * frames * groups * codes + 2 * frames**2
        per_example += 2 * frames * groups * codes * (config.codevector_dim // groups)
    seconds = samples / SAMPLING_RATE
    return MemoryEstimate(weights=4 * parameters, gradients=4 * trained, optimizer=8 * trained,
                          activations=4 * batch_size * per_example,
                          examples=f"{batch_size} x {seconds:g} s of audio per micro-batch")


def check_memory(accelerator, estimate: MemoryEstimate, options: str, skip: bool) -> None:
    """Stop with one line when `estimate` does not fit in the memory free for this process; `options` say what
    to change. With `skip` (`--skip_memory_check`) an estimate that does not fit is a warning."""
    device = accelerator.device
    free, source = available_memory(device)
    need = estimate.total
    note = ""
    if device.type != "cuda":
        need -= estimate.weights  # already built, so already in use: not in the free figure
        sharing = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if sharing > 1:
            need *= sharing
            note = f" for {sharing} processes"
    message = (f"this run needs about {gigabytes(need)} more memory{note} ({estimate.describe()}; an estimate, "
               f"README 'Memory') and {gigabytes(free)} is available ({source})")
    if need <= free:
        accelerator.print(f"memory: {message}")
        return
    if skip:
        accelerator.print(f"memory: {message}; --skip_memory_check: starting anyway")
        return
    raise SettingsError(f"{message}. To fit, try {options}; or --skip_memory_check to start anyway")


def enable_gradient_checkpointing(model) -> None:
    """`--gradient_checkpointing`: recompute each layer in the backward pass. Non-reentrant checkpoints restore
    the random state, so dropout draws the same masks and the update is the one computed without them."""
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


__all__ = ["MEMORY_LIMIT_VARIABLE", "MemoryEstimate", "available_memory", "check_memory",
           "enable_gradient_checkpointing", "estimate_training_memory", "parse_size"]
