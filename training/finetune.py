"""Fine-tune wav2vec 2.0 on NSynth pitch and instrument family jointly (Ragano et al. 2022), with accelerate.

    accelerate launch training/finetune.py --model_name_or_path runs/w2v-musicnet --nsynth_dir data/nsynth \
        --output_dir runs/w2v-nsynth

MODEL is a `training/pretrain.py` output, any wav2vec2 checkpoint (folder or Hub id), or `preset:wav2vec2-base`
(random weights: the paper's no-pretraining baseline); `--random_init` keeps any MODEL's architecture but not
its weights. The last Transformer layer is mean-pooled over time and read by two linear heads (128 MIDI
pitches, 11 instrument families). The feature encoder is frozen by default; `--freeze_base_model` trains the
heads alone on pooled features computed once and cached (a linear probe). Each epoch is evaluated on valid,
the best epoch's weights are kept and evaluated on test, and the output folder is ready for the Hub: model,
code, feature extractor, card, results, confusion matrix, and one standard audio-classification model per
head for the inference widget (`widget/`).
"""

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from hf_music_w2v import music_feature_extractor
from hf_music_w2v.data import load_nsynth
from hf_music_w2v.export import HEADS, export_widget_models
from hf_music_w2v.finetuning import (
    BASE_PRESET,
    SCORES,
    FinetuneState,
    PooledFeatures,
    build_classifier,
    classification_report,
    classifier_update,
    collate_notes,
    confusion_matrix,
    feature_cache_matches,
    load_feature_cache,
    predict_loader,
    save_confusion_matrix_png,
    save_feature_cache,
    widget_examples,
)
from hf_music_w2v.hub import push_folder, save_pretrained_atomic, save_pretrained_into, write_model_card
from hf_music_w2v.pretraining import (
    NonFiniteGuard,
    TrainingDiverged,
    UpdateBatchSampler,
    check_launch,
    reset_metrics_log,
    restore_checkpoint,
    save_checkpoint,
    seeded_generator,
)

logger = get_logger(__name__)
REPO_ROOT = Path(__file__).resolve().parent.parent
METRICS_FILE = "finetune_metrics.jsonl"
BEST_DIR = "best_model"
WIDGET_DIR = "widget"
FEATURES_DIR = "features"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data = parser.add_argument_group("data")
    data.add_argument("--nsynth_dir", required=True,
                      help="NSynth: the folder with nsynth-{train,valid,test}/ (json/wav), a parquet folder or Hub id")
    data.add_argument("--pitch_range", type=int, nargs=2, default=None, metavar=("LOW", "HIGH"),
                      help="keep notes with LOW <= pitch <= HIGH only (e.g. 21 108, the piano range)")
    data.add_argument("--max_train_samples", type=int, default=None, help="use the first N training notes")
    data.add_argument("--max_eval_samples", type=int, default=None, help="use the first N valid and test notes")
    data.add_argument("--on_error", choices=("raise", "skip"), default="raise",
                      help="invalid notes: stop with an error naming the file (default) or skip and count them")
    data.add_argument("--dataloader_num_workers", type=int, default=0)
    data.add_argument("--cache_dir", default=None, help="dataset index cache (default $HF_MUSIC_W2V_CACHE)")

    model = parser.add_argument_group("model")
    model.add_argument("--model_name_or_path", required=True,
                       help=f"pretraining output, wav2vec2 checkpoint (folder or Hub id) or {BASE_PRESET}")
    model.add_argument("--random_init", action="store_true",
                       help="use MODEL's architecture with random weights (the no-pretraining baseline)")
    model.add_argument("--freeze_feature_encoder", action=argparse.BooleanOptionalAction, default=True,
                       help="keep the convolutional feature encoder fixed (default: on)")
    model.add_argument("--freeze_base_model", action="store_true",
                       help="train the two heads only, on cached pooled features (a linear probe)")
    model.add_argument("--no_feature_cache", action="store_true",
                       help="with --freeze_base_model, run the frozen backbone on audio every epoch (for comparison)")
    model.add_argument("--pitch_loss_weight", type=float, default=1.0)
    model.add_argument("--instrument_loss_weight", type=float, default=1.0)
    model.add_argument("--final_dropout", type=float, default=0.0, help="dropout on the pooled features")
    model.add_argument("--mask_time_prob", type=float, default=0.05, help="SpecAugment time masking while training")

    train = parser.add_argument_group("training")
    train.add_argument("--per_device_train_batch_size", type=int, default=16)
    train.add_argument("--per_device_eval_batch_size", type=int, default=32)
    train.add_argument("--gradient_accumulation_steps", type=int, default=1)
    train.add_argument("--learning_rate", type=float, default=5e-5, help="backbone learning rate")
    train.add_argument("--head_learning_rate", type=float, default=1e-3, help="learning rate of the two heads")
    train.add_argument("--weight_decay", type=float, default=0.01)
    train.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient clipping (0: off)")
    train.add_argument("--warmup_ratio", type=float, default=0.1, help="share of updates spent warming up")
    train.add_argument("--num_train_epochs", type=int, default=10)
    train.add_argument("--max_train_steps", type=int, default=None, help="updates in all (overrides epochs)")
    train.add_argument("--metric_for_best_model", choices=SCORES, default="mean_accuracy",
                       help="valid score that picks the kept epoch (default: mean of the two accuracies)")
    train.add_argument("--max_consecutive_skips", type=int, default=20,
                       help="stop after this many updates in a row with a non-finite loss or gradient")
    train.add_argument("--seed", type=int, default=0)

    out = parser.add_argument_group("output")
    out.add_argument("--output_dir", required=True)
    out.add_argument("--checkpointing_steps", default="epoch", help="'epoch' (default) or every N updates")
    out.add_argument("--checkpoints_total_limit", type=int, default=2, help="keep the newest N checkpoints")
    out.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder, or 'latest'")
    out.add_argument("--logging_steps", type=int, default=10)
    out.add_argument("--report_to", default="tensorboard", help="tensorboard (default), wandb, all or none")
    out.add_argument("--push_to_hub", action="store_true",
                     help="upload the output folder to --hub_model_id and each widget model to ID-<head>")
    out.add_argument("--hub_model_id", default=None, help="e.g. user/w2v-music-nsynth")
    out.add_argument("--hub_token", default=None, help="Hub token (default: the logged-in user's)")
    args = parser.parse_args(argv)
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id")
    if args.checkpointing_steps != "epoch" and not args.checkpointing_steps.isdigit():
        parser.error(f"--checkpointing_steps must be 'epoch' or a number of updates, got {args.checkpointing_steps!r}")
    if args.no_feature_cache and not args.freeze_base_model:
        parser.error("--no_feature_cache only applies with --freeze_base_model")
    return args


def load_split(args, split: str, limit: int | None):
    notes = load_nsynth(args.nsynth_dir, split, pitch_range=tuple(args.pitch_range) if args.pitch_range else None,
                        on_error=args.on_error, cache_dir=args.cache_dir)
    if limit is not None and limit < len(notes):
        notes = notes.select(range(limit))
    return notes


def main(argv=None) -> int:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    report_to = [] if args.report_to == "none" else args.report_to
    # Model first (the same on every process, from the seed): the backbone (pretrained or random), two new heads.
    torch.manual_seed(args.seed)
    model = build_classifier(args.model_name_or_path, args.random_init, pitch_loss_weight=args.pitch_loss_weight,
                             instrument_loss_weight=args.instrument_loss_weight, final_dropout=args.final_dropout,
                             mask_time_prob=args.mask_time_prob)
    if args.freeze_base_model:
        model.freeze_base_model()
    elif args.freeze_feature_encoder:
        model.freeze_feature_encoder()
    config = model.config
    accelerator = Accelerator(
        log_with=report_to or None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        # layerdrop skips whole layers, whose parameters then get no gradient; DDP must be told to expect that.
        kwargs_handlers=[DistributedDataParallelKwargs(
            find_unused_parameters=config.layerdrop > 0 and not args.freeze_base_model)],
    )
    check_launch(accelerator)
    accelerator.print(f"fine-tuning on {accelerator.num_processes} process(es), device {accelerator.device}, "
                      f"mixed precision {accelerator.mixed_precision}")

    # Data: NSynth's official splits, validated once and memory-mapped; 4 s notes at 16 kHz.
    with accelerator.main_process_first():
        splits = {"train": load_split(args, "train", args.max_train_samples),
                  "valid": load_split(args, "valid", args.max_eval_samples),
                  "test": load_split(args, "test", args.max_eval_samples)}
    accelerator.print(", ".join(f"{name} {len(notes)} notes" for name, notes in splits.items()))

    probe = args.freeze_base_model
    cached = probe and not args.no_feature_cache

    def eval_loader(source, collate):
        return accelerator.prepare(torch.utils.data.DataLoader(
            source, batch_size=args.per_device_eval_batch_size, collate_fn=collate,
            num_workers=args.dataloader_num_workers))

    collate = collate_notes
    sources = dict(splits)
    feature_seconds = 0.0
    if cached:
        # The frozen backbone is deterministic in eval mode, so one pass gives every epoch's inputs.
        model.to(accelerator.device)
        fingerprint_base = {"model": args.model_name_or_path, "random_init": args.random_init, "seed": args.seed,
                            "nsynth_dir": str(Path(args.nsynth_dir).resolve()), "pitch_range": args.pitch_range}
        start = time.perf_counter()
        for name, notes in splits.items():
            path = output_dir / FEATURES_DIR / f"{name}.safetensors"
            fingerprint = {**fingerprint_base, "split": name, "notes": len(notes)}
            if not feature_cache_matches(path, fingerprint):
                with accelerator.autocast():
                    predicted = predict_loader(accelerator, model, eval_loader(notes, collate_notes), keep_pooled=True)
                if accelerator.is_main_process:
                    save_feature_cache(path, {"features": torch.from_numpy(predicted["pooled_output"]),
                                              "pitch": torch.from_numpy(predicted["pitch_labels"]),
                                              "instrument": torch.from_numpy(predicted["instrument_labels"])},
                                       fingerprint)
                accelerator.wait_for_everyone()
            tensors = load_feature_cache(path)
            sources[name] = PooledFeatures(tensors["features"], tensors["pitch"], tensors["instrument"])
        feature_seconds = time.perf_counter() - start
        collate = None
        accelerator.print(f"pooled features of {sum(len(s) for s in sources.values())} notes ready "
                          f"in {feature_seconds:.1f} s ({output_dir / FEATURES_DIR})")
    valid_loader = eval_loader(sources["valid"], collate)
    test_loader = eval_loader(sources["test"], collate)

    batch_size, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
    updates_per_epoch = UpdateBatchSampler(len(sources["train"]), batch_size, args.seed, 0, accelerator.num_processes,
                                           accelerator.process_index, accumulation).micro_batches // accumulation
    max_steps = args.max_train_steps or args.num_train_epochs * updates_per_epoch

    # Optimizer: the heads learn faster than the pretrained backbone.
    head_params = [p for n, p in model.named_parameters() if not n.startswith("wav2vec2.")]
    backbone_params = [p for n, p in model.named_parameters() if n.startswith("wav2vec2.") and p.requires_grad]
    groups = [{"params": head_params, "lr": args.head_learning_rate}]
    if backbone_params:
        groups.append({"params": backbone_params, "lr": args.learning_rate})
    optimizer = torch.optim.AdamW(groups, weight_decay=args.weight_decay)
    # Stepped once per update here (accelerate would step a prepared scheduler once per process).
    scheduler = get_linear_schedule_with_warmup(optimizer, round(args.warmup_ratio * max_steps), max_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    unwrapped = accelerator.unwrap_model(model)

    state = restore_checkpoint(accelerator, args.resume_from_checkpoint, output_dir, FinetuneState())
    metrics_path = reset_metrics_log(accelerator, output_dir / "logs" / METRICS_FILE, state.step)
    if report_to:
        accelerator.init_trackers("finetune", config={k: v for k, v in vars(args).items()
                                                      if isinstance(v, (int, float, str, bool))})

    def log(metrics: dict) -> None:
        if report_to:
            accelerator.log({k: v for k, v in metrics.items() if k != "step"}, step=metrics["step"])
        if accelerator.is_main_process:
            with metrics_path.open("a") as file:
                file.write(json.dumps(metrics) + "\n")

    def evaluate_valid() -> None:
        """Score the current weights on valid; keep them in OUT/best_model if they beat the best so far."""
        with accelerator.autocast():
            results = classification_report(predict_loader(accelerator, model, valid_loader), "valid")
        state.epochs_evaluated.append(state.epoch)
        score = results[f"valid_{args.metric_for_best_model}"]
        log({"step": state.step, "epoch": state.epoch, **results})
        accelerator.print(f"epoch {state.epoch}: valid pitch accuracy {results['valid_pitch_accuracy']:.4f}, "
                          f"instrument accuracy {results['valid_instrument_accuracy']:.4f}")
        if state.best_score is None or score > state.best_score:
            state.best_score, state.best_epoch, state.best_metrics = score, state.epoch, results
            if accelerator.is_main_process:
                save_pretrained_atomic(unwrapped, output_dir / BEST_DIR, music_feature_extractor(config))
            accelerator.wait_for_everyone()

    guard = NonFiniteGuard(args.max_consecutive_skips)
    guard.total = state.skipped_updates
    checkpoint_every = None if args.checkpointing_steps == "epoch" else int(args.checkpointing_steps)
    progress = tqdm(total=max_steps, initial=state.step, desc="fine-tuning", unit="update",
                    disable=not accelerator.is_local_main_process)
    model.train()
    if probe:
        unwrapped.wav2vec2.eval()  # a frozen backbone gives the cached features: no dropout, no time masking
    window_start = time.perf_counter()
    while state.step < max_steps:
        sampler = UpdateBatchSampler(len(sources["train"]), batch_size, args.seed, state.epoch,
                                     accelerator.num_processes, accelerator.process_index, accumulation,
                                     state.micro_batches_in_epoch)
        loader = iter(torch.utils.data.DataLoader(sources["train"], batch_sampler=sampler, collate_fn=collate,
                                                  num_workers=args.dataloader_num_workers))
        while state.step < max_steps:
            group = [batch for _, batch in zip(range(accumulation), loader)]
            if len(group) < accumulation:
                break
            # Dropout draws from torch's global generator and transformers' time masking from numpy's: seeding
            # both per update makes a resumed run draw exactly what the uninterrupted one did.
            update_seed = seeded_generator(args.seed, state.epoch, state.micro_batches_in_epoch,
                                           accelerator.process_index).initial_seed()
            torch.manual_seed(update_seed)
            np.random.seed(update_seed % 2**32)
            inputs = [{k: v.to(accelerator.device) for k, v in batch.items()} for batch in group]
            stats = classifier_update(accelerator, model, optimizer, inputs, args.max_grad_norm)
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
            progress.update(1)
            if state.step % args.logging_steps == 0 or state.step == max_steps:
                now = time.perf_counter()
                state.train_seconds += now - window_start
                window_start = now
                state.last_metrics = {"step": state.step, "epoch": state.epoch, "loss": stats.loss,
                                      "pitch_loss": stats.pitch_loss, "instrument_loss": stats.instrument_loss,
                                      "grad_norm": stats.grad_norm, "learning_rate": scheduler.get_last_lr()[0],
                                      "skipped_updates": state.skipped_updates}
                progress.set_postfix(loss=f"{stats.loss:.3f}")
                log(state.last_metrics)
            if checkpoint_every and state.step % checkpoint_every == 0:
                save_checkpoint(accelerator, output_dir, state, args.checkpoints_total_limit)
        epoch_done = state.micro_batches_in_epoch >= sampler.micro_batches
        if epoch_done or state.step >= max_steps:
            evaluate_valid()
        if epoch_done:
            state.epoch += 1
            state.micro_batches_in_epoch = 0
            if checkpoint_every is None:
                save_checkpoint(accelerator, output_dir, state, args.checkpoints_total_limit)
    progress.close()
    state.train_seconds += time.perf_counter() - window_start

    # Test: the best epoch's weights, on notes of instruments never seen in training.
    accelerator.wait_for_everyone()
    best = build_classifier(str(output_dir / BEST_DIR))
    unwrapped.load_state_dict(best.state_dict())
    with accelerator.autocast():
        test_predictions = predict_loader(accelerator, model, test_loader)
    test_results = classification_report(test_predictions, "test")
    accelerator.print(f"test (best epoch {state.best_epoch}): pitch accuracy {test_results['test_pitch_accuracy']:.4f}, "
                      f"instrument accuracy {test_results['test_instrument_accuracy']:.4f}")

    if accelerator.is_main_process:
        save_pretrained_into(unwrapped, output_dir, music_feature_extractor(config))
        families = [config.id2label[i] for i in range(config.num_instruments)]
        matrix = confusion_matrix(test_predictions["instrument_logits"].argmax(1),
                                  test_predictions["instrument_labels"], config.num_instruments)
        (output_dir / "confusion_matrix.json").write_text(json.dumps({"labels": families,
                                                                      "matrix": matrix.tolist()}))
        save_confusion_matrix_png(matrix, families, output_dir / "confusion_matrix.png",
                                  f"NSynth test instrument family (accuracy {test_results['test_instrument_accuracy']:.3f})")
        results = {**test_results, **state.best_metrics, "best_epoch": state.best_epoch, "steps": state.step,
                   "epochs": state.epoch, "train_seconds": state.train_seconds,
                   "feature_cache_seconds": feature_seconds, "train_notes": len(sources["train"]),
                   "valid_notes": len(sources["valid"]), "test_notes": len(sources["test"])}
        (output_dir / "all_results.json").write_text(json.dumps(results, indent=2))

        examples = widget_examples(splits["test"], output_dir)
        widget_folders = export_widget_models(unwrapped, output_dir / WIDGET_DIR)
        card = card_fields(args, config, results, examples, unwrapped, accelerator.num_processes, argv)
        write_model_card(output_dir, REPO_ROOT / "model_cards" / "finetuned.md", **card)
        for head, folder in widget_folders.items():
            shutil.copytree(output_dir / "widget_samples", folder / "widget_samples", dirs_exist_ok=True)
            write_model_card(folder, REPO_ROOT / "model_cards" / "widget_head.md",
                             **card_fields(args, config, results, examples, unwrapped,
                                           accelerator.num_processes, argv, head=head))
        if args.push_to_hub:
            url = push_folder(output_dir, args.hub_model_id, token=args.hub_token,
                              commit_message=f"wav2vec2 fine-tuned on NSynth ({state.step} updates)",
                              ignore_patterns=["checkpoints/*", f"{FEATURES_DIR}/*", f"{BEST_DIR}/*",
                                               f"{WIDGET_DIR}/*", ".*", "**/.*"])
            accelerator.print(f"pushed to {url}")
            for head, folder in widget_folders.items():
                url = push_folder(folder, widget_repo_id(args.hub_model_id, head), token=args.hub_token,
                                  commit_message=f"{head} head as Wav2Vec2ForSequenceClassification")
                accelerator.print(f"pushed the {head} widget model to {url}")
        accelerator.print(f"saved the fine-tuned model to {output_dir}")
    accelerator.end_training()
    return 0


def widget_repo_id(hub_model_id: str, head: str) -> str:
    return f"{hub_model_id}-{head.replace('_', '-')}"


def card_fields(args, config, results: dict, examples: list[dict], model, num_processes: int, argv,
                head: str | None = None) -> dict:
    """Template variables and card metadata of the two-head model's card, or of one head's widget model."""
    from huggingface_hub import EvalResult, constants

    repo_id = widget_repo_id(args.hub_model_id, head) if head and args.hub_model_id else args.hub_model_id
    model_name = repo_id.split("/")[-1] if repo_id else Path(args.output_dir).name
    heads = [head] if head else list(HEADS)
    metric_of = {"pitch": ("test_pitch_accuracy", "Pitch accuracy"),
                 "instrument_family": ("test_instrument_accuracy", "Instrument family accuracy")}
    eval_results = [
        EvalResult(task_type="audio-classification", dataset_type="nsynth", dataset_name="NSynth",
                   dataset_split="test", metric_type="accuracy", metric_name=metric_of[h][1],
                   metric_value=round(results[metric_of[h][0]], 4))
        for h in heads
    ]
    base = args.model_name_or_path
    # The card's base_model must be a Hub id; local folders and the preset are described in the text instead.
    is_hub_id = base.count("/") == 1 and not Path(base).exists() and not base.startswith("preset:")
    widget = [{"src": f"{constants.ENDPOINT}/{repo_id}/resolve/main/{e['file']}" if repo_id else e["file"],
               "example_title": f"{e['family']} {e['pitch_name']} (NSynth test {e['note_str']})"}
              for e in examples]
    fields = dict(
        tags=["audio", "music", "wav2vec2", "nsynth", "pitch-estimation", "instrument-recognition"],
        datasets=["nsynth"],
        pipeline_tag="audio-classification",
        model_name=model_name,
        eval_results=eval_results,
        widget=widget,
        model_id=repo_id or "PATH_OR_HUB_ID",
        parent_id=args.hub_model_id or "PATH_OR_HUB_ID",
        head=head,
        base=base,
        init="random initialisation" if args.random_init or base == BASE_PRESET else f"`{base}`",
        results=results,
        examples=examples,
        config=config,
        args=vars(args),
        num_processes=num_processes,
        num_parameters=sum(p.numel() for p in model.parameters()),
        command=shlex.join(["accelerate", "launch", "training/finetune.py", *(argv or sys.argv[1:])]),
    )
    if is_hub_id and not args.random_init:
        fields["base_model"] = base
    return fields


if __name__ == "__main__":
    sys.exit(main())
