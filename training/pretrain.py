"""Self-supervised wav2vec 2.0 pretraining on MusicNet (Ragano et al. 2022), as an accelerate training loop.

    accelerate launch training/pretrain.py --musicnet_dir data/musicnet --output_dir runs/w2v-musicnet

One CPU, one GPU, many GPUs or many nodes: the same command under the matching `accelerate config` (README).
Defaults follow wav2vec 2.0 BASE as the paper used it: 20 s windows every 10 s, 0.65 span masking of 10
frames, 100 negatives, Gumbel temperature 2 -> 0.5, AdamW 5e-4 (0.9, 0.98), linear warmup and decay.
Every update is normalised by the masked frames of all its micro-batches on all processes, checkpoints are
resumable exactly (`--resume_from_checkpoint latest`), and the result is a `save_pretrained` folder with a
model card.
"""

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration
from tqdm.auto import tqdm
from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining, get_linear_schedule_with_warmup

from hf_music_w2v import music_feature_extractor, wav2vec2_base_config
from hf_music_w2v.data import load_musicnet
from hf_music_w2v.hub import SAMPLING_RATE, push_folder, save_pretrained_into, write_model_card
from hf_music_w2v.pretraining import (
    NonFiniteGuard,
    TrainerState,
    TrainingDiverged,
    UpdateBatchSampler,
    check_launch,
    feature_grad_multiplier,
    gumbel_temperature,
    pretraining_batch,
    pretraining_update,
    reset_metrics_log,
    restore_checkpoint,
    save_checkpoint,
    seeded_generator,
)

logger = get_logger(__name__)
REPO_ROOT = Path(__file__).resolve().parent.parent
METRICS_FILE = "pretrain_metrics.jsonl"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data = parser.add_argument_group("data")
    data.add_argument("--musicnet_dir", required=True, help="MusicNet in its official layout (train_data/, ...)")
    data.add_argument("--segment_seconds", type=float, default=20.0, help="window length (default 20)")
    data.add_argument("--hop_seconds", type=float, default=10.0, help="hop between windows (default 10)")
    data.add_argument("--random_crop_seconds", type=float, default=None,
                      help="train on a random crop of this length from each window (default: the whole window)")
    data.add_argument("--streaming", action="store_true",
                      help="decode recordings on the fly instead of caching them (datasets too big for the disk "
                           "cache); recordings are sharded across processes")
    data.add_argument("--shuffle_buffer_size", type=int, default=1000, help="window shuffle buffer with --streaming")
    data.add_argument("--dataloader_num_workers", type=int, default=0, help="DataLoader worker processes")
    data.add_argument("--cache_dir", default=None, help="resampled-audio cache (default $HF_MUSIC_W2V_CACHE)")

    model = parser.add_argument_group("model")
    model.add_argument("--config_name", default=None,
                       help="wav2vec2 config: a folder, a config.json or a Hub id (default: the wav2vec2-base preset)")
    model.add_argument("--init_from", default=None,
                       help="start from these wav2vec2 weights (folder or Hub id), e.g. a speech model")
    model.add_argument("--mask_time_prob", type=float, default=0.65, help="share of frames starting a masked span")
    model.add_argument("--mask_time_length", type=int, default=10, help="masked span length in frames")
    model.add_argument("--mask_time_min_masks", type=int, default=2, help="minimum masked spans per example")
    model.add_argument("--num_negatives", type=int, default=100, help="distractors per masked frame")
    model.add_argument("--contrastive_logits_temperature", type=float, default=0.1)
    model.add_argument("--diversity_loss_weight", type=float, default=0.1)
    model.add_argument("--max_gumbel_temperature", type=float, default=2.0)
    model.add_argument("--min_gumbel_temperature", type=float, default=0.5)
    model.add_argument("--gumbel_temperature_decay", type=float, default=0.999995, help="per update")
    model.add_argument("--feature_grad_mult", type=float, default=0.1,
                       help="gradient scale into the convolutional feature encoder (fairseq BASE: 0.1)")

    train = parser.add_argument_group("training")
    train.add_argument("--per_device_train_batch_size", type=int, default=8)
    train.add_argument("--gradient_accumulation_steps", type=int, default=1)
    train.add_argument("--learning_rate", type=float, default=5e-4)
    train.add_argument("--adam_beta1", type=float, default=0.9)
    train.add_argument("--adam_beta2", type=float, default=0.98)
    train.add_argument("--adam_epsilon", type=float, default=1e-6)
    train.add_argument("--weight_decay", type=float, default=0.01)
    train.add_argument("--max_grad_norm", type=float, default=25.0, help="gradient clipping (0: off)")
    train.add_argument("--warmup_steps", type=int, default=32_000)
    train.add_argument("--max_train_steps", type=int, default=None, help="updates in all (overrides epochs)")
    train.add_argument("--num_train_epochs", type=int, default=100)
    train.add_argument("--max_consecutive_skips", type=int, default=20,
                       help="stop after this many updates in a row with a non-finite loss or gradient")
    train.add_argument("--seed", type=int, default=0)

    out = parser.add_argument_group("output")
    out.add_argument("--output_dir", required=True, help="model, model card, logs/ and checkpoints/ go here")
    out.add_argument("--checkpointing_steps", type=int, default=1000, help="save a checkpoint every N updates")
    out.add_argument("--checkpoints_total_limit", type=int, default=3, help="keep the newest N checkpoints")
    out.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder, or 'latest'")
    out.add_argument("--logging_steps", type=int, default=10, help="log metrics every N updates")
    out.add_argument("--report_to", default="tensorboard", help="tensorboard (default), wandb, all or none")
    out.add_argument("--push_to_hub", action="store_true", help="upload the output folder to the Hub at the end")
    out.add_argument("--hub_model_id", default=None, help="repository for --push_to_hub, e.g. user/w2v-musicnet")
    out.add_argument("--hub_token", default=None, help="Hub token (default: the logged-in user's)")
    args = parser.parse_args(argv)
    if args.config_name and args.init_from:
        parser.error("--config_name and --init_from both set the architecture; give one")
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id")
    if args.gradient_accumulation_steps < 1 or args.per_device_train_batch_size < 1:
        parser.error("--per_device_train_batch_size and --gradient_accumulation_steps must be >= 1")
    return args


def build_config(args) -> Wav2Vec2Config:
    if args.init_from:
        config = Wav2Vec2Config.from_pretrained(args.init_from)
    elif args.config_name:
        config = Wav2Vec2Config.from_pretrained(args.config_name)
    else:
        config = wav2vec2_base_config()
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


def main(argv=None) -> int:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    config = build_config(args)
    report_to = [] if args.report_to == "none" else args.report_to
    accelerator = Accelerator(
        log_with=report_to or None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        # layerdrop skips whole layers, whose parameters then get no gradient; DDP must be told to expect that.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=config.layerdrop > 0)],
    )
    check_launch(accelerator)
    accelerator.print(f"pretraining on {accelerator.num_processes} process(es), device {accelerator.device}, "
                      f"mixed precision {accelerator.mixed_precision}")

    # Data: 20 s windows every 10 s, resampled to 16 kHz once and memory-mapped (or decoded on the fly).
    with accelerator.main_process_first():
        windows = load_musicnet(args.musicnet_dir, "train", segment_seconds=args.segment_seconds,
                                hop_seconds=args.hop_seconds, streaming=args.streaming, cache_dir=args.cache_dir)
    segment_samples = round(args.segment_seconds * SAMPLING_RATE)
    crop_samples = round(args.random_crop_seconds * SAMPLING_RATE) if args.random_crop_seconds else segment_samples
    batch_size, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
    if args.streaming:
        from datasets.distributed import split_dataset_by_node

        windows = split_dataset_by_node(windows, accelerator.process_index, accelerator.num_processes)
        windows = windows.shuffle(seed=args.seed, buffer_size=args.shuffle_buffer_size)
        updates_per_epoch = None
        if args.max_train_steps is None:
            raise SystemExit("--streaming needs --max_train_steps (the number of windows is not known in advance)")
    else:
        audio_only = windows.select_columns(["audio"])
        updates_per_epoch = UpdateBatchSampler(len(windows), batch_size, args.seed, 0, accelerator.num_processes,
                                               accelerator.process_index, accumulation).micro_batches // accumulation
    max_steps = args.max_train_steps or args.num_train_epochs * updates_per_epoch

    # Model, optimizer, schedule.
    torch.manual_seed(args.seed)
    if args.init_from:
        model = Wav2Vec2ForPreTraining.from_pretrained(args.init_from, config=config)
    else:
        model = Wav2Vec2ForPreTraining(config)
    feature_grad_multiplier(model, args.feature_grad_mult)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  eps=args.adam_epsilon, weight_decay=args.weight_decay,
                                  fused=accelerator.device.type == "cuda")
    # The schedule counts updates; it is stepped here rather than by accelerate, which would step it once per
    # process and so change the schedule with the number of processes.
    scheduler = get_linear_schedule_with_warmup(optimizer, min(args.warmup_steps, max_steps), max_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    unwrapped = accelerator.unwrap_model(model)

    state = restore_checkpoint(accelerator, args.resume_from_checkpoint, output_dir,
                               TrainerState(gumbel_temperature=args.max_gumbel_temperature))
    metrics_path = reset_metrics_log(accelerator, output_dir / "logs" / METRICS_FILE, state.step)
    if report_to:
        accelerator.init_trackers("pretrain", config={k: v for k, v in vars(args).items()
                                                      if isinstance(v, (int, float, str, bool))})

    guard = NonFiniteGuard(args.max_consecutive_skips)
    guard.total = state.skipped_updates
    collapse_warned = False
    progress = tqdm(total=max_steps, initial=state.step, desc="pretraining", unit="update",
                    disable=not accelerator.is_local_main_process)
    model.train()
    window_start, window_audio = time.perf_counter(), 0.0
    while state.step < max_steps and (args.streaming or state.epoch < args.num_train_epochs):
        if args.streaming:
            micro_batches = streamed_micro_batches(windows, batch_size, state.epoch, args.seed,
                                                   accelerator.process_index, state.micro_batches_in_epoch)
        else:
            sampler = UpdateBatchSampler(len(windows), batch_size, args.seed, state.epoch, accelerator.num_processes,
                                         accelerator.process_index, accumulation, state.micro_batches_in_epoch)
            loader = torch.utils.data.DataLoader(audio_only, batch_sampler=sampler,
                                                 num_workers=args.dataloader_num_workers,
                                                 collate_fn=lambda rows: torch.stack(
                                                     [torch.tensor(r["audio"]["array"]) for r in rows]))
            micro_batches = (([(args.seed, state.epoch, i) for i in indices], audio)
                             for indices, audio in zip(sampler, loader, strict=True))
        while state.step < max_steps:
            group = [batch for _, batch in zip(range(accumulation), micro_batches)]
            # Processes may run out of streamed windows at different times: the epoch ends when any one does.
            complete = accelerator.reduce(torch.tensor(int(len(group) == accumulation), device=accelerator.device),
                                          reduction="min") if args.streaming else len(group) == accumulation
            if not complete:
                break
            # Dropout, layerdrop and Gumbel noise draw from torch's global generator: seeding it per update makes
            # a resumed run draw exactly what the uninterrupted one did.
            seeded = seeded_generator(args.seed, state.epoch, state.micro_batches_in_epoch, accelerator.process_index)
            torch.manual_seed(seeded.initial_seed())
            inputs = [{k: v.to(accelerator.device) for k, v in pretraining_batch(audio, keys, config,
                                                                                  crop_samples).items()}
                      for keys, audio in group]
            state.gumbel_temperature = gumbel_temperature(state.step, args.max_gumbel_temperature,
                                                          args.min_gumbel_temperature, args.gumbel_temperature_decay)
            unwrapped.set_gumbel_temperature(state.gumbel_temperature)
            stats = pretraining_update(accelerator, model, optimizer, inputs, args.max_grad_norm)
            state.micro_batches_in_epoch += accumulation
            try:
                guard.update(stats.skipped, state.step)
            except TrainingDiverged as error:
                accelerator.end_training()
                raise SystemExit(f"error: {error}") from None
            if stats.skipped:
                state.skipped_updates = guard.total
                continue
            scheduler.step()
            state.step += 1
            update_audio = accelerator.num_processes * accumulation * batch_size * crop_samples / SAMPLING_RATE
            state.audio_seconds_seen += update_audio
            window_audio += update_audio
            progress.update(1)
            if state.step % args.logging_steps == 0 or state.step == max_steps:
                elapsed = time.perf_counter() - window_start
                state.train_seconds += elapsed
                metrics = {
                    "step": state.step,
                    "loss": stats.loss,
                    "contrastive_loss": stats.contrastive_loss,
                    "diversity_loss": stats.diversity_loss,
                    "codevector_perplexity": stats.perplexity,
                    "gumbel_temperature": state.gumbel_temperature,
                    "learning_rate": scheduler.get_last_lr()[0],
                    "grad_norm": stats.grad_norm,
                    "masked_frames_percent": 100.0 * stats.masked_frames / stats.total_frames,
                    "audio_seconds_per_second": window_audio / max(elapsed, 1e-9),
                    "skipped_updates": state.skipped_updates,
                    "epoch": state.epoch,
                }
                state.last_metrics = metrics
                window_start, window_audio = time.perf_counter(), 0.0
                progress.set_postfix(loss=f"{stats.loss:.3f}", ppl=f"{stats.perplexity:.1f}")
                if report_to:
                    accelerator.log(metrics, step=state.step)
                if accelerator.is_main_process:
                    with metrics_path.open("a") as file:
                        file.write(json.dumps(metrics) + "\n")
                # Perplexity is summed over the codebook groups, so it bottoms out at the number of groups.
                if not collapse_warned and stats.perplexity < 1.5 * config.num_codevector_groups:
                    collapse_warned = True
                    logger.warning(f"codevector perplexity {stats.perplexity:.2f} at update {state.step} is close "
                                   f"to its floor of {config.num_codevector_groups}: the codebook may have collapsed "
                                   "(try a larger effective batch or a lower learning rate)", main_process_only=True)
            if state.step % args.checkpointing_steps == 0 or state.step == max_steps:
                save_checkpoint(accelerator, output_dir, state, args.checkpoints_total_limit)
        if state.step >= max_steps:
            break
        state.epoch += 1
        state.micro_batches_in_epoch = 0
    progress.close()

    # Output: the model and feature extractor in save_pretrained layout, a model card, then the Hub.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_pretrained_into(unwrapped, output_dir, music_feature_extractor(config))
        final = state.last_metrics
        write_model_card(
            output_dir,
            REPO_ROOT / "model_cards" / "pretrained.md",
            tags=["audio", "music", "wav2vec2", "self-supervised", "pretraining"],
            datasets=["musicnet"],
            command=shlex.join(["accelerate", "launch", "training/pretrain.py", *(argv or sys.argv[1:])]),
            steps=state.step,
            hours_of_audio=state.audio_seconds_seen / 3600,
            train_hours=state.train_seconds / 3600,
            skipped_updates=state.skipped_updates,
            final=final,
            config=config,
            args=vars(args),
            num_processes=accelerator.num_processes,
            effective_batch_seconds=accelerator.num_processes * accumulation * batch_size * crop_samples
            / SAMPLING_RATE,
            num_parameters=sum(p.numel() for p in unwrapped.parameters()),
        )
        (output_dir / "pretrain_results.json").write_text(json.dumps(
            {**{f"final_{k}": v for k, v in final.items() if k != "step"}, "steps": state.step,
             "audio_hours_seen": state.audio_seconds_seen / 3600, "skipped_updates": state.skipped_updates},
            indent=2))
        if args.push_to_hub:
            url = push_folder(output_dir, args.hub_model_id, token=args.hub_token,
                              commit_message=f"wav2vec2 pretrained on MusicNet for {state.step} updates")
            accelerator.print(f"pushed to {url}")
        accelerator.print(f"saved the pretrained model to {output_dir}")
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
