"""The two-head classifier as ONNX: one graph, input `input_values` [batch, sample], outputs `pitch_logits` and
`instrument_logits`, batch size and length free. Needs the `onnx` extra (onnx, onnxscript, onnxruntime).

    hf-music-w2v export-onnx runs/w2v-nsynth model.onnx

Exported with torch's dynamo-based exporter (`torch.onnx.export(..., dynamo=True)`), then checked: onnxruntime
runs the graph on a test input and must agree with PyTorch (the largest difference is returned).
"""

import os
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_path
from .modeling_music_wav2vec2 import Wav2Vec2ForMusicClassification

OUTPUT_NAMES = ("pitch_logits", "instrument_logits")


def require_onnx() -> None:
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if _missing(name)]
    if missing:
        raise ImportError(f"exporting to ONNX needs {', '.join(missing)}: pip install 'hf_music_w2v[onnx]'")


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


class TwoHeads(torch.nn.Module):
    """The classifier with its two logits as plain outputs (ONNX graphs return tensors, not dataclasses)."""

    def __init__(self, model: Wav2Vec2ForMusicClassification):
        super().__init__()
        self.model = model

    def forward(self, input_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.model(input_values, return_dict=True)
        return output.pitch_logits, output.instrument_logits


def export_onnx(model: Wav2Vec2ForMusicClassification, path: str | os.PathLike, opset: int = 18) -> Path:
    """Write `model` as an ONNX graph at `path` (atomically); batch size and length stay free."""
    require_onnx()
    model = model.eval()
    receptive = 1
    for kernel, stride in reversed(list(zip(model.config.conv_kernel, model.config.conv_stride))):
        receptive = (receptive - 1) * stride + kernel
    example = torch.randn(2, 4 * 16_000, generator=torch.Generator().manual_seed(0))
    shapes = {"input_values": {0: torch.export.Dim("batch"), 1: torch.export.Dim("samples", min=receptive)}}
    with atomic_path(path) as staging:
        torch.onnx.export(TwoHeads(model).eval(), (example,), str(staging), input_names=["input_values"],
                          output_names=list(OUTPUT_NAMES), dynamic_shapes=shapes, opset_version=opset, dynamo=True,
                          external_data=False)
    return Path(path)


def onnx_difference(model: Wav2Vec2ForMusicClassification, path: str | os.PathLike, input_values: np.ndarray) -> float:
    """Largest absolute difference between onnxruntime and PyTorch logits on `input_values` [batch, sample]."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {"input_values": input_values.astype(np.float32)})))
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(input_values.astype(np.float32)))
    return max(float(np.abs(got[name] - getattr(expected, name).numpy()).max()) for name in OUTPUT_NAMES)


__all__ = ["OUTPUT_NAMES", "export_onnx", "onnx_difference"]
