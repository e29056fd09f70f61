"""Export one head of the two-head classifier as a standard `Wav2Vec2ForSequenceClassification`.

The Hub's inference widget runs the stock audio-classification pipeline and no custom code. Our heads are
linear maps of the mean-pooled last layer; `Wav2Vec2ForSequenceClassification` projects every frame, mean-pools
the projection and applies a linear classifier. With an identity projector of the hidden size the two compute
the same logits, so each head becomes a plain transformers model that the widget (and any pipeline) can run.
"""

import os
from pathlib import Path

import torch
from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification

from .hub import music_feature_extractor, save_pretrained_atomic
from .modeling_music_wav2vec2 import Wav2Vec2ForMusicClassification

#: Head name -> (attribute of Wav2Vec2ForMusicClassification, the config field naming its classes).
HEAD_MODULES = {"pitch": ("pitch_head", "pitch_id2label"), "instrument": ("instrument_head", "id2label")}
_CLASSIFIER_ONLY_FIELDS = ("pitch_id2label", "pitch_loss_weight", "instrument_loss_weight", "auto_map",
                           "architectures", "id2label", "label2id", "model_type", "transformers_version")


def sequence_classification_config(model: Wav2Vec2ForMusicClassification, head: str) -> Wav2Vec2Config:
    """A plain wav2vec2 config with the backbone of `model` and the classes of `head`."""
    if head not in HEAD_MODULES:
        raise ValueError(f"head must be one of {', '.join(HEAD_MODULES)}, got {head!r}")
    values = {k: v for k, v in model.config.to_dict().items() if k not in _CLASSIFIER_ONLY_FIELDS}
    id2label = {int(k): v for k, v in getattr(model.config, HEAD_MODULES[head][1]).items()}
    values.update(
        id2label=id2label,
        label2id={name: index for index, name in id2label.items()},
        classifier_proj_size=model.config.hidden_size,
        use_weighted_layer_sum=False,
    )
    config = Wav2Vec2Config(**values)
    config.architectures = ["Wav2Vec2ForSequenceClassification"]
    return config


@torch.no_grad()
def to_sequence_classification(model: Wav2Vec2ForMusicClassification, head: str) -> Wav2Vec2ForSequenceClassification:
    """`Wav2Vec2ForSequenceClassification` whose logits equal `model`'s `{head}_logits` (in eval mode)."""
    exported = Wav2Vec2ForSequenceClassification(sequence_classification_config(model, head))
    exported.wav2vec2.load_state_dict(model.wav2vec2.state_dict())
    hidden = model.config.hidden_size
    exported.projector.weight.copy_(torch.eye(hidden))
    exported.projector.bias.zero_()
    source = getattr(model, HEAD_MODULES[head][0])
    exported.classifier.weight.copy_(source.weight)
    exported.classifier.bias.copy_(source.bias)
    return exported.eval()


def export_widget_models(model: Wav2Vec2ForMusicClassification, output_dir: str | os.PathLike
                         ) -> dict[str, Path]:
    """Save each head as its own `save_pretrained` folder, `output_dir/<head>/`; returns head -> folder."""
    folders = {}
    for head in HEAD_MODULES:
        exported = to_sequence_classification(model, head)
        folders[head] = save_pretrained_atomic(exported, Path(output_dir) / head, music_feature_extractor(model.config))
    return folders


__all__ = ["HEAD_MODULES", "export_widget_models", "sequence_classification_config", "to_sequence_classification"]
