"""Fine-tuning on NSynth pitch and instrument family jointly (Ragano et al. 2022), as a task of the training engine.

    hf-music-w2v finetune --model_name_or_path runs/w2v-musicnet --nsynth_dir data/nsynth --output_dir runs/w2v-nsynth
    accelerate launch -m hf_music_w2v.training.finetune --model_name_or_path ... --nsynth_dir ... --output_dir ...

MODEL is a pretraining output, any wav2vec2 checkpoint (folder or Hub id), or a preset such as
`preset:wav2vec2-base` (random weights: the paper's no-pretraining baseline); `--random_init` keeps any MODEL's
architecture but not its weights. The last Transformer layer is mean-pooled over time and read by two linear
heads (128 MIDI pitches, 11 instrument families). The feature encoder is frozen by default; `--freeze_base_model`
trains the heads alone on pooled features computed once and cached (a linear probe). Each epoch is evaluated on
valid, the best epoch's weights are kept and evaluated on test, and the output folder is ready for the Hub:
model, code, feature extractor, card, results, confusion matrix, and one standard audio-classification model
per head for the inference widget (`widget/`).
"""

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset
from transformers.utils import logging

from ..atomic import atomic_path, write_text_atomic
from ..audio import NOTE_SAMPLES
from ..configuration_music_wav2vec2 import MusicWav2Vec2Config
from ..data.nsynth import COLLATED_COLUMNS, collate_notes
from ..errors import naming
from ..export import export_widget_models
from ..fingerprints import fingerprint_matches, notes_digest, weights_digest
from ..hub import (
    CARD_PLACEHOLDER,
    load_pretrained,
    model_location_problem,
    music_feature_extractor,
    quiet_loading,
    save_pretrained_atomic,
    save_pretrained_into,
    widget_repo_id,
    write_model_card,
)
from ..modeling_music_wav2vec2 import Wav2Vec2ForMusicClassification, masked_cross_entropy
from ..plotting import save_confusion_matrix_png
from ..presets import PRESET_PREFIX, is_preset, load_wav2vec2_config
from .arguments import RunArguments, command_line, option, parse_arguments, settings_of
from .engine import (
    TrainingTask,
    UpdateBatchSampler,
    UpdateResult,
    extension_text,
    no_sync_unless_last,
    run_summary,
    step_if_finite,
    train,
)
from .layout import HEADS, SCORES, RunLayout, result_key
from .memory import check_memory, enable_gradient_checkpointing, estimate_training_memory

#: `--model_name_or_path` value for the wav2vec2-base architecture with random weights (the no-pretraining baseline).
BASE_PRESET = f"{PRESET_PREFIX}wav2vec2-base"


logger = logging.get_logger(__name__)

#: What a fine-tuning run that does not fit in memory can change.
MEMORY_OPTIONS = ("--gradient_checkpointing, a smaller --per_device_train_batch_size (with --gradient_accumulation_steps "
                  "to keep the update's size), --freeze_base_model (a linear probe), or --recipe mini")

#: The classifier's own new heads, which no backbone checkpoint holds.
NEW_HEADS = ("pitch_head.", "instrument_head.")


def build_classifier(model_name_or_path: str, random_init: bool = False, **config_overrides
                     ) -> Wav2Vec2ForMusicClassification:
    """`Wav2Vec2ForMusicClassification` from a pretraining output, any wav2vec2 checkpoint or a preset.

    With `random_init` the checkpoint only gives the architecture. Backbone weights load as they are; the two
    heads are always new. `config_overrides` set config fields (loss weights, dropout, masking). transformers'
    load report is kept quiet; weights missing or left over beyond the expected ones (the new heads, the
    pretraining-only quantizer and projections) are a warning naming them.
    """
    if is_preset(model_name_or_path):
        config = MusicWav2Vec2Config.from_dict(load_wav2vec2_config(model_name_or_path).to_dict(), **config_overrides)
        random_init = True
    else:
        problem = model_location_problem(model_name_or_path)  # transformers takes an empty folder for wav2vec2-base
        if problem:
            raise OSError(problem)
        with quiet_loading():
            config = MusicWav2Vec2Config.from_pretrained(model_name_or_path, **config_overrides)
    if random_init:
        return Wav2Vec2ForMusicClassification(config)
    return load_pretrained(Wav2Vec2ForMusicClassification, model_name_or_path, expected_missing=NEW_HEADS,
                           config=config)


class PooledFeatures(TorchDataset):
    """Cached clip embeddings and labels, served as the model's `pooled_output` inputs (the linear probe)."""

    def __init__(self, features: torch.Tensor, pitch: torch.Tensor, instrument: torch.Tensor):
        if not len(features) == len(pitch) == len(instrument):
            raise ValueError(f"{len(features)} features for {len(pitch)} pitch and {len(instrument)} family labels")
        self.features, self.pitch, self.instrument = features, pitch, instrument

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pooled_output": self.features[index], "pitch_labels": self.pitch[index],
                "instrument_labels": self.instrument[index]}


@dataclass
class ClassifierStats:
    """What one optimizer update did, averaged over its micro-batches and all processes."""

    loss: float
    pitch_loss: float
    instrument_loss: float
    grad_norm: float
    skipped: bool


def classifier_update(accelerator, model, optimizer, micro_batches: list[dict], max_grad_norm: float | None
                      ) -> ClassifierStats:
    """Forward and backward over equal-sized `micro_batches`, then one clipped optimizer step.

    The gradient is that of the mean loss over every example of the update: each micro-batch's mean loss is
    divided by the number of micro-batches, and DDP averages over processes. Gradients synchronise only on the
    last micro-batch. A non-finite loss or gradient norm skips the step (under fp16 the GradScaler decides).
    """
    sums = torch.zeros(3, device=accelerator.device)
    for index, batch in enumerate(micro_batches):
        with no_sync_unless_last(accelerator, model, index, len(micro_batches)):
            output = model(**batch)
            accelerator.backward(output.loss / len(micro_batches))
        with torch.no_grad():
            sums += torch.stack([output.loss.float(),
                                 masked_cross_entropy(output.pitch_logits.float(), batch["pitch_labels"]),
                                 masked_cross_entropy(output.instrument_logits.float(), batch["instrument_labels"])])
    grad_norm = float(accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                  max_grad_norm or float("inf")))
    means = accelerator.reduce(sums, reduction="sum") / (len(micro_batches) * accelerator.num_processes)
    loss, pitch_loss, instrument_loss = (float(v) for v in means)
    skipped = step_if_finite(accelerator, optimizer, loss, grad_norm)
    return ClassifierStats(loss, pitch_loss, instrument_loss, grad_norm, skipped)


@torch.no_grad()
def predict_loader(accelerator, model, loader, keep_pooled: bool = False) -> dict[str, np.ndarray]:
    """Logits (and labels, and optionally pooled embeddings) for every example of a prepared `loader`, in order.

    Runs in eval mode on every process and gathers across processes, dropping the padding accelerate adds to
    even out the last batch. Every submodule's train/eval mode is restored afterwards.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    parts: dict[str, list] = {"pitch_logits": [], "instrument_logits": [], "pitch_labels": [],
                              "instrument_labels": [], "pooled_output": []}
    for batch in loader:
        labels = {key: batch.pop(key) for key in ("pitch_labels", "instrument_labels")}
        output = model(**batch)
        values = {"pitch_logits": output.pitch_logits.float(), "instrument_logits": output.instrument_logits.float(),
                  **labels}
        if keep_pooled:
            values["pooled_output"] = output.pooled_output.float()
        for key, value in accelerator.gather_for_metrics(values).items():
            parts[key].append(value.cpu())
    for module, training in modes:
        module.training = training
    return {key: torch.cat(value).numpy() for key, value in parts.items() if value}


def classification_report(predictions: dict[str, np.ndarray], prefix: str, top_k: int = 5) -> dict[str, float]:
    """`{prefix}_pitch_accuracy`, `_pitch_top_5_accuracy`, `_pitch_macro_f1`, the same for instrument, and the mean."""
    from ..evaluation import head_metrics

    results = {}
    for head in HEADS:
        metrics = head_metrics(predictions[f"{head}_logits"], predictions[f"{head}_labels"], top_k=top_k)
        results.update({f"{prefix}_{head}_{name}": value for name, value in metrics.items()})
    results[f"{prefix}_mean_accuracy"] = sum(results[result_key(prefix, head)] for head in HEADS) / len(HEADS)
    return results


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts `[true class, predicted class]`."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


#: Bump when what a cached feature means changes (pooling, normalisation, layer).
FEATURE_FORMAT = 1


def feature_fingerprint(weights: str, notes, mixed_precision: str) -> dict:
    """What a split's cached features depend on: the backbone's weights (`weights_digest`), the notes, and how
    they are extracted."""
    return {"format": FEATURE_FORMAT, "weights": weights, "notes": notes_digest(notes), "count": len(notes),
            "mixed_precision": mixed_precision}


def feature_cache_matches(path: Path, fingerprint: dict) -> bool:
    return path.is_file() and fingerprint_matches(path.with_suffix(".json"), fingerprint)


def save_feature_cache(path: Path, tensors: dict[str, torch.Tensor], fingerprint: dict) -> None:
    """Pooled features and labels of one split, with the fingerprint of the backbone and data they came from."""
    from safetensors.torch import save_file

    with atomic_path(path) as staging:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(staging))
    write_text_atomic(path.with_suffix(".json"), json.dumps(fingerprint, sort_keys=True))


def load_feature_cache(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def widget_examples(dataset, output_dir: Path, count: int = 3) -> list[dict]:
    """Copy `count` notes of different instrument families from `dataset` into `output_dir/widget_samples/`.

    Returns their descriptions (file, note_str, family, pitch), which the model card turns into widget examples.
    The choice is deterministic: the first note, by note_str, of the first `count` families present.
    """
    import soundfile as sf

    from ..configuration_music_wav2vec2 import NSYNTH_INSTRUMENT_FAMILIES, midi_pitch_name

    table = dataset.with_format(None)  # metadata columns only, without decoding audio
    names, families = table["note_str"], table["instrument_family"]
    first_of_family: dict[int, int] = {}
    for index in np.argsort(names):
        first_of_family.setdefault(families[int(index)], int(index))
    folder = output_dir / "widget_samples"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    examples = []
    for family in sorted(first_of_family)[:count]:
        row = dataset[first_of_family[family]]
        name = f"{row['note_str']}.wav"
        sf.write(folder / name, row["audio"]["array"], row["audio"]["sampling_rate"], subtype="PCM_16")
        examples.append({"file": f"widget_samples/{name}", "note_str": row["note_str"],
                         "family": NSYNTH_INSTRUMENT_FAMILIES[family], "pitch": int(row["pitch"]),
                         "pitch_name": midi_pitch_name(int(row["pitch"]))})
    return examples


@dataclass
class FinetuneArguments:
    """Data and model options of fine-tuning (the shared ones are `RunArguments`)."""

    model_name_or_path: str = field(metadata={"help": f"pretraining output, wav2vec2 checkpoint (folder or Hub id) "
                                                      f"or a preset ({BASE_PRESET}: random weights)"})
    nsynth_dir: str = field(metadata={"help": "NSynth: the folder with nsynth-{train,valid,test}/ (json/wav), a "
                                              "parquet folder or Hub id"})
    pitch_range: list[int] | None = option(None, "LOW HIGH: keep notes with LOW <= pitch <= HIGH only (e.g. 21 108, "
                                                 "the piano range)")
    max_train_samples: int | None = option(None, "use N training notes, drawn at random with seed 0")
    max_eval_samples: int | None = option(None, "use N valid and test notes, drawn at random with seed 0 (the same "
                                                 "notes for every run)")
    on_error: str = option("raise", "invalid notes: stop with an error naming the file, or skip and count them",
                           choices=["raise", "skip"])
    random_init: bool = option(False, "use MODEL's architecture with random weights (the no-pretraining baseline)")
    freeze_feature_encoder: bool = option(True, "keep the convolutional feature encoder fixed")
    freeze_base_model: bool = option(False, "train the two heads only, on cached pooled features (a linear probe)")
    no_feature_cache: bool = option(False, "with --freeze_base_model, run the frozen backbone on audio every epoch "
                                           "(for comparison)")
    pitch_loss_weight: float = option(1.0, "weight of the pitch cross-entropy")
    instrument_loss_weight: float = option(1.0, "weight of the instrument-family cross-entropy")
    final_dropout: float = option(0.0, "dropout on the pooled features")
    mask_time_prob: float = option(0.05, "SpecAugment time masking while training")
    head_learning_rate: float = option(1e-3, "learning rate of the two heads (--learning_rate is the backbone's)")
    per_device_eval_batch_size: int = option(32, "notes per evaluation batch on each process")
    metric_for_best_model: str = option("mean_accuracy", "valid score that picks the kept epoch", choices=list(SCORES))

    def problems(self, run: RunArguments) -> list[str]:
        problems = []
        if self.no_feature_cache and not self.freeze_base_model:
            problems.append("--no_feature_cache only applies with --freeze_base_model")
        if self.pitch_range is not None and len(self.pitch_range) != 2:
            problems.append(f"--pitch_range takes two numbers, LOW HIGH; got {self.pitch_range}")
        return problems


#: Fine-tuning's values of the shared options.
FINETUNE_DEFAULTS = dict(per_device_train_batch_size=16, learning_rate=5e-5, adam_beta2=0.999, adam_epsilon=1e-8,
                         max_grad_norm=1.0, warmup_steps=None, warmup_ratio=0.1, num_train_epochs=10,
                         checkpointing_steps="epoch", checkpoints_total_limit=2)


class FinetuneTask(TrainingTask):
    """Both heads on NSynth; each epoch scored on valid, the best one kept and scored on test."""

    name = "fine-tuning"
    evaluates = True
    widget_heads = HEADS

    def settings(self) -> dict:
        return settings_of(self.args, self.run)

    @property
    def probe(self) -> bool:
        return self.args.freeze_base_model

    def build_model(self):
        args = self.args
        with naming("--model_name_or_path", args.model_name_or_path):
            model = build_classifier(args.model_name_or_path, args.random_init,
                                     pitch_loss_weight=args.pitch_loss_weight,
                                     instrument_loss_weight=args.instrument_loss_weight,
                                     final_dropout=args.final_dropout, mask_time_prob=args.mask_time_prob)
        if not (args.random_init or is_preset(args.model_name_or_path)):
            print(f"loaded the backbone of {args.model_name_or_path}; pitch and instrument heads initialised")
        if args.freeze_base_model:
            model.freeze_base_model()
        elif args.freeze_feature_encoder:
            model.freeze_feature_encoder()
        if self.run.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        self.model, self.config = model, model.config
        return model

    @property
    def find_unused_parameters(self) -> bool:
        return self.config.layerdrop > 0 and not self.probe

    def load_split(self, split: str, limit: int | None):
        from ..data import load_nsynth

        args = self.args
        notes = load_nsynth(args.nsynth_dir, split, pitch_range=tuple(args.pitch_range) if args.pitch_range else None,
                            on_error=args.on_error, cache_dir=self.run.cache_dir)
        if limit is not None and limit < len(notes):
            chosen = np.sort(np.random.default_rng(0).choice(len(notes), limit, replace=False))
            notes = notes.select(chosen)
        return notes

    def eval_loader(self, accelerator, source, collate):
        return accelerator.prepare(torch.utils.data.DataLoader(
            source, batch_size=self.args.per_device_eval_batch_size, collate_fn=collate,
            num_workers=self.run.dataloader_num_workers))

    def load_data(self, accelerator) -> None:
        # NSynth's official splits, validated once and memory-mapped; 4 s notes at 16 kHz.
        self.splits = {"train": self.load_split("train", self.args.max_train_samples),
                       "valid": self.load_split("valid", self.args.max_eval_samples),
                       "test": self.load_split("test", self.args.max_eval_samples)}
        accelerator.print(", ".join(f"{name} {len(notes)} notes" for name, notes in self.splits.items()))
        if self.args.max_train_samples is not None or self.args.max_eval_samples is not None:
            accelerator.print("(--max_train_samples / --max_eval_samples: subsets drawn at random with seed 0)")

    def prepare_data(self, accelerator) -> None:
        # Before the first update (and the probe's feature pass), so a run that cannot fit says so instead of
        # being killed by the kernel. With cached features the backbone never runs in training.
        estimate = estimate_training_memory(self.model, self.run.per_device_train_batch_size, NOTE_SAMPLES,
                                            pretraining=False, gradient_checkpointing=self.run.gradient_checkpointing)
        check_memory(accelerator, estimate, MEMORY_OPTIONS, self.run.skip_memory_check)
        self.sources = {name: notes.select_columns(list(COLLATED_COLUMNS)) for name, notes in self.splits.items()}
        self.collate = collate_notes
        self.feature_seconds = 0.0
        if self.probe and not self.args.no_feature_cache:
            self.cache_features(accelerator)
        self.valid_loader = self.eval_loader(accelerator, self.sources["valid"], self.collate)
        self.test_loader = self.eval_loader(accelerator, self.sources["test"], self.collate)

    def cache_features(self, accelerator) -> None:
        """The frozen backbone is deterministic in eval mode, so one pass gives every epoch's inputs."""
        layout = RunLayout(self.run.output_dir)
        self.model.to(accelerator.device)
        start = time.perf_counter()
        weights = weights_digest(self.model.wav2vec2)
        for name, notes in self.splits.items():
            path = layout.features / f"{name}.safetensors"
            fingerprint = feature_fingerprint(weights, notes, accelerator.mixed_precision)
            if path.is_file() and not feature_cache_matches(path, fingerprint):
                accelerator.print(f"{path} was made from other weights, notes or settings: computing it again")
            if not feature_cache_matches(path, fingerprint):
                with accelerator.autocast():
                    loader = self.eval_loader(accelerator, self.sources[name], collate_notes)
                    predicted = predict_loader(accelerator, self.model, loader, keep_pooled=True)
                if accelerator.is_main_process:
                    save_feature_cache(path, {"features": torch.from_numpy(predicted["pooled_output"]),
                                              "pitch": torch.from_numpy(predicted["pitch_labels"]),
                                              "instrument": torch.from_numpy(predicted["instrument_labels"])},
                                       fingerprint)
                accelerator.wait_for_everyone()
            tensors = load_feature_cache(path)
            self.sources[name] = PooledFeatures(tensors["features"], tensors["pitch"], tensors["instrument"])
        self.feature_seconds = time.perf_counter() - start
        self.collate = None
        accelerator.print(f"pooled features of {sum(len(s) for s in self.sources.values())} notes ready "
                          f"in {self.feature_seconds:.1f} s ({layout.features})")

    def sampler(self, accelerator, epoch: int, start: int = 0) -> UpdateBatchSampler:
        return UpdateBatchSampler(len(self.sources["train"]), self.run.per_device_train_batch_size, self.run.seed,
                                  epoch, accelerator.num_processes, accelerator.process_index,
                                  self.run.gradient_accumulation_steps, start)

    def micro_batches_per_epoch(self, accelerator) -> int:
        return self.sampler(accelerator, 0).micro_batches

    def micro_batches(self, accelerator, epoch: int, start: int) -> Iterator[dict]:
        loader = torch.utils.data.DataLoader(self.sources["train"], batch_sampler=self.sampler(accelerator, epoch, start),
                                             collate_fn=self.collate, num_workers=self.run.dataloader_num_workers)
        for batch in loader:
            yield {k: v.to(accelerator.device) for k, v in batch.items()}

    def parameter_groups(self, model) -> list[dict]:
        # The heads learn faster than the pretrained backbone.
        head = [p for n, p in model.named_parameters() if not n.startswith("wav2vec2.")]
        backbone = [p for n, p in model.named_parameters() if n.startswith("wav2vec2.") and p.requires_grad]
        groups = [{"params": head, "lr": self.args.head_learning_rate}]
        if backbone:
            groups.append({"params": backbone, "lr": self.run.learning_rate})
        return groups

    def before_update(self, model, state) -> None:
        if self.probe:
            model.wav2vec2.eval()  # a frozen backbone gives the cached features: no dropout, no time masking

    def update(self, accelerator, model, optimizer, micro_batches, state) -> UpdateResult:
        stats = classifier_update(accelerator, model, optimizer, micro_batches, self.run.max_grad_norm)
        return UpdateResult(stats.skipped, stats.loss, {"loss": stats.loss, "pitch_loss": stats.pitch_loss,
                                                        "instrument_loss": stats.instrument_loss,
                                                        "grad_norm": stats.grad_norm})

    def evaluate(self, accelerator, model) -> tuple[dict, float]:
        with accelerator.autocast():
            results = classification_report(predict_loader(accelerator, model, self.valid_loader), "valid")
        accelerator.print(f"valid pitch accuracy {results['valid_pitch_accuracy']:.4f}, "
                          f"instrument accuracy {results['valid_instrument_accuracy']:.4f}")
        return results, results[f"valid_{self.args.metric_for_best_model}"]

    def save_best(self, accelerator, model) -> None:
        if accelerator.is_main_process:
            save_pretrained_atomic(model, RunLayout(self.run.output_dir).best_model, music_feature_extractor(self.config))
        accelerator.wait_for_everyone()

    def finish(self, accelerator, model, state, layout: RunLayout) -> dict:
        # Test: the best epoch's weights, on notes of instruments never seen in training.
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.load_state_dict(build_classifier(str(layout.best_model)).state_dict())
        with accelerator.autocast():
            predictions = predict_loader(accelerator, model, self.test_loader)
        test = classification_report(predictions, "test")
        accelerator.print(f"test (best epoch {state.best_epoch}): pitch accuracy {test['test_pitch_accuracy']:.4f}, "
                          f"instrument accuracy {test['test_instrument_accuracy']:.4f}")
        if not accelerator.is_main_process:
            return {}
        config = self.config
        save_pretrained_into(unwrapped, layout.root, music_feature_extractor(config))
        families = [config.id2label[i] for i in range(config.num_instruments)]
        matrix = confusion_matrix(predictions["instrument_logits"].argmax(1), predictions["instrument_labels"],
                                  config.num_instruments)
        write_text_atomic(layout.root / "confusion_matrix.json", json.dumps({"labels": families,
                                                                            "matrix": matrix.tolist()}))
        # Per note, so that runs scored on the same notes can be compared note by note (paired bootstrap).
        write_text_atomic(layout.root / "test_predictions.json", json.dumps({
            "note_str": list(self.splits["test"].with_format(None)["note_str"]),
            **{head: {"label": predictions[f"{head}_labels"].tolist(),
                      "predicted": predictions[f"{head}_logits"].argmax(1).tolist()} for head in HEADS}}))
        save_confusion_matrix_png(matrix, families, layout.root / "confusion_matrix.png",
                                  f"NSynth test instrument family (accuracy {test['test_instrument_accuracy']:.3f})")
        results = {**test, **state.best_metrics, "best_epoch": state.best_epoch, **run_summary(state),
                   "feature_cache_seconds": self.feature_seconds,
                   "train_notes": len(self.sources["train"]), "valid_notes": len(self.sources["valid"]),
                   "test_notes": len(self.sources["test"])}
        examples = widget_examples(self.splits["test"], layout.root)
        widget_folders = export_widget_models(unwrapped, layout.widget)
        card = card_fields(self, results, examples, unwrapped, accelerator.num_processes)
        write_model_card(layout.root, "finetuned", **card)
        for head, folder in widget_folders.items():
            shutil.copytree(layout.root / "widget_samples", folder / "widget_samples", dirs_exist_ok=True)
            write_model_card(folder, "widget_head",
                             **card_fields(self, results, examples, unwrapped, accelerator.num_processes, head=head))
        return results


def card_fields(task: FinetuneTask, results: dict, examples: list[dict], model, num_processes: int,
                head: str | None = None) -> dict:
    """Template variables and card metadata of the two-head model's card, or of one head's widget model."""
    from huggingface_hub import EvalResult, constants

    args, run = task.args, task.run
    # Without --hub_model_id the card names a placeholder, which `push_run` replaces by the repository's name.
    parent_id = run.hub_model_id or CARD_PLACEHOLDER
    repo_id = widget_repo_id(parent_id, head) if head else parent_id
    model_name = repo_id.split("/")[-1] if run.hub_model_id else Path(run.output_dir).name
    heads = [head] if head else list(HEADS)
    titles = {"pitch": "Pitch accuracy", "instrument": "Instrument family accuracy"}
    eval_results = [
        EvalResult(task_type="audio-classification", dataset_type="nsynth", dataset_name="NSynth",
                   dataset_split="test", metric_type="accuracy", metric_name=titles[h],
                   metric_value=round(results[result_key("test", h)], 4))
        for h in heads
    ]
    base = args.model_name_or_path
    # The card's base_model must be a Hub id; local folders and presets are described in the text instead.
    is_hub_id = base.count("/") == 1 and not Path(base).exists() and not is_preset(base)
    widget = [{"src": f"{constants.ENDPOINT}/{repo_id}/resolve/main/{e['file']}",
               "example_title": f"{e['family']} {e['pitch_name']} (NSynth test {e['note_str']})"}
              for e in examples]
    fields = dict(
        tags=["audio", "music", "wav2vec2", "nsynth", "pitch-estimation", "instrument-recognition"],
        datasets=["nsynth"],
        pipeline_tag="audio-classification",
        model_name=model_name,
        eval_results=eval_results,
        widget=widget,
        model_id=repo_id,
        parent_id=parent_id,
        head=head,
        base=base,
        init="random initialisation" if args.random_init or is_preset(base) else f"`{base}`",
        results=results,
        extended=extension_text(results.get("extensions", [])),
        examples=examples,
        config=task.config,
        args={**vars(args), **vars(run)},
        num_processes=num_processes,
        num_parameters=sum(p.numel() for p in model.parameters()),
        command=command_line("finetune", task.argv),
    )
    if is_hub_id and not args.random_init:
        fields["base_model"] = base
    return fields


def parse_args(argv: list[str] | None = None) -> tuple[FinetuneArguments, RunArguments]:
    return parse_arguments("finetune", FinetuneArguments, FINETUNE_DEFAULTS, __doc__.splitlines()[0], argv)


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    args, run = parse_args(argv)
    return train(FinetuneTask(args, run, argv))


if __name__ == "__main__":
    from ..errors import report_user_errors
    from .launch import INTERRUPTED

    raise SystemExit(report_user_errors(main, INTERRUPTED))
