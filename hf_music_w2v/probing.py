"""Layer-wise probes of a frozen audio encoder on NSynth pitch and instrument family, or on any labelled task.

    hf-music-w2v probe MODEL --nsynth_dir data/nsynth --output_dir probe_out [--layers 0 6 12] [--probe linear]
        [--pitch_classes 88] [--seeds 0 1 2] [--trust_remote_code]
    hf-music-w2v probe MODEL --tasks tasks/gtzan tasks/hear/beijing_opera [pitch] [--nsynth_dir data/nsynth]
        --output_dir probe_out [--task_kind multilabel] [--window_seconds 30] [--on_error skip]

MODEL is any Hugging Face audio encoder that returns hidden states (this package's outputs, wav2vec2, HuBERT,
WavLM, data2vec-audio, or remote-code models such as MERT with --trust_remote_code). One pass of the frozen
encoder over each split stores the time-averaged output of every requested layer, cached on disk under a key
made of the weights' content, the notes and the extraction settings; every probe then trains on that cache:
- `linear`: one linear layer;
- `mlp`: MARBLE's probe, one hidden layer of 512 with ReLU and dropout 0.2;
- `weighted`: a learnable softmax-weighted sum of all probed layers feeding a linear layer (SUPERB's way).
All use Adam (lr 1e-3), batches of 64, at most 50 epochs, and stop when no probe's valid score has improved
for 10 epochs; each probe reports the test scores of its epoch with the best valid score. Features are
standardised per layer and dimension with the train split's statistics.

--tasks takes the built-in tasks `pitch` and `instrument` (NSynth, --nsynth_dir) and task folders: MARBLE's
(train/valid/test.jsonl rows with audio_path and label) or HEAR's scene tasks (task_metadata.json,
labelvocabulary.csv, {split}.json, audio under {sample_rate}/{split}/); see `hf_music_w2v.task_folders`.
A folder's kind comes from its labels (or --task_kind): single-label (cross-entropy; accuracy selects; also
macro-F1 and top-5), multi-label (binary cross-entropy; mAP selects; also macro ROC-AUC, HEAR's d-prime and
both per tag) or regression (squared error on standardised targets; R² selects; also R² per target and MSE).
Task folders share one pass over each distinct audio file (by content); a clip is read a block at a time and
encoded in windows of --window_seconds (30 s), its feature the mean of its windows' frame means. With task
folders, OUTPUT_DIR holds a folder of results per task and probe_summary.json / .md across them.

Layer 0 is the input of the first Transformer layer (the projected convolutional features with positional
embedding), layer N the output of Transformer layer N, as in transformers' `hidden_states`.
"""

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .atomic import atomic_path, write_text_atomic
from .audio import resample
from .fingerprints import file_digest, fingerprint_key, fingerprint_matches, notes_digest, weights_digest

TASKS = ("pitch", "instrument")
PROBES = ("linear", "mlp")
WEIGHTED = "weighted"
#: HEAR's NSynth pitch task keeps the 88 piano keys, MIDI 21-108.
HEAR_PITCH_RANGE = (21, 108)
#: Bump when what a cached feature means changes (pooling, layer numbering, dtype).
PROBE_FEATURE_FORMAT = 1
#: Bytes of features held in memory at once while probes train; more layers are trained in turns.
FEATURE_MEMORY_BUDGET = 2 * 1024**3


class ProbeError(ValueError):
    """MODEL or the probe settings cannot be used; the message says what was expected."""


@dataclass
class ProbeSettings:
    """What a probe run does. The defaults are the protocol described in the module docstring."""

    tasks: Sequence[str] = TASKS
    layers: Sequence[int] | None = None  # None: every layer the encoder returns
    probes: Sequence[str] = PROBES
    weighted_sum: bool = True
    pitch_classes: int = 128
    seeds: Sequence[int] = (0, 1, 2)
    batch_size: int = 16  # notes per forward pass of the encoder
    probe_batch_size: int = 64
    learning_rate: float = 1e-3
    max_epochs: int = 50
    patience: int = 10
    hidden_size: int = 512
    dropout: float = 0.2
    max_notes: int | None = None  # per split, for quick looks; a seeded random subset
    window_seconds: float = 30.0  # task folders: longer clips are cut into windows of this length
    extra: dict = field(default_factory=dict)

    def problems(self) -> list[str]:
        found = []
        if not self.tasks or set(self.tasks) - set(TASKS):
            found.append(f"--tasks must be among {', '.join(TASKS)}, got {' '.join(self.tasks)}")
        if not self.probes or set(self.probes) - set(PROBES):
            found.append(f"--probe must be among {', '.join(PROBES)}, got {' '.join(self.probes)}")
        if self.pitch_classes not in (128, 88):
            found.append(f"--pitch_classes must be 128 (MIDI 0-127) or 88 (MIDI 21-108, as HEAR), got {self.pitch_classes}")
        if not self.seeds:
            found.append("--seeds needs at least one seed")
        for name in ("batch_size", "probe_batch_size", "max_epochs", "patience", "hidden_size"):
            if getattr(self, name) < 1:
                found.append(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.max_notes is not None and self.max_notes < 1:
            found.append(f"--max_notes must be at least 1, got {self.max_notes}")
        if not 0 <= self.dropout < 1:
            found.append(f"--dropout must be in [0, 1), got {self.dropout}")
        if not self.window_seconds > 0:
            found.append(f"--window_seconds must be positive, got {self.window_seconds}")
        if self.learning_rate <= 0:
            found.append(f"--learning_rate must be positive, got {self.learning_rate}")
        if self.layers is not None and (not self.layers or min(self.layers) < 0):
            found.append(f"--layers takes layer numbers >= 0 (0: Transformer input), got {list(self.layers)}")
        return found


# ---------------------------------------------------------------------------------------------------- encoder


def load_encoder(name: str, trust_remote_code: bool = False, device: str = "cpu"):
    """(encoder, feature extractor) of MODEL, a folder or Hub id; `ProbeError` says why MODEL cannot be probed.

    The encoder is the model's base network (a classifier's backbone, a pretraining model's `wav2vec2`), in eval
    mode; the extractor is the model's own, or for a wav2vec2 folder without one the package's 16 kHz extractor.
    """
    import inspect

    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

    from .hub import load_pretrained, model_location_problem, music_feature_extractor, quiet_loading

    problem = model_location_problem(name)
    if problem:
        raise ProbeError(problem)
    try:
        with quiet_loading():
            config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
        model = load_pretrained(AutoModel, name, config=config, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        if "trust_remote_code" in str(error):
            raise ProbeError(f"{name} runs code of its own (its config's auto_map); pass --trust_remote_code if you "
                             "trust it") from None
        raise ProbeError(f"cannot load a model from {name!r}: {str(error).splitlines()[0]}") from None
    encoder = model.base_model
    if "input_values" not in inspect.signature(encoder.forward).parameters:
        raise ProbeError(f"{name} is a {config.model_type} model, not an audio encoder: its forward takes no "
                         "input_values")
    try:
        with quiet_loading():
            extractor = AutoFeatureExtractor.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        if not hasattr(encoder.config, "conv_kernel"):
            raise ProbeError(f"{name} has no preprocessor_config.json, so its sampling rate is unknown") from None
        extractor = music_feature_extractor(encoder.config)
    if not getattr(extractor, "sampling_rate", None):
        raise ProbeError(f"{name}'s feature extractor states no sampling_rate")
    return encoder.to(device).eval(), extractor


def encoder_layer_count(encoder) -> int:
    """Entries of `hidden_states`: the Transformer's input plus one per layer."""
    layers = getattr(encoder.config, "num_hidden_layers", None)
    if layers is None:
        raise ProbeError(f"{type(encoder).__name__}'s config states no num_hidden_layers")
    return layers + 1


@torch.inference_mode()
def pooled_layers(encoder, extractor, arrays: list[np.ndarray], layers: Sequence[int]) -> np.ndarray:
    """`[batch, layer, feature]` time-averaged hidden states of `layers` for equal-length clips at the extractor's rate."""
    inputs = extractor(arrays, sampling_rate=extractor.sampling_rate, return_tensors="pt")
    device = next(encoder.parameters()).device
    outputs = encoder(**{key: value.to(device) for key, value in inputs.items()}, output_hidden_states=True,
                      return_dict=True)
    hidden = outputs.hidden_states
    if hidden is None or len(hidden) <= max(layers):
        raise ProbeError(f"{type(encoder).__name__} returned {0 if hidden is None else len(hidden)} hidden states; "
                         f"layer {max(layers)} was asked for")
    return torch.stack([hidden[layer].float().mean(dim=1) for layer in layers], dim=1).cpu().numpy()


def extraction_settings(encoder, extractor, layers: Sequence[int]) -> dict:
    """Everything besides weights and notes that a cached feature depends on."""
    kept = ("sampling_rate", "do_normalize", "padding_value", "feature_extractor_type", "return_attention_mask")
    return {"format": PROBE_FEATURE_FORMAT, "encoder": type(encoder).__name__, "layers": list(layers),
            "pooling": "mean over frames", "dtype": "float32",
            "extractor": {key: value for key, value in extractor.to_dict().items() if key in kept}}


def split_features(encoder, extractor, notes, layers: Sequence[int], batch_size: int, cache_dir: Path,
                   weights: str, description: str) -> np.ndarray:
    """`[note, layer, feature]` float32 features of a split, memory-mapped from the cache (computed once).

    The `.npy` is written in full under a temporary name and renamed; its `.json` fingerprint is written after
    it, so a file without a matching fingerprint (a run killed between the two) is computed again.
    """
    fingerprint = {**extraction_settings(encoder, extractor, layers), "weights": weights,
                   "notes": notes_digest(notes), "count": len(notes)}
    path = Path(cache_dir) / f"{fingerprint_key(fingerprint)}.npy"
    if path.is_file() and fingerprint_matches(path.with_suffix(".json"), fingerprint):
        return np.load(path, mmap_mode="r")
    rate = extractor.sampling_rate
    with atomic_path(path) as staging:
        stored = None
        for start in tqdm(range(0, len(notes), batch_size), desc=description, unit="batch"):
            batch = notes[start:start + batch_size]["audio"]
            arrays = [resample(audio["array"], audio["sampling_rate"], rate) for audio in batch]
            pooled = pooled_layers(encoder, extractor, arrays, layers)
            if stored is None:
                stored = np.lib.format.open_memmap(staging, mode="w+", dtype=np.float32,
                                                   shape=(len(notes), len(layers), pooled.shape[-1]))
            stored[start:start + len(pooled)] = pooled
        stored.flush()
        del stored
    write_text_atomic(path.with_suffix(".json"), json.dumps(fingerprint, sort_keys=True))
    return np.load(path, mmap_mode="r")


def min_input_samples(encoder) -> int:
    """The fewest samples the encoder makes a frame of (its convolutional receptive field; 1 when unknown)."""
    from .inference import receptive_field

    config = encoder.config
    return receptive_field(config) if hasattr(config, "conv_kernel") and hasattr(config, "conv_stride") else 1


def clip_features(encoder, extractor, files: dict[str, Path], layers: Sequence[int], batch_size: int,
                  window_seconds: float, cache_dir: Path, weights: str, description: str = "clip features"
                  ) -> dict[str, np.ndarray]:
    """digest -> `[layer, feature]` float32 features of each distinct clip (`files` maps digest -> a file of it).

    A clip is read and resampled a block at a time and cut into windows of `window_seconds` (the last one ending
    with the clip; a shorter clip is one window of its own length, zero-padded to the encoder's receptive field);
    a clip's feature is the mean over its windows of each window's mean over frames. Windows of equal length
    share a forward pass, and at most `batch_size` windows wait in memory, so a clip of any length fits.
    The features of all clips are one cached `.npy`, keyed on the weights, the clips' content digests and the
    extraction settings.
    """
    from .data.validation import DataError
    from .inference import file_windows

    digests = sorted(files)
    fingerprint = {**extraction_settings(encoder, extractor, layers), "weights": weights,
                   "window_seconds": window_seconds, "windows": "back to back, the last ending with the clip; "
                   "mean of window means", "clips": clips_digest(digests), "count": len(digests)}
    path = Path(cache_dir) / f"{fingerprint_key(fingerprint)}.npy"
    if not (path.is_file() and fingerprint_matches(path.with_suffix(".json"), fingerprint)):
        rate = extractor.sampling_rate
        window, minimum = max(1, round(window_seconds * rate)), min_input_samples(encoder)
        windows = np.zeros(len(digests), dtype=np.int64)
        with atomic_path(path) as staging:
            stored, waiting = None, []

            def flush():
                nonlocal stored
                for length in sorted({len(audio) for _, audio in waiting}):
                    batch = [(row, audio) for row, audio in waiting if len(audio) == length]
                    pooled = pooled_layers(encoder, extractor, [audio for _, audio in batch], layers)
                    if stored is None:
                        stored = np.lib.format.open_memmap(staging, mode="w+", dtype=np.float32,
                                                           shape=(len(digests), len(layers), pooled.shape[-1]))
                    for (row, _), values in zip(batch, pooled):
                        stored[row] += values
                waiting.clear()

            for row, digest in enumerate(tqdm(digests, desc=description, unit="clip")):
                try:
                    _, pieces = file_windows(files[digest], rate, window)
                    for _, audio in pieces:
                        if len(audio) < minimum:
                            audio = np.pad(audio, (0, minimum - len(audio)))
                        waiting.append((row, audio))
                        windows[row] += 1
                        if len(waiting) >= batch_size:
                            flush()
                except DataError as error:
                    raise ProbeError(str(error)) from None
            flush()
            stored /= windows[:, None, None]
            stored.flush()
            del stored
        write_text_atomic(path.with_suffix(".json"), json.dumps(fingerprint, sort_keys=True))
    stored = np.load(path, mmap_mode="r")
    return {digest: stored[row] for row, digest in enumerate(digests)}


def clips_digest(digests: list[str]) -> str:
    """One digest of a sorted list of clip digests."""
    import hashlib

    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------------- probes


def init_uniform(*shape: int, fan_in: int, generator: torch.Generator) -> torch.nn.Parameter:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), `nn.Linear`'s default for weights and biases alike."""
    bound = fan_in ** -0.5
    return torch.nn.Parameter((torch.rand(*shape, generator=generator) * 2 - 1) * bound)


class LayerProbes(torch.nn.Module):
    """Independent probes trained side by side on `[batch, layer, feature]` inputs.

    `linear` and `mlp` keep one probe per layer (`[batch, layer, class]` logits); `weighted` is one probe on a
    softmax-weighted sum of the layers (`[batch, 1, class]`).
    """

    def __init__(self, kind: str, layers: int, features: int, classes: int, hidden: int, dropout: float,
                 generator: torch.Generator):
        super().__init__()
        self.kind = kind
        if kind == "linear":
            self.weight = init_uniform(layers, features, classes, fan_in=features, generator=generator)
            self.bias = init_uniform(layers, classes, fan_in=features, generator=generator)
        elif kind == "mlp":
            self.hidden_weight = init_uniform(layers, features, hidden, fan_in=features, generator=generator)
            self.hidden_bias = init_uniform(layers, hidden, fan_in=features, generator=generator)
            self.weight = init_uniform(layers, hidden, classes, fan_in=hidden, generator=generator)
            self.bias = init_uniform(layers, classes, fan_in=hidden, generator=generator)
            self.dropout = torch.nn.Dropout(dropout)
        elif kind == WEIGHTED:
            self.layer_logits = torch.nn.Parameter(torch.zeros(layers))
            self.weight = init_uniform(1, features, classes, fan_in=features, generator=generator)
            self.bias = init_uniform(1, classes, fan_in=features, generator=generator)
        else:
            raise ValueError(f"unknown probe {kind!r}")

    def layer_weights(self) -> torch.Tensor:
        return torch.softmax(self.layer_logits, dim=0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.kind == WEIGHTED:
            features = torch.einsum("bld,l->bd", features, self.layer_weights()).unsqueeze(1)
        elif self.kind == "mlp":
            hidden = torch.einsum("bld,ldh->blh", features, self.hidden_weight) + self.hidden_bias
            features = self.dropout(torch.relu(hidden))
            return torch.einsum("blh,lhc->blc", features, self.weight) + self.bias
        return torch.einsum("bld,ldc->blc", features, self.weight) + self.bias


@torch.no_grad()
def predict_outputs(model: LayerProbes, features: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """`[note, probe, output]` logits (or regression outputs)."""
    model.eval()
    return torch.cat([model(features[i:i + chunk]) for i in range(0, len(features), chunk)])


def predict_classes(model: LayerProbes, features: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """`[note, probe]` predicted classes."""
    return predict_outputs(model, features, chunk).argmax(dim=-1)


@dataclass
class ProbeSplits:
    """Standardised `[note, layer, feature]` features and labels of train, valid and test.

    `kind` is the task's: "single" (labels `[note]` class indices; `classes` classes), "multilabel" (`[note, tag]`
    0/1; `classes` tags) or "regression" (`[note, target]`, standardised with `target_mean` and `target_std`, by
    which outputs are scored in the targets' own units; `classes` targets). `all_metrics` adds macro-F1 and top-5
    accuracy to a single-label task's test scores.
    """

    features: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]
    classes: int
    kind: str = "single"
    target_mean: np.ndarray | None = None
    target_std: np.ndarray | None = None
    all_metrics: bool = False


def probe_loss(kind: str, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Loss of `[batch, probe, output]` outputs: mean over notes, sum over probes, so each probe's gradient is
    that of training it alone (cross-entropy, binary cross-entropy per tag, or squared error per target)."""
    functional = torch.nn.functional
    if kind == "single":
        targets = targets[:, None].expand(-1, outputs.shape[1])
        return functional.cross_entropy(outputs.transpose(1, 2), targets, reduction="none").mean(0).sum()
    targets = targets[:, None].expand_as(outputs)
    if kind == "multilabel":
        return functional.binary_cross_entropy_with_logits(outputs, targets, reduction="none").mean((0, 2)).sum()
    return functional.mse_loss(outputs, targets, reduction="none").mean((0, 2)).sum()


def scored(data: ProbeSplits, split: str, outputs: torch.Tensor, probes: list[int], selection_only: bool) -> list[dict]:
    """`task_scores` of each of `probes` on `split` of a multi-label or regression task."""
    from .probe_metrics import task_scores

    outputs, labels = outputs.numpy().astype(np.float64), data.labels[split].numpy().astype(np.float64)
    if data.kind == "regression":  # back to the targets' own units, where the MSE means something
        outputs, labels = outputs * data.target_std + data.target_mean, labels * data.target_std + data.target_mean
    return [task_scores(data.kind, outputs[:, k], labels, selection_only) for k in probes]


def train_probes(kind: str, data: ProbeSplits, seed: int, settings: ProbeSettings, chroma: bool) -> list[dict]:
    """Train probes of one kind on every layer of `data` at once; one result per probe.

    Each probe keeps the test scores of its own epoch with the best valid score (accuracy, mAP or R², by the
    task's kind); training stops when no probe has improved for `settings.patience` epochs, or after
    `settings.max_epochs`. Results hold `valid_<score>`, `test_<metric>` for each metric and `epoch`.
    """
    from .probe_metrics import SELECTION_METRIC, macro_f1, top_k_accuracy

    generator = torch.Generator().manual_seed(seed)
    train_x, train_y = data.features["train"], data.labels["train"]
    model = LayerProbes(kind, train_x.shape[1], train_x.shape[2], data.classes, settings.hidden_size,
                        settings.dropout, generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    probes = 1 if kind == WEIGHTED else train_x.shape[1]
    selection = f"valid_{SELECTION_METRIC[data.kind]}"
    best = [{selection: -math.inf} for _ in range(probes)]
    stale = 0
    for epoch in range(1, settings.max_epochs + 1):
        model.train()
        torch.manual_seed(seed * 1_000_003 + epoch)  # dropout masks
        for batch in torch.randperm(len(train_x), generator=generator).split(settings.probe_batch_size):
            loss = probe_loss(data.kind, model(train_x[batch]), train_y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if data.kind == "single":
            valid = (predict_classes(model, data.features["valid"]) == data.labels["valid"][:, None]).float().mean(0)
            valid = valid.tolist()
        else:
            valid = [entry[selection[6:]] for entry in scored(data, "valid", predict_outputs(
                model, data.features["valid"]), list(range(probes)), selection_only=True)]
            valid = [-1.0 if math.isnan(value) else value for value in valid]  # no tag both present and absent
        improved = [k for k in range(probes) if valid[k] > best[k][selection]]
        if improved:
            stale = 0
            outputs = predict_outputs(model, data.features["test"])
            if data.kind == "single":
                predicted, truth = outputs.argmax(dim=-1), data.labels["test"][:, None]
                test = (predicted == truth).float().mean(0)
                test_chroma = (predicted % 12 == truth % 12).float().mean(0)
                tests = {}
                for k in improved:
                    tests[k] = {"test_accuracy": test[k].item()}
                    if chroma:
                        tests[k]["test_chroma_accuracy"] = test_chroma[k].item()
                    if data.all_metrics:
                        labels = data.labels["test"].numpy()
                        tests[k]["test_macro_f1"] = macro_f1(predicted[:, k].numpy(), labels)
                        tests[k]["test_top5_accuracy"] = top_k_accuracy(outputs[:, k].numpy(), labels, 5)
            else:
                tests = {k: {f"test_{name}": value for name, value in entry.items()}
                         for k, entry in zip(improved, scored(data, "test", outputs, improved, selection_only=False))}
            for k in improved:
                best[k] = {selection: valid[k], **tests[k], "epoch": epoch}
                if kind == WEIGHTED:
                    best[k]["layer_weights"] = model.layer_weights().tolist()
        else:
            stale += 1
            if stale >= settings.patience:
                break
    for entry in best:
        entry["epochs_trained"] = epoch
    return best


# ------------------------------------------------------------------------------------------------------- run


def split_notes(nsynth_dir: str, split: str, settings: ProbeSettings, cache_dir: str | None):
    from .data import load_nsynth

    pitch_range = HEAR_PITCH_RANGE if settings.pitch_classes == 88 else None
    notes = load_nsynth(nsynth_dir, split, pitch_range=pitch_range, cache_dir=cache_dir)
    if settings.max_notes is not None and settings.max_notes < len(notes):
        notes = notes.shuffle(seed=0).select(range(settings.max_notes))
    return notes


def task_labels(notes, task: str, pitch_classes: int) -> tuple[torch.Tensor, int]:
    """Class indices of a split for `task`, and the class count (128 or 88 pitches from MIDI 21, or 11 families)."""
    if task == "instrument":
        from .configuration_music_wav2vec2 import NSYNTH_INSTRUMENT_FAMILIES

        return torch.tensor(list(notes.with_format(None)["instrument_family"])), len(NSYNTH_INSTRUMENT_FAMILIES)
    pitch = torch.tensor(list(notes.with_format(None)["pitch"]))
    return (pitch, 128) if pitch_classes == 128 else (pitch - HEAR_PITCH_RANGE[0], 88)


def standardised(features: dict[str, np.ndarray], layers: slice) -> dict[str, torch.Tensor]:
    """Features of `layers`, standardised per layer and dimension with the train split's mean and deviation."""
    train = np.asarray(features["train"][:, layers], dtype=np.float64)
    mean, std = train.mean(axis=0), train.std(axis=0)
    std[std < 1e-8] = 1.0
    return {name: torch.from_numpy(((np.asarray(values[:, layers], dtype=np.float64) - mean) / std).astype(np.float32))
            for name, values in features.items()}


def layer_groups(features: dict[str, np.ndarray], count: int) -> list[slice]:
    """Consecutive layer ranges whose features (all splits) fit `FEATURE_MEMORY_BUDGET` together."""
    per_layer = sum(values.shape[0] * values.shape[2] * 4 for values in features.values())
    step = max(1, FEATURE_MEMORY_BUDGET // max(per_layer, 1))
    return [slice(start, min(start + step, count)) for start in range(0, count, step)]


def summarise(task: str, layer, probe: str, per_seed: list[dict]) -> dict:
    """One results entry: means over seeds (and the test accuracies' sample deviation and values)."""
    tests = [entry["test_accuracy"] for entry in per_seed]
    entry = {"task": task, "layer": layer, "probe": probe,
             "valid_accuracy": float(np.mean([e["valid_accuracy"] for e in per_seed])),
             "test_accuracy": float(np.mean(tests)),
             "test_accuracy_std": float(np.std(tests, ddof=1)) if len(tests) > 1 else 0.0,
             "test_accuracy_per_seed": tests,
             "best_epoch_per_seed": [e["epoch"] for e in per_seed]}
    if "test_chroma_accuracy" in per_seed[0]:
        entry["test_chroma_accuracy"] = float(np.mean([e["test_chroma_accuracy"] for e in per_seed]))
    if "layer_weights" in per_seed[0]:
        entry["layer_weights"] = np.mean([e["layer_weights"] for e in per_seed], axis=0).tolist()
    return entry


def encoder_and_layers(model: str, settings: ProbeSettings, trust_remote_code: bool, device: str):
    """(encoder, feature extractor, the layer numbers to probe) of MODEL; `ProbeError` if a layer is not there."""
    encoder, extractor = load_encoder(model, trust_remote_code, device)
    available = encoder_layer_count(encoder)
    layers = list(range(available)) if settings.layers is None else sorted(set(settings.layers))
    if max(layers) >= available:
        raise ProbeError(f"--layers: {model} has layers 0-{available - 1}, got {max(layers)}")
    return encoder, extractor, layers


def probe_model(model: str, nsynth_dir: str, output_dir: str | os.PathLike, settings: ProbeSettings,
                trust_remote_code: bool = False, device: str = "cpu", cache_dir: str | None = None,
                feature_cache_dir: str | os.PathLike | None = None) -> dict:
    """Probe every requested layer of MODEL on NSynth; write probe_results.{json,md} and probe_layers.png."""
    from .data.cache import resolve_cache_dir
    from .plotting import plot_probe_layers
    from .report import probe_table

    problems = settings.problems()
    if problems:
        raise ProbeError("; ".join(problems))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    encoder, extractor, layers = encoder_and_layers(model, settings, trust_remote_code, device)
    notes = {split: split_notes(nsynth_dir, split, settings, cache_dir) for split in ("train", "valid", "test")}
    feature_dir = Path(feature_cache_dir) if feature_cache_dir else resolve_cache_dir(cache_dir) / "probe_features"
    started = time.perf_counter()
    weights = weights_digest(encoder)
    features = {split: split_features(encoder, extractor, split_notes_, layers, settings.batch_size, feature_dir,
                                      weights, f"{split} features")
                for split, split_notes_ in notes.items()}
    del encoder
    feature_seconds = time.perf_counter() - started

    started = time.perf_counter()
    results = []
    chroma = settings.pitch_classes == 88
    for task in settings.tasks:
        labels, classes = {}, 0
        for split, split_notes_ in notes.items():
            labels[split], classes = task_labels(split_notes_, task, settings.pitch_classes)
        for probe in settings.probes:
            for group in layer_groups(features, len(layers)):
                data = ProbeSplits(standardised(features, group), labels, classes)
                runs = [train_probes(probe, data, seed, settings, chroma and task == "pitch") for seed in settings.seeds]
                for offset, layer in enumerate(layers[group]):
                    results.append(summarise(task, layer, probe, [run[offset] for run in runs]))
        if settings.weighted_sum and len(layers) > 1:
            data = ProbeSplits(standardised(features, slice(None)), labels, classes)
            runs = [train_probes(WEIGHTED, data, seed, settings, chroma and task == "pitch") for seed in settings.seeds]
            results.append(summarise(task, WEIGHTED, "linear", [run[0] for run in runs]))

    protocol = {key: value for key, value in asdict(settings).items() if key not in ("extra",)}
    protocol.update({"layers": layers, "sampling_rate": extractor.sampling_rate, "pooling": "mean over frames",
                     "standardisation": "per layer and dimension, train statistics",
                     "selection": "each probe's epoch with the best valid accuracy; test accuracy at that epoch",
                     "optimizer": "Adam", "notes": {split: len(n) for split, n in notes.items()},
                     "layer_0": "input of the first Transformer layer", **settings.extra})
    timing = {"feature_seconds": feature_seconds, "probe_seconds": time.perf_counter() - started}
    report = {"model": str(model), "protocol": protocol, "results": results, "timing": timing}
    write_text_atomic(output_dir / "probe_results.json", json.dumps(report, indent=2))
    plot_probe_layers({Path(str(model)).name or str(model): report}, output_dir / "probe_layers.png")
    write_text_atomic(output_dir / "probe_results.md", probe_table(report))
    return report


def json_safe(value):
    """`value` with nan (a tag without positives, a mean over none) as None, which JSON can hold."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list):
        return [json_safe(item) for item in value]
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    return value


def seed_mean(values: list) -> float | list:
    """Mean over seeds of numbers or of equal-length lists, nan entries left out (nan when all are)."""
    array = np.array(values, dtype=np.float64)
    kept = ~np.isnan(array)
    counts = kept.sum(axis=0)
    sums = np.where(kept, array, 0.0).sum(axis=0)
    means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return means.tolist() if array.ndim > 1 else float(means)


def summarise_task(task: str, kind: str, layer, probe: str, per_seed: list[dict]) -> dict:
    """One results entry of a task folder: every score's mean over seeds; the selection metric's test values."""
    from .probe_metrics import SELECTION_METRIC

    headline = f"test_{SELECTION_METRIC[kind]}"
    entry = {"task": task, "kind": kind, "layer": layer, "probe": probe}
    for key in per_seed[0]:
        if key not in ("epoch", "epochs_trained"):
            entry[key] = seed_mean([run[key] for run in per_seed])
    tests = [run[headline] for run in per_seed]
    finite = [value for value in tests if not math.isnan(value)]
    entry[f"{headline}_std"] = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    entry[f"{headline}_per_seed"] = tests
    entry["best_epoch_per_seed"] = [run["epoch"] for run in per_seed]
    return entry


def task_splits(task, features: dict[str, np.ndarray], digests: dict[Path, str]) -> tuple[dict, dict, dict]:
    """(`[clip, layer, feature]` features, label tensors, target statistics) of each split of a `ProbeTask`."""
    stacked = {split: np.stack([features[digests[path]] for path in files]) for split, files in task.files.items()}
    if task.kind == "regression":
        mean = task.labels["train"].mean(axis=0)
        std = task.labels["train"].std(axis=0)
        std[std < 1e-8] = 1.0
        labels = {split: torch.from_numpy(((values - mean) / std).astype(np.float32))
                  for split, values in task.labels.items()}
        return stacked, labels, {"target_mean": mean.astype(np.float64), "target_std": std.astype(np.float64)}
    return stacked, {split: torch.from_numpy(values) for split, values in task.labels.items()}, {}


def probe_task(task, features: dict[str, np.ndarray], digests: dict[Path, str], layers: list[int],
               settings: ProbeSettings) -> list[dict]:
    """Results entries of every probe and layer (and the weighted sum) on one `ProbeTask`."""
    stacked, labels, targets = task_splits(task, features, digests)
    classes = len(task.names)
    results = []
    for probe in settings.probes:
        for group in layer_groups(stacked, len(layers)):
            data = ProbeSplits(standardised(stacked, group), labels, classes, task.kind, all_metrics=True, **targets)
            runs = [train_probes(probe, data, seed, settings, chroma=False) for seed in settings.seeds]
            for offset, layer in enumerate(layers[group]):
                results.append(summarise_task(task.name, task.kind, layer, probe, [run[offset] for run in runs]))
    if settings.weighted_sum and len(layers) > 1:
        data = ProbeSplits(standardised(stacked, slice(None)), labels, classes, task.kind, all_metrics=True,
                           **targets)
        runs = [train_probes(WEIGHTED, data, seed, settings, chroma=False) for seed in settings.seeds]
        results.append(summarise_task(task.name, task.kind, WEIGHTED, "linear", [run[0] for run in runs]))
    return results


def best_entry(report: dict) -> dict:
    """The results entry with the best valid score (ties: the earlier one)."""
    from .probe_metrics import SELECTION_METRIC

    metric = SELECTION_METRIC[report["protocol"].get("kind", "single")]
    return max(report["results"], key=lambda entry: -math.inf if entry.get(f"valid_{metric}") is None
               else entry[f"valid_{metric}"])


def probe_tasks(model: str, tasks: Sequence, output_dir: str | os.PathLike, settings: ProbeSettings,
                trust_remote_code: bool = False, device: str = "cpu", nsynth_dir: str | None = None,
                cache_dir: str | None = None, feature_cache_dir: str | os.PathLike | None = None,
                kinds: dict[str, str] | str | None = None, on_error: str = "raise", test_fold: int = 0) -> dict:
    """Probe every requested layer of MODEL on each task; write OUTPUT_DIR/<task>/probe_results.{json,md},
    OUTPUT_DIR/<task>/probe_layers.png and OUTPUT_DIR/probe_summary.{json,md}; return the summary.

    A task is a built-in name (`pitch`, `instrument`: NSynth from `nsynth_dir`, as `probe_model`), a MARBLE or
    HEAR task folder, or a `task_folders.ProbeTask`. `kinds` overrides folder tasks' kinds: one kind for all,
    or task name -> kind. `on_error="skip"` leaves out unreadable audio files (listed in the results);
    `test_fold` is HEAR k-fold tasks' test fold (the next fold is valid, the others train). The
    folder tasks share one pass of the encoder over each distinct audio file (by content).
    """
    from dataclasses import replace

    from .data.cache import resolve_cache_dir
    from .plotting import plot_probe_layers
    from .probe_metrics import SELECTION_METRIC
    from .report import task_probe_table, task_summary_table
    from .task_folders import ProbeTask, load_task

    problems = replace(settings, tasks=TASKS).problems()
    if problems:
        raise ProbeError("; ".join(problems))
    if not tasks:
        raise ProbeError("--tasks needs at least one task")
    builtins = [task for task in tasks if isinstance(task, str) and task in TASKS]
    if builtins and nsynth_dir is None:
        raise ProbeError(f"--nsynth_dir is needed for the built-in task{'s' * (len(builtins) > 1)} "
                         f"{' '.join(builtins)}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    folders = [task for task in tasks if not (isinstance(task, str) and task in TASKS)]
    loaded = []
    if folders:  # loaded and checked before any probing, so a bad folder stops the run at once
        encoder, extractor, layers = encoder_and_layers(model, settings, trust_remote_code, device)

        def kind_of(name: str) -> str | None:
            return kinds if isinstance(kinds, str) or kinds is None else kinds.get(name)

        loaded = [task if isinstance(task, ProbeTask) else
                  load_task(task, kind_of(Path(task).name), on_error, extractor.sampling_rate, test_fold)
                  for task in folders]
        unknown = sorted(set(kinds) - {task.name for task in loaded}) if isinstance(kinds, dict) else []
        if unknown:
            raise ProbeError(f"--task_kind names {', '.join(unknown)}, which is not among the task folders "
                             f"({', '.join(task.name for task in loaded)})")
    names = [task.name for task in loaded] + builtins
    if len(set(names)) < len(names):
        raise ProbeError(f"two tasks share a name ({', '.join(names)}); their results would share a folder")
    reports = {}
    for name in builtins:
        reports[name] = probe_model(model, nsynth_dir, output_dir / name, replace(settings, tasks=(name,)),
                                    trust_remote_code, device, cache_dir, feature_cache_dir)
    if folders:
        digests = {path: file_digest(path) for task in loaded for files in task.files.values() for path in files}
        feature_dir = Path(feature_cache_dir) if feature_cache_dir else resolve_cache_dir(cache_dir) / "probe_features"
        started = time.perf_counter()
        features = clip_features(encoder, extractor, {digest: path for path, digest in digests.items()}, layers,
                                 settings.batch_size, settings.window_seconds, feature_dir, weights_digest(encoder))
        del encoder
        feature_seconds = time.perf_counter() - started
        for task in loaded:
            started = time.perf_counter()
            results = probe_task(task, features, digests, layers, settings)
            metric = SELECTION_METRIC[task.kind]
            protocol = {key: value for key, value in asdict(settings).items()
                        if key not in ("extra", "tasks", "pitch_classes", "max_notes")}
            protocol.update({"task": task.name, "source": task.source, "kind": task.kind, "names": task.names,
                             "clips": task.counts(), "skipped": task.skipped, "layers": layers,
                             "sampling_rate": extractor.sampling_rate,
                             "pooling": f"mean over frames of each window of at most {settings.window_seconds} s, "
                                        "then mean over windows",
                             "standardisation": "per layer and dimension, train statistics"
                                                + ("; targets too" if task.kind == "regression" else ""),
                             "selection": f"each probe's epoch with the best valid {metric}; test scores at that "
                                          "epoch",
                             "headline": f"test_{metric}", "optimizer": "Adam",
                             "layer_0": "input of the first Transformer layer", "task_metadata": task.metadata,
                             **settings.extra})
            timing = {"feature_seconds": feature_seconds, "probe_seconds": time.perf_counter() - started}
            report = json_safe({"model": str(model), "protocol": protocol, "results": results, "timing": timing})
            task_dir = output_dir / task.name
            task_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(task_dir / "probe_results.json", json.dumps(report, indent=2))
            plot_probe_layers({Path(str(model)).name or str(model): report}, task_dir / "probe_layers.png",
                              metric=f"test_{metric}")
            write_text_atomic(task_dir / "probe_results.md", task_probe_table(report))
            reports[task.name] = report
    summary = {"model": str(model), "tasks": {}}
    for name, report in reports.items():
        kind = report["protocol"].get("kind", "single")
        metric = SELECTION_METRIC[kind]
        best = best_entry(report)
        weighted = next((e for e in report["results"] if e["layer"] == WEIGHTED), None)
        summary["tasks"][name] = {
            "kind": kind, "metric": metric, "clips": report["protocol"].get("clips", report["protocol"].get("notes")),
            "best": {"layer": best["layer"], "probe": best["probe"], f"valid_{metric}": best[f"valid_{metric}"],
                     f"test_{metric}": best[f"test_{metric}"]},
            "weighted_sum": None if weighted is None else weighted[f"test_{metric}"],
            "skipped": sum(len(files) for files in report["protocol"].get("skipped", {}).values()),
            "results": str(Path(name) / "probe_results.json")}
    write_text_atomic(output_dir / "probe_summary.json", json.dumps(json_safe(summary), indent=2))
    write_text_atomic(output_dir / "probe_summary.md", task_summary_table(summary))
    return summary


__all__ = ["ProbeError", "ProbeSettings", "load_encoder", "probe_model", "probe_tasks", "train_probes"]
