"""`Wav2Vec2ForMusicClassification`: a wav2vec 2.0 backbone, mean-pooled, with pitch and instrument heads.

Like the configuration file, this file travels with saved checkpoints as remote code, so it imports only
torch, transformers and its sibling configuration module.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import Wav2Vec2Model, Wav2Vec2PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_music_wav2vec2 import MusicWav2Vec2Config


@dataclass
class MusicClassifierOutput(ModelOutput):
    """
    Output of [`Wav2Vec2ForMusicClassification`].

    Args:
        loss (`torch.FloatTensor` of shape `[]`, *optional*, returned when any labels are given):
            `pitch_loss_weight * pitch_ce + instrument_loss_weight * instrument_ce`; a head whose labels are
            absent or all -100 contributes nothing.
        logits (`torch.FloatTensor` of shape `[batch, num_instruments]`):
            The instrument-family logits again, under the name the audio-classification pipeline reads.
        pitch_logits (`torch.FloatTensor` of shape `[batch, num_pitches]`):
            Pitch-class scores before softmax.
        instrument_logits (`torch.FloatTensor` of shape `[batch, num_instruments]`):
            Instrument-family scores before softmax.
        pooled_output (`torch.FloatTensor` of shape `[batch, hidden_size]`):
            The last Transformer layer averaged over valid frames: the clip embedding both heads read.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
            One `[batch, frame, hidden_size]` tensor per Transformer layer output.
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned when `output_attentions=True`):
            One `[batch, heads, frame, frame]` tensor per layer.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    pitch_logits: torch.FloatTensor | None = None
    instrument_logits: torch.FloatTensor | None = None
    pooled_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labels != -100; exactly 0 (not NaN) when every label is -100."""
    total = nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
    return total / (labels != -100).sum().clamp(min=1)


class Wav2Vec2ForMusicClassification(Wav2Vec2PreTrainedModel):
    """wav2vec 2.0 with two linear heads on the mean-pooled last layer: MIDI pitch and instrument family.

    Any `Wav2Vec2ForPreTraining` or `Wav2Vec2Model` checkpoint loads into it; only the heads are new.
    """

    config_class = MusicWav2Vec2Config
    config: MusicWav2Vec2Config

    def __init__(self, config: MusicWav2Vec2Config):
        super().__init__(config)
        if config.add_adapter:
            raise ValueError("Wav2Vec2ForMusicClassification does not support adapters (config.add_adapter=True)")
        self.wav2vec2 = Wav2Vec2Model(config)
        self.dropout = nn.Dropout(config.final_dropout)
        self.pitch_head = nn.Linear(config.hidden_size, config.num_pitches)
        self.instrument_head = nn.Linear(config.hidden_size, config.num_instruments)
        self.post_init()

    def freeze_feature_encoder(self):
        """Stop gradients to the convolutional feature encoder (the usual setting for fine-tuning)."""
        self.wav2vec2.freeze_feature_encoder()

    def freeze_base_model(self):
        """Stop gradients to the whole backbone: only the two heads train (a linear probe)."""
        for param in self.wav2vec2.parameters():
            param.requires_grad = False

    def frame_mask(self, num_frames: int, attention_mask: torch.Tensor) -> torch.BoolTensor:
        """`[batch, frame]` mask of frames computed from non-padded samples of a `[batch, sample]` mask.

        Each conv layer of the feature encoder turns L samples into (L - kernel) // stride + 1 frames.
        """
        lengths = attention_mask.sum(dim=-1)
        for kernel, stride in zip(self.config.conv_kernel, self.config.conv_stride):
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return torch.arange(num_frames, device=attention_mask.device)[None, :] < lengths[:, None]

    def pool(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over frames `[batch, frame, hidden] -> [batch, hidden]`, skipping padded frames if masked."""
        if attention_mask is None:
            return hidden_states.mean(dim=1)
        valid = self.frame_mask(hidden_states.shape[1], attention_mask).unsqueeze(-1).to(hidden_states.dtype)
        return (hidden_states * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1)

    def forward(
        self,
        input_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pitch_labels: torch.Tensor | None = None,
        instrument_labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        pooled_output: torch.Tensor | None = None,
    ) -> MusicClassifierOutput | tuple:
        r"""
        Args:
            input_values (`torch.FloatTensor` of shape `[batch, sample]`):
                16 kHz mono waveforms, normalised as `Wav2Vec2FeatureExtractor` does.
            attention_mask (`torch.LongTensor` of shape `[batch, sample]`, *optional*):
                1 for real samples, 0 for padding. Give it only to layer-norm backbones; group-norm ones
                (wav2vec2-base) must be fed equal-length clips without a mask.
            pitch_labels (`torch.LongTensor` of shape `[batch]`, *optional*):
                MIDI pitch ids in `[0, num_pitches)`, -100 where unknown.
            instrument_labels (`torch.LongTensor` of shape `[batch]`, *optional*):
                Instrument-family ids in `[0, num_instruments)`, -100 where unknown.
            pooled_output (`torch.FloatTensor` of shape `[batch, hidden_size]`, *optional*):
                Clip embeddings computed before (a frozen backbone's `pooled_output`), given instead of
                `input_values`: only the heads run. This is how a linear probe trains on cached features.
        """
        # Flags come from the call, else from the config, as in transformers' audio models. They are passed down
        # resolved: an explicit None would make the backbone record nothing.
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = bool(output_hidden_states if output_hidden_states is not None
                                    else self.config.output_hidden_states)
        output_attentions = bool(output_attentions if output_attentions is not None
                                 else self.config.output_attentions)
        if (input_values is None) == (pooled_output is None):
            raise ValueError("give exactly one of input_values and pooled_output")
        outputs = None
        if pooled_output is not None:
            if pooled_output.dim() != 2 or pooled_output.shape[1] != self.config.hidden_size:
                raise ValueError(f"pooled_output must be [batch, {self.config.hidden_size}], "
                                 f"got shape {tuple(pooled_output.shape)}")
            pooled = pooled_output
        else:
            if input_values.dim() != 2:
                raise ValueError(f"input_values must be [batch, sample], got shape {tuple(input_values.shape)}")
            outputs = self.wav2vec2(
                input_values,
                attention_mask=attention_mask,
                output_hidden_states=output_hidden_states,
                output_attentions=output_attentions,
                return_dict=True,
            )
            pooled = self.pool(outputs.last_hidden_state, attention_mask)
        features = self.dropout(pooled)
        pitch_logits = self.pitch_head(features)
        instrument_logits = self.instrument_head(features)

        loss = None
        if pitch_labels is not None or instrument_labels is not None:
            loss = pitch_logits.new_zeros(())
            if pitch_labels is not None:
                loss = loss + self.config.pitch_loss_weight * masked_cross_entropy(pitch_logits, pitch_labels)
            if instrument_labels is not None:
                loss = loss + self.config.instrument_loss_weight * masked_cross_entropy(
                    instrument_logits, instrument_labels
                )

        output = MusicClassifierOutput(
            loss=loss,
            logits=instrument_logits,
            pitch_logits=pitch_logits,
            instrument_logits=instrument_logits,
            pooled_output=pooled,
            hidden_states=outputs.hidden_states if outputs is not None else None,
            attentions=outputs.attentions if outputs is not None else None,
        )
        return output if return_dict else output.to_tuple()


__all__ = ["MusicClassifierOutput", "Wav2Vec2ForMusicClassification", "masked_cross_entropy"]
