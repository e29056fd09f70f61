"""The pieces of wav2vec 2.0 pretraining that `training/pretrain.py` puts together and the tests check one by one.

Every random choice of a training example (its crop, its masked spans, its negatives) comes from a generator
keyed on the run's seed, the epoch and the example's index, and the batches of an epoch come in an order fixed
by the seed. Masks and negatives therefore do not depend on how examples are split into micro-batches or
processes, and a resumed run sees exactly what an uninterrupted one would have seen.
"""

import json
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Sampler
from transformers import Wav2Vec2Config
from transformers.utils import logging

from .hub import replace_directory

logger = logging.get_logger(__name__)

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE_NAME = "trainer_state.json"


def seeded_generator(*key: int) -> torch.Generator:
    """A CPU generator whose seed is a hash of the integers in `key` (e.g. seed, epoch, example index)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0] >> 1))


def num_feature_frames(config: Wav2Vec2Config, num_samples: int) -> int:
    """Frames the convolutional feature encoder of `config` makes from `num_samples` samples."""
    for kernel, stride in zip(config.conv_kernel, config.conv_stride, strict=True):
        num_samples = (num_samples - kernel) // stride + 1
    if num_samples < 1:
        raise ValueError(f"{num_samples} samples are too few for the feature encoder's receptive field")
    return num_samples


def gumbel_temperature(step: int, start: float = 2.0, end: float = 0.5, decay: float = 0.999995) -> float:
    """The quantizer's Gumbel-softmax temperature after `step` updates: `start * decay**step`, floored at `end`."""
    return max(start * decay**step, end)


def span_mask(num_frames: int, mask_prob: float, mask_length: int, min_masks: int,
              generator: torch.Generator) -> torch.Tensor:
    """Bool [frame] mask of spans of `mask_length` frames whose starts are drawn without replacement.

    As in wav2vec 2.0 (and transformers' `_compute_mask_indices`): `mask_prob * num_frames / mask_length` spans,
    rounded up or down at random, at least `min_masks`; spans may overlap, so `mask_prob` is an upper bound.
    """
    if mask_length > num_frames:
        raise ValueError(f"mask_time_length {mask_length} is longer than the {num_frames} frames of an example")
    num_starts = num_frames - mask_length + 1
    epsilon = float(torch.rand((), generator=generator))
    num_spans = max(int(mask_prob * num_frames / mask_length + epsilon), min_masks)
    num_spans = min(num_spans, num_frames // mask_length, num_starts)
    starts = torch.randperm(num_starts, generator=generator)[:num_spans]
    mask = torch.zeros(num_frames, dtype=torch.bool)
    mask[(starts[:, None] + torch.arange(mask_length)).flatten()] = True
    return mask


def sample_negatives(mask: torch.Tensor, num_negatives: int, generator: torch.Generator) -> torch.Tensor:
    """Long [frame, negative]: for each masked frame, `num_negatives` other masked frames of the same example.

    Drawn uniformly with replacement from the masked frames other than the frame itself; unmasked frames get
    index 0 (they are not scored). An example with a single masked frame uses that frame, which the model's
    loss then ignores as identical to the positive.
    """
    masked = mask.nonzero().squeeze(1)
    count = masked.numel()
    negatives = torch.zeros(mask.numel(), num_negatives, dtype=torch.long)
    if count < 2:
        negatives[masked] = masked[:, None]
        return negatives
    draws = torch.randint(0, count - 1, (count, num_negatives), generator=generator)
    draws += (draws >= torch.arange(count)[:, None]).long()  # skip the positive itself, keep the rest uniform
    negatives[masked] = masked[draws]
    return negatives


def normalize_audio(audio: torch.Tensor) -> torch.Tensor:
    """Zero mean and unit variance per example, as `Wav2Vec2FeatureExtractor(do_normalize=True)` does."""
    mean = audio.mean(dim=-1, keepdim=True)
    var = audio.var(dim=-1, keepdim=True, unbiased=False)
    return (audio - mean) / torch.sqrt(var + 1e-7)


def pretraining_batch(audio: torch.Tensor, keys: Sequence[Sequence[int]], config: Wav2Vec2Config,
                      crop_samples: int | None = None) -> dict[str, torch.Tensor]:
    """Model inputs for `Wav2Vec2ForPreTraining` from a batch of equal-length windows.

    audio: float [batch, sample]; keys: one tuple of ints per example that seeds its crop, mask and negatives.
    Each example is cropped at a random offset to `crop_samples` (all to the same length, so no padding and no
    attention mask: group-norm encoders such as wav2vec2-base must not see zero padding), normalised, masked
    with `config`'s span masking and given `config.num_negatives` negatives.
    """
    batch_size, num_samples = audio.shape
    if len(keys) != batch_size:
        raise ValueError(f"got {len(keys)} keys for a batch of {batch_size} examples")
    crop_samples = min(crop_samples or num_samples, num_samples)
    num_frames = num_feature_frames(config, crop_samples)
    crops, masks, negatives = [], [], []
    for row, key in enumerate(keys):
        generator = seeded_generator(*key)
        offset = int(torch.randint(0, num_samples - crop_samples + 1, (), generator=generator))
        crops.append(audio[row, offset : offset + crop_samples])
        mask = span_mask(num_frames, config.mask_time_prob, config.mask_time_length, config.mask_time_min_masks,
                         generator)
        masks.append(mask)
        negatives.append(sample_negatives(mask, config.num_negatives, generator) + row * num_frames)
    return {
        "input_values": normalize_audio(torch.stack(crops)),
        "mask_time_indices": torch.stack(masks),
        "sampled_negative_indices": torch.stack(negatives),
    }


class UpdateBatchSampler(Sampler[list[int]]):
    """One process's micro-batches of one epoch, in an order fixed by `seed` and `epoch`.

    The epoch's permutation of the examples is cut into global micro-batches of `batch_size * num_processes`;
    process `p` takes the p-th slice of each. So 2 processes x batch B see the same examples per update as
    1 process x 2B, and accumulating 4 micro-batches of B sees those of one batch of 4B. Examples that do not
    fill a whole update are dropped. `start` skips micro-batches already consumed (resume).
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int, epoch: int, num_processes: int = 1,
                 process_index: int = 0, accumulation_steps: int = 1, start: int = 0):
        self.num_examples, self.batch_size, self.seed, self.epoch = num_examples, batch_size, seed, epoch
        self.num_processes, self.process_index, self.start = num_processes, process_index, start
        per_update = batch_size * num_processes * accumulation_steps
        self.micro_batches = (num_examples // per_update) * accumulation_steps
        if self.micro_batches == 0:
            raise ValueError(
                f"{num_examples} training examples are fewer than one update needs ({per_update} = batch size "
                f"{batch_size} x {num_processes} processes x {accumulation_steps} accumulation steps)"
            )

    def __len__(self) -> int:
        return self.micro_batches - self.start

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.num_examples, generator=seeded_generator(self.seed, self.epoch)).tolist()
        global_size = self.batch_size * self.num_processes
        for micro in range(self.start, self.micro_batches):
            first = micro * global_size + self.process_index * self.batch_size
            yield order[first : first + self.batch_size]


@dataclass
class UpdateStats:
    """What one optimizer update did, summed or averaged over its micro-batches and all processes."""

    loss: float
    contrastive_loss: float
    diversity_loss: float
    perplexity: float
    grad_norm: float
    masked_frames: int
    total_frames: int
    skipped: bool


def pretraining_update(accelerator, model, optimizer, micro_batches: Sequence[dict], max_grad_norm: float | None
                       ) -> UpdateStats:
    """Forward and backward over `micro_batches`, then one clipped optimizer step (or a counted skip).

    `Wav2Vec2ForPreTraining` returns losses summed over masked frames. The gradient applied is that of the sum
    over every micro-batch on every process divided by the total number of masked frames of the update, counted
    before the first forward pass: each backward uses `loss * num_processes / total`, and DDP's all-reduce, which
    averages over processes, turns that into the exact global normalisation. Gradients are synchronised only on
    the last micro-batch. A non-finite loss or gradient norm skips the step; under fp16 the GradScaler decides.
    """
    local = torch.tensor([sum(int(b["mask_time_indices"].sum()) for b in micro_batches),
                          sum(b["mask_time_indices"].numel() for b in micro_batches)], device=accelerator.device)
    masked_frames, total_frames = (int(v) for v in accelerator.reduce(local, reduction="sum"))
    scale = accelerator.num_processes / max(masked_frames, 1)
    sums = torch.zeros(4, device=accelerator.device)  # loss, contrastive, diversity, perplexity
    for index, batch in enumerate(micro_batches):
        sync = index == len(micro_batches) - 1
        with nullcontext() if sync else accelerator.no_sync(model):
            output = model(**batch)
            accelerator.backward(output.loss * scale)
        sums += torch.stack([output.loss, output.contrastive_loss, output.diversity_loss,
                             output.codevector_perplexity]).detach().float()
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm or math.inf)
    sums = accelerator.reduce(sums, reduction="sum")
    loss, contrastive, diversity = (float(v) / max(masked_frames, 1) for v in sums[:3])
    perplexity = float(sums[3]) / (len(micro_batches) * accelerator.num_processes)
    grad_norm = float(grad_norm)
    skipped = step_if_finite(accelerator, optimizer, loss, grad_norm)
    return UpdateStats(loss, contrastive, diversity, perplexity, grad_norm, masked_frames, total_frames, skipped)


def step_if_finite(accelerator, optimizer, loss: float, grad_norm: float) -> bool:
    """Take the optimizer step unless the loss or gradient norm is non-finite; clear gradients; True if skipped.

    Under fp16 the GradScaler decides (it skips steps whose gradients overflowed).
    """
    if accelerator.scaler is not None:
        optimizer.step()
        skipped = accelerator.optimizer_step_was_skipped or not math.isfinite(loss)
    else:
        skipped = not (math.isfinite(loss) and math.isfinite(grad_norm))
        if not skipped:
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return skipped


class TrainingDiverged(RuntimeError):
    """Raised after too many consecutive updates with a non-finite loss or gradient."""


class NonFiniteGuard:
    """Counts skipped updates and gives up after `max_consecutive` in a row."""

    def __init__(self, max_consecutive: int):
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total = 0

    def update(self, skipped: bool, step: int) -> None:
        if not skipped:
            self.consecutive = 0
            return
        self.consecutive += 1
        self.total += 1
        logger.warning(f"non-finite loss or gradient before update {step + 1}: update skipped "
                       f"({self.consecutive} in a row, {self.total} in all)")
        if self.consecutive >= self.max_consecutive:
            raise TrainingDiverged(
                f"{self.consecutive} consecutive updates had a non-finite loss or gradient norm; stopping at update "
                f"{step}. The last checkpoint was written before this and is intact. Lower --learning_rate, raise "
                f"--warmup_steps or use bf16 instead of fp16, then resume with --resume_from_checkpoint latest."
            )


def feature_grad_multiplier(model: torch.nn.Module, scale: float):
    """Scale the gradient flowing into the convolutional feature encoder by `scale` (fairseq's feature_grad_mult).

    Returns the hook handle; `scale == 1` registers nothing and returns None.
    """
    if scale == 1.0:
        return None

    def hook(module, inputs, output):
        return output * scale + output.detach() * (1.0 - scale)

    return model.wav2vec2.feature_extractor.register_forward_hook(hook)


@dataclass
class TrainerState:
    """Where a run is, saved next to accelerate's state in every checkpoint."""

    step: int = 0
    epoch: int = 0
    micro_batches_in_epoch: int = 0
    skipped_updates: int = 0
    audio_seconds_seen: float = 0.0
    train_seconds: float = 0.0
    gumbel_temperature: float = 2.0
    last_metrics: dict = field(default_factory=dict)

    @classmethod
    def read(cls, checkpoint: Path) -> "TrainerState":
        return cls(**json.loads((Path(checkpoint) / TRAINER_STATE_NAME).read_text()))


def check_launch(accelerator) -> None:
    """Refuse to run when the launcher started more processes than accelerate joined into one job.

    On a CPU-only machine a multi-process accelerate config that goes through torchrun (MULTI_GPU) without
    ACCELERATE_USE_CPU=true leaves every process alone in a job of one: each would train on all the data and
    write the same output folder, racing the others.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise SystemExit(
            f"error: the launcher started {launched} processes but accelerate set up a job of "
            f"{accelerator.num_processes}, so each would train alone and overwrite the others' output. On a "
            "machine without GPUs set ACCELERATE_USE_CPU=true for a multi-process launch (README, 'Pretraining').")


def checkpoint_path(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR / f"step_{step:08d}"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first (a folder counts once its trainer state is in it)."""
    folder = Path(output_dir) / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("step_*") if (p / TRAINER_STATE_NAME).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def resolve_checkpoint(value: str | None, output_dir: str | os.PathLike) -> Path | None:
    """`--resume_from_checkpoint`: None, 'latest' (the newest in output_dir, or None if there is none) or a path."""
    if value is None:
        return None
    if value == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(value)
    if not (path / TRAINER_STATE_NAME).is_file():
        raise FileNotFoundError(f"--resume_from_checkpoint {value}: not a checkpoint folder (no {TRAINER_STATE_NAME})")
    return path


def save_checkpoint(accelerator, output_dir: str | os.PathLike, state: TrainerState, keep_last: int | None) -> Path:
    """`accelerator.save_state` plus the trainer state, written to a hidden folder and renamed into place.

    A crash in the middle leaves a hidden `.step_*.tmp` folder that is never resumed from; the previous
    checkpoints stay untouched. Only then are checkpoints beyond the newest `keep_last` deleted. Called on
    every process.
    """
    target = checkpoint_path(output_dir, state.step)
    staging = target.with_name(f".{target.name}.tmp")
    if accelerator.is_main_process:
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (staging / TRAINER_STATE_NAME).write_text(json.dumps(asdict(state), indent=2))
        replace_directory(staging, target)
        if keep_last:
            for old in list_checkpoints(output_dir)[:-keep_last]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return target


def restore_checkpoint(accelerator, value: str | None, output_dir: str | os.PathLike, state):
    """`--resume_from_checkpoint`: load accelerate's state and return the trainer state saved with it.

    `state` is the fresh state of the run (a `TrainerState` or any dataclass with `read` and `step`); it is
    returned unchanged when there is nothing to resume from.
    """
    checkpoint = resolve_checkpoint(value, output_dir)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        state = type(state).read(checkpoint)
        accelerator.print(f"resumed from {checkpoint} at update {state.step}")
    elif value == "latest":
        accelerator.print(f"no checkpoint in {output_dir}; starting from scratch")
    return state


def reset_metrics_log(accelerator, path: str | os.PathLike, step: int) -> Path:
    """The run's JSON-lines metrics log, cut back to its entries up to `step`: a resumed run rewrites the rest."""
    path = Path(path)
    if accelerator.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step] \
            if path.exists() else []
        path.write_text("".join(line + "\n" for line in kept))
    return path
