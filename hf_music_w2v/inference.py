"""Batched inference on audio files of any sample rate, channel count and length: predictions and embeddings.

Files are read with soundfile, downmixed to mono and resampled to the model's rate, then cut into windows of
`window_seconds` (the last one aligned to the file's end, so nothing is padded; a file shorter than a window
is one window of its own length). Windows of equal length from several files share a batch; a file's result
averages its windows.

Every problem is a file's own and the other files are still answered: a file that cannot be read, one
shorter than the model's receptive field (refused, with the minimum length; wav2vec2-base needs 400 samples,
25 ms), and a silent one (RMS below `SILENCE_DBFS` after downmixing: its normalised noise would get a
confident but meaningless answer) are reported instead of answered.
"""

import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_path
from .audio import resample, resample_blocks, resampled_length, window_starts, windows_of_stream
from .data.validation import DataError, audio_info, read_audio_blocks
from .precision import autocast, resolve_precision

DEFAULT_WINDOW_SECONDS = 4.0  # NSynth's note length, what the classifier was trained on
#: A file whose RMS level (after downmixing, full scale = 0 dBFS) is below this is silent: nothing to classify.
SILENCE_DBFS = -60.0
READ_BLOCK_FRAMES = 1 << 20  # samples read at a time: memory stays bounded whatever a file's length


def receptive_field(config) -> int:
    """The fewest samples from which `config`'s convolutional feature encoder makes one frame."""
    samples = 1
    for kernel, stride in reversed(list(zip(config.conv_kernel, config.conv_stride))):
        samples = (samples - 1) * stride + kernel
    return samples


def file_windows(path: str | os.PathLike, sampling_rate: int, window: int):
    """(samples at `sampling_rate`, iterator of (start, window) pairs) of an audio file, read a block at a time.

    Any channel count is downmixed and any rate resampled; the windows are back-to-back, the last one ending
    with the file (a file shorter than a window is one window of its own length). `DataError` names the file.
    """
    frames, rate = audio_info(path)
    total = resampled_length(frames, rate, sampling_rate)
    if total == 0:
        raise DataError(path, "contains no samples")
    blocks = read_audio_blocks(path, block_frames=READ_BLOCK_FRAMES, downmix=True)
    if frames <= READ_BLOCK_FRAMES:  # one block: resampled in one call (the block-wise resampler takes two)
        pieces = iter([resample(next(blocks), rate, sampling_rate)])
    else:
        pieces = resample_blocks(blocks, rate, sampling_rate)
    starts = window_starts(total, window, window)
    return total, ((start, audio[: min(window, total - start)])
                   for start, audio in windows_of_stream(pieces, total, starts, window))


@dataclass
class FileResult:
    """One file's outcome: `outputs` (name -> [feature] averaged over windows) or the `error` that stopped it."""

    path: str
    outputs: dict[str, np.ndarray] | None = None
    windows: int = 0
    seconds: float = 0.0
    error: str | None = None
    silent: bool = False
    level_dbfs: float | None = None


class AudioRunner:
    """Runs `model` on the windows of many files in batches; `outputs_fn(model output) -> {name: [batch, dim]}`.

    `precision`: "fp32" (the default), "bf16" (autocast) or "auto" (bf16 where the device has it natively, as
    `predict` does by default).
    """

    def __init__(self, model, feature_extractor, outputs_fn, batch_size: int = 16,
                 window_seconds: float = DEFAULT_WINDOW_SECONDS, device: str | torch.device = "cpu",
                 precision: str = "fp32"):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.to(device).eval()
        self.extractor = feature_extractor
        self.outputs_fn = outputs_fn
        self.batch_size = batch_size
        self.sampling_rate = feature_extractor.sampling_rate
        self.window = round(window_seconds * self.sampling_rate)
        self.min_samples = receptive_field(model.config)
        if self.window < self.min_samples:
            raise ValueError(f"window_seconds must be at least {self.min_samples / self.sampling_rate:.3f} s "
                             f"(the model's receptive field), got {window_seconds}")
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)

    def run(self, paths: Sequence[str | os.PathLike], files_per_chunk: int | None = None) -> Iterator[FileResult]:
        """Results in the order of `paths`; files are read `files_per_chunk` at a time (default: batch size)."""
        chunk = files_per_chunk or self.batch_size
        for first in range(0, len(paths), chunk):
            yield from self._run_chunk([str(p) for p in paths[first : first + chunk]])

    def _run_chunk(self, paths: list[str]) -> list[FileResult]:
        results = [FileResult(path) for path in paths]
        by_length: dict[int, list[tuple[int, np.ndarray]]] = defaultdict(list)
        for index, path in enumerate(paths):
            result = results[index]
            try:
                total, windows = file_windows(path, self.sampling_rate, self.window)
                if total < self.min_samples:
                    raise DataError(path, f"too short: {total} samples at {self.sampling_rate} Hz; the model needs "
                                          f"at least {self.min_samples} "
                                          f"({1000 * self.min_samples / self.sampling_rate:.1f} ms)")
                pieces, energy = [], 0.0
                for _, piece in windows:  # back to back: together they hold every sample once, or more at the end
                    pieces.append(piece)
                    energy += float(np.square(piece, dtype=np.float64).sum())
            except DataError as error:
                result.error = str(error)
                continue
            result.seconds = total / self.sampling_rate
            overlap = sum(len(p) for p in pieces) - total  # the end-aligned last window repeats some samples
            last = pieces[-1][: overlap] if overlap > 0 else pieces[-1][:0]
            mean_square = (energy - float(np.square(last, dtype=np.float64).sum())) / total
            result.level_dbfs = 10 * np.log10(mean_square) if mean_square > 0 else float("-inf")
            if result.level_dbfs < SILENCE_DBFS:
                result.silent = True
                result.error = (f"{path}: silent (RMS {result.level_dbfs:.1f} dBFS, below {SILENCE_DBFS:.0f} dBFS); "
                                "not classified")
                continue
            for piece in pieces:
                by_length[len(piece)].append((index, piece))
        sums: dict[int, dict[str, np.ndarray]] = {}
        for pieces in by_length.values():
            for first in range(0, len(pieces), self.batch_size):
                batch = pieces[first : first + self.batch_size]
                outputs = self._forward([piece for _, piece in batch])
                for row, (index, _) in enumerate(batch):
                    totals = sums.setdefault(index, {})
                    for name, values in outputs.items():
                        totals[name] = totals.get(name, 0) + values[row]
                    results[index].windows += 1
        for index, totals in sums.items():
            results[index].outputs = {name: total / results[index].windows for name, total in totals.items()}
        return results

    @torch.inference_mode()
    def _forward(self, windows: list[np.ndarray]) -> dict[str, np.ndarray]:
        inputs = self.extractor(windows, sampling_rate=self.sampling_rate, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items() if k in ("input_values", "attention_mask")}
        with autocast(self.precision, self.device):
            outputs = self.outputs_fn(self.model, inputs)
        return {name: value.float().cpu().numpy() for name, value in outputs.items()}


def class_probabilities(model, inputs) -> dict[str, torch.Tensor]:
    """`outputs_fn` of `predict`: softmax of both heads of a `Wav2Vec2ForMusicClassification`."""
    output = model(**inputs)
    return {"pitch": output.pitch_logits.softmax(-1), "instrument": output.instrument_logits.softmax(-1)}


def layer_embedding(layer: int):
    """`outputs_fn` of `embed`: hidden states of `layer` (0 = Transformer input, -1 = last) averaged over frames."""

    def embed(model, inputs) -> dict[str, torch.Tensor]:
        output = model(**inputs, output_hidden_states=True)
        return {"embedding": output.hidden_states[layer].mean(dim=1)}

    return embed


def top_classes(probabilities: np.ndarray, id2label: dict[int, str], k: int) -> list[tuple[int, str, float]]:
    """The `k` most probable classes as (id, label, probability), best first."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [(int(i), id2label[int(i)], float(probabilities[i])) for i in order]


def save_embeddings(path: str | os.PathLike, files: list[str], embeddings: np.ndarray, layer: int) -> Path:
    """An .npz with `embeddings` [file, hidden], `files` and `layer`, written through a temporary file."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"--output must end in .npz (embeddings, file names and layer in one file), got {path}")
    with atomic_path(path) as staging:
        np.savez(staging, embeddings=embeddings.astype(np.float32), files=np.array(files), layer=np.array(layer))
    return path


__all__ = ["AudioRunner", "FileResult", "class_probabilities", "file_windows", "layer_embedding",
           "receptive_field", "save_embeddings", "top_classes", "SILENCE_DBFS"]
