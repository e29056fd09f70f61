"""Saving models in the layout the Hub and `from_pretrained` expect, without ever leaving a half-written folder."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from transformers import PreTrainedModel, Wav2Vec2Config, Wav2Vec2FeatureExtractor

SAMPLING_RATE = 16_000


def music_feature_extractor(config: Wav2Vec2Config) -> Wav2Vec2FeatureExtractor:
    """The 16 kHz, zero-mean unit-variance feature extractor matching `config`'s backbone.

    Group-norm feature encoders (wav2vec2-base) change their output under zero padding and take no attention
    mask, so the extractor asks for a mask only for layer-norm backbones.
    """
    return Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=SAMPLING_RATE,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=config.feat_extract_norm == "layer",
    )


def replace_directory(source: Path, target: Path) -> None:
    """Move the finished folder `source` to `target`, replacing any old `target` only once `source` is complete."""
    target = Path(target)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(source, target)
    if old is not None:
        shutil.rmtree(old)


@contextmanager
def staged_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary sibling of `target`; on success it replaces `target`, on error it is removed."""
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staging
        replace_directory(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def save_pretrained_atomic(
    model: PreTrainedModel,
    save_directory: str | os.PathLike,
    feature_extractor: Wav2Vec2FeatureExtractor | None = None,
) -> Path:
    """Write `model` (safetensors, config.json, code files if registered) and its feature extractor.

    Everything is written into a temporary sibling folder first and moved into place at the end, so a crash
    leaves either the previous folder or the new one, never a mixture. Returns the folder's path.
    """
    feature_extractor = feature_extractor or music_feature_extractor(model.config)
    with staged_directory(save_directory) as staging:
        model.save_pretrained(staging)
        feature_extractor.save_pretrained(staging)
    return Path(save_directory).resolve()
