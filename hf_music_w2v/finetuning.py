"""The pieces of NSynth fine-tuning that `training/finetune.py` puts together and the tests check one by one."""

import json
import os
import shutil
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset
from transformers.utils import logging

from .configuration_music_wav2vec2 import MusicWav2Vec2Config, wav2vec2_base_config
from .hub import write_text_atomic
from .modeling_music_wav2vec2 import Wav2Vec2ForMusicClassification, masked_cross_entropy
from .pretraining import TRAINER_STATE_NAME, normalize_audio, step_if_finite

logger = logging.get_logger(__name__)

#: `--model_name_or_path` value for the wav2vec2-base architecture with random weights (the no-pretraining baseline).
BASE_PRESET = "preset:wav2vec2-base"
NOTE_SAMPLES = 64_000  # NSynth's 4 s at 16 kHz
SCORES = ("pitch_accuracy", "instrument_accuracy", "mean_accuracy")


def build_classifier(model_name_or_path: str, random_init: bool = False, **config_overrides
                     ) -> Wav2Vec2ForMusicClassification:
    """`Wav2Vec2ForMusicClassification` from a pretraining output, any wav2vec2 checkpoint or `BASE_PRESET`.

    With `random_init` the checkpoint only gives the architecture. Backbone weights load as they are; the two
    heads are always new. `config_overrides` set config fields (loss weights, dropout, masking).
    """
    if model_name_or_path == BASE_PRESET:
        base = wav2vec2_base_config().to_dict()
        config = MusicWav2Vec2Config.from_dict(base, **config_overrides)
        random_init = True
    else:
        config = MusicWav2Vec2Config.from_pretrained(model_name_or_path, **config_overrides)
    if random_init:
        return Wav2Vec2ForMusicClassification(config)
    return Wav2Vec2ForMusicClassification.from_pretrained(model_name_or_path, config=config)


def fixed_length(audio: np.ndarray, samples: int = NOTE_SAMPLES) -> np.ndarray:
    """Cut or zero-pad a `[sample]` note to `samples` (NSynth notes are all 4 s; some copies are not)."""
    if len(audio) >= samples:
        return audio[:samples]
    return np.pad(audio, (0, samples - len(audio)))


def collate_notes(rows: list[dict]) -> dict[str, torch.Tensor]:
    """NSynth rows (decoded audio) -> model inputs: normalised 4 s waveforms and both label kinds."""
    audio = torch.from_numpy(np.stack([fixed_length(row["audio"]["array"]) for row in rows]))
    return {
        "input_values": normalize_audio(audio),
        "pitch_labels": torch.tensor([row["pitch"] for row in rows]),
        "instrument_labels": torch.tensor([row["instrument_family"] for row in rows]),
    }


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
        sync = index == len(micro_batches) - 1
        with nullcontext() if sync else accelerator.no_sync(model):
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
    from .evaluation import head_metrics

    results = {}
    for head in ("pitch", "instrument"):
        metrics = head_metrics(predictions[f"{head}_logits"], predictions[f"{head}_labels"], top_k=top_k)
        results.update({f"{prefix}_{head}_{name}": value for name, value in metrics.items()})
    results[f"{prefix}_mean_accuracy"] = (results[f"{prefix}_pitch_accuracy"]
                                          + results[f"{prefix}_instrument_accuracy"]) / 2
    return results


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts `[true class, predicted class]`."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def save_confusion_matrix_png(matrix: np.ndarray, class_names: list[str], path: str | os.PathLike,
                              title: str) -> Path:
    """A row-normalised heat map of `matrix` with counts in the cells, written atomically as PNG."""
    from .report import pyplot, save_figure

    plt = pyplot()
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    figure, axes = plt.subplots(figsize=(7.5, 6.5))
    image = axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    axes.set_yticks(range(len(class_names)), class_names)
    axes.set_xlabel("predicted family")
    axes.set_ylabel("true family")
    axes.set_title(title)
    for (row, column), count in np.ndenumerate(matrix):
        if count:
            axes.text(column, row, str(count), ha="center", va="center", fontsize=7,
                      color="white" if share[row, column] > 0.5 else "black")
    figure.colorbar(image, ax=axes, label="share of the true family's notes")
    figure.tight_layout()
    return save_figure(figure, path)


@dataclass
class FinetuneState:
    """Where a fine-tuning run is, saved next to accelerate's state in every checkpoint."""

    step: int = 0
    epoch: int = 0
    micro_batches_in_epoch: int = 0
    skipped_updates: int = 0
    train_seconds: float = 0.0
    best_score: float | None = None
    best_epoch: int | None = None
    best_metrics: dict = field(default_factory=dict)
    epochs_evaluated: list = field(default_factory=list)
    last_metrics: dict = field(default_factory=dict)

    @classmethod
    def read(cls, checkpoint: Path) -> "FinetuneState":
        return cls(**json.loads((Path(checkpoint) / TRAINER_STATE_NAME).read_text()))


def feature_cache_matches(path: Path, fingerprint: dict) -> bool:
    meta = path.with_suffix(".json")
    return path.is_file() and meta.is_file() and json.loads(meta.read_text()) == fingerprint


def save_feature_cache(path: Path, tensors: dict[str, torch.Tensor], fingerprint: dict) -> None:
    """Pooled features and labels of one split, with the fingerprint of the backbone and data they came from."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(staging))
    os.replace(staging, path)
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

    from .configuration_music_wav2vec2 import NSYNTH_INSTRUMENT_FAMILIES, midi_pitch_name

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
