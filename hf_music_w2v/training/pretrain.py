"""wav2vec 2.0 pretraining (Ragano et al. 2022: MusicNet, 20 s windows every 10 s), as a task of the training engine.

    hf-music-w2v pretrain --musicnet_dir data/musicnet --output_dir runs/w2v-musicnet
    accelerate launch -m hf_music_w2v.training.pretrain --musicnet_dir data/musicnet --output_dir runs/w2v-musicnet

Defaults follow wav2vec 2.0 BASE as the paper used it: 20 s windows every 10 s, 0.65 span masking of 10 frames,
100 negatives, Gumbel temperature 2 -> 0.5, AdamW 5e-4 (0.9, 0.98), linear warmup and decay. `--recipe mini`
is the demo's small model on 4 s crops. Every random choice of a training example (its crop, its masked spans,
its negatives) comes from a generator keyed on the run's seed, the epoch and the example's index, so masks and
negatives do not depend on how examples are split into micro-batches or processes, and each update is
normalised by the masked frames of all its micro-batches on all processes.
"""

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.logging import get_logger
from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining

from ..audio import SAMPLING_RATE, normalize_audio
from ..errors import naming
from ..hub import (
    CARD_PLACEHOLDER,
    load_pretrained,
    music_feature_extractor,
    save_pretrained_into,
    write_model_card,
)
from ..presets import load_wav2vec2_config
from .arguments import RunArguments, command_line, option, parse_arguments, settings_of
from .engine import (
    TrainingTask,
    UpdateBatchSampler,
    UpdateResult,
    extension_text,
    no_sync_unless_last,
    run_summary,
    seeded_generator,
    step_if_finite,
    train,
)
from .memory import check_memory, enable_gradient_checkpointing, estimate_training_memory

logger = get_logger(__name__)

#: What a pretraining run that does not fit in memory can change.
MEMORY_OPTIONS = ("--gradient_checkpointing, a smaller --per_device_train_batch_size (with --gradient_accumulation_steps "
                  "to keep the update's size), shorter crops (--random_crop_seconds), or --recipe mini")


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


def contrastive_loss(projected_states: torch.Tensor, projected_quantized_states: torch.Tensor,
                     mask_time_indices: torch.Tensor, sampled_negative_indices: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """wav2vec 2.0's contrastive loss summed over masked frames: `Wav2Vec2ForPreTraining`'s value, computed cheaply.

    projected_states, projected_quantized_states: [batch, frame, feature] (the model's outputs);
    mask_time_indices: bool [batch, frame]; sampled_negative_indices: long [batch, frame, negative], indices into
    the flattened [batch * frame] frames, each within its own example.

    transformers gathers the negatives' vectors for every frame, masked or not ([negative + 1, batch, frame,
    feature]), and takes cosine similarities there. Here one batched product of unit vectors scores every frame
    against every frame of its example, and the masked frames' positives and negatives are picked from it: the
    same logits, a small fraction of the memory traffic. Negatives equal to their positive (the same code in every
    group) are excluded as transformers excludes them, compared through ids of unique vectors instead of vector by
    vector. Computed in fp32 whatever the autocast dtype: under bf16 this is more precise than transformers' loss,
    which rounds its logits to bf16, so the two agree to fp32 rounding in fp32 only. (On a GPU the masked frames'
    indices cost one device-to-host sync per micro-batch, as transformers' `.any()` does.)
    """
    batch_size, num_frames, _ = projected_quantized_states.shape
    with torch.autocast(projected_states.device.type, enabled=False):
        predicted = torch.nn.functional.normalize(projected_states.float(), dim=-1, eps=1e-8)
        targets = torch.nn.functional.normalize(projected_quantized_states.float(), dim=-1, eps=1e-8)
        similarity = torch.bmm(predicted, targets.transpose(1, 2)) / temperature  # [batch, frame, frame]
        masked = mask_time_indices.reshape(-1).nonzero().squeeze(1)
        rows, frames = masked // num_frames, masked % num_frames
        negatives = sampled_negative_indices.reshape(batch_size * num_frames, -1)[masked]  # [masked, negative]
        local = negatives - rows[:, None] * num_frames
        if ((local < 0) | (local >= num_frames)).any():  # one device-to-host sync, not two
            raise ValueError("sampled_negative_indices must point to frames of the same example")
        logits = similarity[rows[:, None], frames[:, None], torch.cat([frames[:, None], local], dim=1)]
        with torch.no_grad():
            flat = projected_quantized_states.detach().reshape(batch_size * num_frames, -1)
            vector_id = torch.unique(flat, dim=0, return_inverse=True)[1]
            same_as_positive = vector_id[negatives] == vector_id[masked][:, None]
        logits = torch.cat([logits[:, :1], logits[:, 1:].masked_fill(same_as_positive, float("-inf"))], dim=1)
        positive = torch.zeros(len(masked), dtype=torch.long, device=logits.device)
        return torch.nn.functional.cross_entropy(logits, positive, reduction="sum")


@dataclass
class PretrainingLosses:
    """The losses of one micro-batch, summed over its masked frames (as `Wav2Vec2ForPreTraining` reports them)."""

    loss: torch.Tensor
    contrastive_loss: torch.Tensor
    diversity_loss: torch.Tensor
    codevector_perplexity: torch.Tensor


def pretraining_losses(model, batch: dict, config: Wav2Vec2Config, fast_loss: bool = True) -> PretrainingLosses:
    """One micro-batch's forward pass and losses: with `fast_loss`, `contrastive_loss` replaces transformers' own."""
    if not fast_loss:
        output = model(**batch)
        return PretrainingLosses(output.loss, output.contrastive_loss, output.diversity_loss,
                                 output.codevector_perplexity)
    mask = batch["mask_time_indices"]
    output = model(batch["input_values"], mask_time_indices=mask)
    contrastive = contrastive_loss(output.projected_states, output.projected_quantized_states, mask,
                                   batch["sampled_negative_indices"], config.contrastive_logits_temperature)
    codevectors = config.num_codevectors_per_group * config.num_codevector_groups
    diversity = (codevectors - output.codevector_perplexity) / codevectors * mask.sum()
    return PretrainingLosses(contrastive + config.diversity_loss_weight * diversity, contrastive, diversity,
                             output.codevector_perplexity)


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


def pretraining_update(accelerator, model, optimizer, micro_batches: Sequence[dict], max_grad_norm: float | None,
                       fast_loss: bool = True) -> UpdateStats:
    """Forward and backward over `micro_batches`, then one clipped optimizer step (or a counted skip).

    `Wav2Vec2ForPreTraining` returns losses summed over masked frames. The gradient applied is that of the sum
    over every micro-batch on every process divided by the total number of masked frames of the update, counted
    before the first forward pass: each backward uses `loss * num_processes / total`, and DDP's all-reduce, which
    averages over processes, turns that into the exact global normalisation. Gradients are synchronised only on
    the last micro-batch. A non-finite loss or gradient norm skips the step; under fp16 the GradScaler decides.
    `fast_loss=False` uses transformers' own contrastive loss (the same value, computed more slowly).
    """
    local = torch.tensor([sum(int(b["mask_time_indices"].sum()) for b in micro_batches),
                          sum(b["mask_time_indices"].numel() for b in micro_batches)], device=accelerator.device)
    masked_frames, total_frames = (int(v) for v in accelerator.reduce(local, reduction="sum"))
    scale = accelerator.num_processes / max(masked_frames, 1)
    sums = torch.zeros(4, device=accelerator.device)  # loss, contrastive, diversity, perplexity
    config = accelerator.unwrap_model(model).config
    for index, batch in enumerate(micro_batches):
        with no_sync_unless_last(accelerator, model, index, len(micro_batches)):
            output = pretraining_losses(model, batch, config, fast_loss)
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


def compile_static_parts(model: Wav2Vec2ForPreTraining) -> None:
    """`--torch_compile` for pretraining: compile, in place, the parts whose shapes do not depend on the data.

    Those are the convolutional feature encoder, the Transformer and the quantizer. transformers writes the masked
    frames with a boolean index (`hidden_states[mask] = ...`), whose data-dependent shape would split a whole-model
    graph there anyway; the contrastive loss, which picks the masked frames, stays eager for the same reason.
    """
    for part in (model.wav2vec2.feature_extractor, model.wav2vec2.encoder, model.quantizer):
        part.compile()


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
class PretrainArguments:
    """Data and model options of pretraining (the shared ones are `RunArguments`)."""

    musicnet_dir: str | None = option(None, "MusicNet in its official layout (train_data/, train_labels/, ...)")
    audio_dir: str | None = option(None, "instead of --musicnet_dir: every audio file under this folder (a speech "
                                         "corpus such as LibriSpeech or mini-speech, any rate or channel count), "
                                         "cut into the same windows")
    segment_seconds: float = option(20.0, "window length in seconds")
    hop_seconds: float = option(10.0, "hop between windows in seconds")
    random_crop_seconds: float | None = option(None, "train on a random crop of this length from each window "
                                                     "(unset: the whole window)")
    streaming: bool = option(False, "decode recordings on the fly instead of caching them (datasets too big for "
                                    "the disk cache); recordings are sharded across processes")
    shuffle_buffer_size: int = option(1000, "window shuffle buffer with --streaming")
    config_name: str = option("preset:wav2vec2-base", "wav2vec2 architecture: preset:wav2vec2-base, "
                                                      "preset:wav2vec2-small, a folder, a config.json or a Hub id")
    init_from: str | None = option(None, "start from these wav2vec2 weights (folder or Hub id), e.g. a speech "
                                         "model; their architecture replaces --config_name")
    mask_time_prob: float = option(0.65, "share of frames starting a masked span")
    mask_time_length: int = option(10, "masked span length in frames")
    mask_time_min_masks: int = option(2, "minimum masked spans per example")
    num_negatives: int = option(100, "distractors per masked frame")
    contrastive_logits_temperature: float = option(0.1, "temperature of the contrastive logits")
    diversity_loss_weight: float = option(0.1, "weight of the codebook diversity loss")
    max_gumbel_temperature: float = option(2.0, "Gumbel-softmax temperature at the start")
    min_gumbel_temperature: float = option(0.5, "Gumbel-softmax temperature floor")
    gumbel_temperature_decay: float = option(0.999995, "temperature factor per update")
    feature_grad_mult: float = option(0.1, "gradient scale into the convolutional feature encoder (fairseq BASE: 0.1)")

    def problems(self, run: RunArguments) -> list[str]:
        problems = []
        if (self.musicnet_dir is None) == (self.audio_dir is None):
            problems.append("give the pretraining audio as --musicnet_dir or --audio_dir (exactly one)")
        if self.segment_seconds <= 0 or self.hop_seconds <= 0:
            problems.append("--segment_seconds and --hop_seconds must be positive")
        if self.random_crop_seconds is not None and not 0 < self.random_crop_seconds <= self.segment_seconds:
            problems.append("--random_crop_seconds must be positive and at most --segment_seconds")
        return problems


#: Pretraining's values of the shared options: wav2vec 2.0 BASE (fairseq) as the paper used it.
PRETRAIN_DEFAULTS = dict(per_device_train_batch_size=8, learning_rate=5e-4, adam_beta2=0.98, adam_epsilon=1e-6,
                         max_grad_norm=25.0, warmup_steps=32_000, num_train_epochs=100, checkpointing_steps="1000",
                         checkpoints_total_limit=3)


def build_config(args: PretrainArguments) -> Wav2Vec2Config:
    option = "--init_from" if args.init_from else "--config_name"
    with naming(option, args.init_from or args.config_name):
        config = load_wav2vec2_config(args.init_from or args.config_name)
    for name in ("mask_time_prob", "mask_time_length", "mask_time_min_masks", "num_negatives",
                 "contrastive_logits_temperature", "diversity_loss_weight"):
        setattr(config, name, getattr(args, name))
    config.architectures = ["Wav2Vec2ForPreTraining"]
    return config


def streamed_micro_batches(windows, batch_size: int, epoch: int, seed: int, process_index: int, start: int):
    """(keys, audio) micro-batches from a streaming dataset, skipping the first `start` (resume re-reads them)."""
    windows.set_epoch(epoch)
    batch = []
    for position, row in enumerate(windows):
        batch.append(torch.from_numpy(row["audio"]["array"]))
        if len(batch) == batch_size:
            micro = position // batch_size
            if micro >= start:
                first = micro * batch_size
                keys = [(seed, epoch, process_index, first + i) for i in range(batch_size)]
                yield keys, torch.stack(batch)
            batch = []


class PretrainTask(TrainingTask):
    """Self-supervised wav2vec 2.0 on MusicNet windows: contrastive loss over masked frames."""

    name = "pretraining"

    def __init__(self, args: PretrainArguments, run: RunArguments, argv: list[str]):
        super().__init__(args, run, argv)
        self.streaming = args.streaming
        self.config = build_config(args)
        self.segment_samples = round(args.segment_seconds * SAMPLING_RATE)
        self.crop_samples = round(args.random_crop_seconds * SAMPLING_RATE) if args.random_crop_seconds \
            else self.segment_samples
        self.collapse_warned = False

    def settings(self) -> dict:
        return settings_of(self.args, self.run)

    def build_model(self):
        if self.args.init_from:
            with naming("--init_from", self.args.init_from):
                model = load_pretrained(Wav2Vec2ForPreTraining, self.args.init_from, config=self.config)
        else:
            model = Wav2Vec2ForPreTraining(self.config)
        feature_grad_multiplier(model, self.args.feature_grad_mult)
        if self.run.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        self.model = model
        return model

    def prepare_data(self, accelerator) -> None:
        # Before the first update, so a run that cannot fit says so instead of being killed by the kernel.
        estimate = estimate_training_memory(self.model, self.run.per_device_train_batch_size, self.crop_samples,
                                            pretraining=True, gradient_checkpointing=self.run.gradient_checkpointing)
        check_memory(accelerator, estimate, MEMORY_OPTIONS, self.run.skip_memory_check)

    @property
    def find_unused_parameters(self) -> bool:
        return self.config.layerdrop > 0

    def compile_model(self, model) -> None:
        compile_static_parts(model)

    def load_data(self, accelerator) -> None:
        from ..data import load_audio_folder, load_musicnet

        # 20 s windows every 10 s, resampled to 16 kHz once and memory-mapped (or decoded on the fly).
        options = dict(segment_seconds=self.args.segment_seconds, hop_seconds=self.args.hop_seconds,
                       streaming=self.args.streaming, cache_dir=self.run.cache_dir)
        if self.args.audio_dir:
            windows = load_audio_folder(self.args.audio_dir, **options)
        else:
            windows = load_musicnet(self.args.musicnet_dir, "train", **options)
        if self.streaming:
            from datasets.distributed import split_dataset_by_node

            windows = split_dataset_by_node(windows, accelerator.process_index, accelerator.num_processes)
            self.windows = windows.shuffle(seed=self.run.seed, buffer_size=self.args.shuffle_buffer_size)
        else:
            self.windows = windows.select_columns(["audio"])

    def sampler(self, accelerator, epoch: int, start: int = 0) -> UpdateBatchSampler:
        return UpdateBatchSampler(len(self.windows), self.run.per_device_train_batch_size, self.run.seed, epoch,
                                  accelerator.num_processes, accelerator.process_index,
                                  self.run.gradient_accumulation_steps, start)

    def micro_batches_per_epoch(self, accelerator) -> int | None:
        return None if self.streaming else self.sampler(accelerator, 0).micro_batches

    def micro_batches(self, accelerator, epoch: int, start: int) -> Iterator[dict]:
        seed = self.run.seed
        if self.streaming:
            keyed = streamed_micro_batches(self.windows, self.run.per_device_train_batch_size, epoch, seed,
                                           accelerator.process_index, start)
        else:
            sampler = self.sampler(accelerator, epoch, start)
            loader = torch.utils.data.DataLoader(
                self.windows, batch_sampler=sampler, num_workers=self.run.dataloader_num_workers,
                collate_fn=lambda rows: torch.stack([torch.tensor(r["audio"]["array"]) for r in rows]))
            keyed = (([(seed, epoch, i) for i in indices], audio) for indices, audio in zip(sampler, loader))
        for keys, audio in keyed:
            inputs = pretraining_batch(audio, keys, self.config, self.crop_samples)
            yield {k: v.to(accelerator.device) for k, v in inputs.items()}

    def audio_seconds_per_update(self, accelerator) -> float:
        return (accelerator.num_processes * self.run.gradient_accumulation_steps
                * self.run.per_device_train_batch_size * self.crop_samples / SAMPLING_RATE)

    def gumbel_temperature(self, step: int) -> float:
        return gumbel_temperature(step, self.args.max_gumbel_temperature, self.args.min_gumbel_temperature,
                                  self.args.gumbel_temperature_decay)

    def before_update(self, model, state) -> None:
        model.set_gumbel_temperature(self.gumbel_temperature(state.step))

    def update(self, accelerator, model, optimizer, micro_batches, state) -> UpdateResult:
        stats = pretraining_update(accelerator, model, optimizer, micro_batches, self.run.max_grad_norm)
        # Perplexity is summed over the codebook groups, so it bottoms out at the number of groups.
        groups = self.config.num_codevector_groups
        if not stats.skipped and not self.collapse_warned and stats.perplexity < 1.5 * groups:
            self.collapse_warned = True
            logger.warning(f"codevector perplexity {stats.perplexity:.2f} at update {state.step + 1} is close to "
                           f"its floor of {groups}: the codebook may have collapsed (try a larger effective batch "
                           "or a lower learning rate)", main_process_only=True)
        return UpdateResult(stats.skipped, stats.loss, {
            "loss": stats.loss,
            "contrastive_loss": stats.contrastive_loss,
            "diversity_loss": stats.diversity_loss,
            "codevector_perplexity": stats.perplexity,
            "gumbel_temperature": self.gumbel_temperature(state.step),
            "grad_norm": stats.grad_norm,
            "masked_frames_percent": 100.0 * stats.masked_frames / stats.total_frames,
        })

    def finish(self, accelerator, model, state, layout) -> dict:
        if not accelerator.is_main_process:
            return {}
        unwrapped = accelerator.unwrap_model(model)
        save_pretrained_into(unwrapped, layout.root, music_feature_extractor(self.config))
        run = self.run
        write_model_card(
            layout.root, "pretrained",
            tags=["audio", "music", "wav2vec2", "self-supervised", "pretraining"],
            datasets=[] if self.args.audio_dir else ["musicnet"],
            data_name=f"the audio under {Path(self.args.audio_dir).name}/" if self.args.audio_dir else "MusicNet",
            command=command_line("pretrain", self.argv),
            model_id=run.hub_model_id or CARD_PLACEHOLDER,
            steps=state.step,
            extended=extension_text(state.extensions),
            hours_of_audio=state.audio_seconds_seen / 3600,
            train_hours=state.train_seconds / 3600,
            skipped_updates=state.skipped_updates,
            final=state.last_metrics,
            config=self.config,
            args={**vars(self.args), **vars(run)},
            num_processes=accelerator.num_processes,
            effective_batch_seconds=self.audio_seconds_per_update(accelerator),
            num_parameters=sum(p.numel() for p in unwrapped.parameters()),
        )
        return {**{f"final_{k}": v for k, v in state.last_metrics.items() if k != "step"}, **run_summary(state),
                "audio_hours_seen": state.audio_seconds_seen / 3600}


def parse_args(argv: list[str] | None = None) -> tuple[PretrainArguments, RunArguments]:
    return parse_arguments("pretrain", PretrainArguments, PRETRAIN_DEFAULTS, __doc__.splitlines()[0], argv)


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    args, run = parse_args(argv)
    if args.init_from and args.config_name != PretrainArguments.config_name:
        raise SystemExit("error: --config_name and --init_from both set the architecture; give one")
    return train(PretrainTask(args, run, argv))


if __name__ == "__main__":
    from ..errors import report_user_errors
    from .launch import INTERRUPTED

    raise SystemExit(report_user_errors(main, INTERRUPTED))
