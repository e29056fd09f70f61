"""Configurations: the wav2vec 2.0 BASE preset for music pretraining and the two-head classifier's config.

This file is copied next to saved checkpoints and loaded as remote code where hf_music_w2v is not
installed, so it imports nothing but transformers.
"""

from typing import Any

import transformers
from transformers import Wav2Vec2Config
from transformers.utils import logging

#: The transformers releases this code runs on: 5.x (dataclass configs with `__post_init__`).
SUPPORTED_TRANSFORMERS = (5, 6)


def check_transformers_version(version: str = transformers.__version__) -> None:
    """Stop with a clear message under a transformers release this file was not written for."""
    major = int(version.split(".")[0])
    low, high = SUPPORTED_TRANSFORMERS
    if not low <= major < high:
        raise ImportError(
            f"music_wav2vec2 needs transformers>={low},<{high}; this environment has transformers {version}. "
            f"Install a supported release: pip install 'transformers>={low},<{high}'"
        )


check_transformers_version()

logger = logging.get_logger(__name__)

#: NSynth's instrument families, in the order of its `instrument_family` ids (0-10).
NSYNTH_INSTRUMENT_FAMILIES = (
    "bass",
    "brass",
    "flute",
    "guitar",
    "keyboard",
    "mallet",
    "organ",
    "reed",
    "string",
    "synth_lead",
    "vocal",
)
NUM_MIDI_PITCHES = 128
#: SpecAugment-style time masking above this is a pretraining value, not a fine-tuning one.
FINETUNE_MAX_MASK_TIME_PROB = 0.05

_NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")

# Fields of facebook/wav2vec2-base's published config.json that define the model; the values were read off
# that file. Everything not listed keeps Wav2Vec2Config's default, which matches it.
_WAV2VEC2_BASE = dict(
    conv_dim=(512, 512, 512, 512, 512, 512, 512),
    conv_kernel=(10, 3, 3, 3, 3, 2, 2),
    conv_stride=(5, 2, 2, 2, 2, 2, 2),
    conv_bias=False,
    feat_extract_norm="group",
    feat_extract_activation="gelu",
    do_stable_layer_norm=False,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu",
    num_conv_pos_embeddings=128,
    num_conv_pos_embedding_groups=16,
    hidden_dropout=0.1,
    attention_dropout=0.1,
    activation_dropout=0.0,
    feat_proj_dropout=0.1,
    feat_quantizer_dropout=0.0,
    final_dropout=0.0,
    layerdrop=0.05,
    layer_norm_eps=1e-5,
    initializer_range=0.02,
    num_codevector_groups=2,
    num_codevectors_per_group=320,
    codevector_dim=256,
    proj_codevector_dim=256,
    num_negatives=100,
    contrastive_logits_temperature=0.1,
    diversity_loss_weight=0.1,
    # Pretraining masking of the BASE recipe (the published file carries the fine-tuning value 0.05).
    apply_spec_augment=True,
    mask_time_prob=0.65,
    mask_time_length=10,
    mask_time_min_masks=2,
    mask_feature_prob=0.0,
)


def wav2vec2_base_config(**overrides: Any) -> Wav2Vec2Config:
    """The architecture of `facebook/wav2vec2-base` with pretraining masking, built without network access.

    Keyword arguments override any field, e.g. `wav2vec2_base_config(num_hidden_layers=2, hidden_size=32)`
    for a model small enough for tests.
    """
    values = dict(_WAV2VEC2_BASE)
    values.update(overrides)
    config = Wav2Vec2Config(**values)
    config.architectures = ["Wav2Vec2ForPreTraining"]
    return config


def midi_pitch_name(pitch: int) -> str:
    """Scientific pitch name of a MIDI note number: 60 -> 'C4', 69 -> 'A4', 0 -> 'C-1'."""
    if not 0 <= pitch < NUM_MIDI_PITCHES:
        raise ValueError(f"MIDI pitch must be in [0, 127], got {pitch}")
    return f"{_NOTE_NAMES[pitch % 12]}{pitch // 12 - 1}"


class MusicWav2Vec2Config(Wav2Vec2Config):
    r"""
    Configuration of [`Wav2Vec2ForMusicClassification`]: a wav2vec 2.0 backbone (all of [`Wav2Vec2Config`]'s
    fields) plus the two label spaces of NSynth.

    Args:
        id2label (`dict[int, str]`, *optional*):
            Instrument-family names by class id. Defaults to NSynth's 11 families in their official order.
            These are the labels of `logits`, so the standard audio-classification pipeline names families.
        pitch_id2label (`dict[int, str]`, *optional*):
            Pitch names by class id. Defaults to the 128 MIDI notes named in scientific pitch notation
            (60 -> `C4`).
        pitch_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the pitch cross-entropy in the joint loss.
        instrument_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the instrument-family cross-entropy in the joint loss.
        mask_time_prob (`float`, *optional*, defaults to 0.05):
            Time-masking probability while fine-tuning (the pretraining value 0.65 would hide most of a note).

    Loading a plain wav2vec2 config (e.g. a pretraining checkpoint) through [`~MusicWav2Vec2Config.from_pretrained`]
    keeps its architecture and resets masking to at most `FINETUNE_MAX_MASK_TIME_PROB`.
    """

    model_type = "music_wav2vec2"
    # Trainer's predictions are then the two heads' logits, pitch then instrument (`logits` repeats the latter).
    keys_to_ignore_at_inference = ["logits", "pooled_output", "hidden_states", "attentions"]

    pitch_id2label: dict[int, str] | dict[str, str] | None = None
    pitch_loss_weight: float = 1.0
    instrument_loss_weight: float = 1.0
    mask_time_prob: float | int = FINETUNE_MAX_MASK_TIME_PROB

    def __post_init__(self, **kwargs):
        if self.pitch_id2label is None:
            self.pitch_id2label = {pitch: midi_pitch_name(pitch) for pitch in range(NUM_MIDI_PITCHES)}
        else:
            # JSON stores keys as strings.
            self.pitch_id2label = {int(key): value for key, value in self.pitch_id2label.items()}
        if self.id2label is None and kwargs.get("num_labels") is None:
            self.id2label = dict(enumerate(NSYNTH_INSTRUMENT_FAMILIES))
            self.label2id = {name: index for index, name in self.id2label.items()}
        if kwargs.get("auto_map") is None:
            # Saved checkpoints carry the code: AutoModel(ForAudioClassification) works with trust_remote_code.
            kwargs["auto_map"] = {
                "AutoConfig": "configuration_music_wav2vec2.MusicWav2Vec2Config",
                "AutoModel": "modeling_music_wav2vec2.Wav2Vec2ForMusicClassification",
                "AutoModelForAudioClassification": "modeling_music_wav2vec2.Wav2Vec2ForMusicClassification",
            }
        super().__post_init__(**kwargs)
        if self.mask_time_prob > FINETUNE_MAX_MASK_TIME_PROB:
            logger.warning(
                f"mask_time_prob={self.mask_time_prob} is a pretraining value; fine-tuning normally uses "
                f"<= {FINETUNE_MAX_MASK_TIME_PROB}."
            )

    @property
    def num_pitches(self) -> int:
        return len(self.pitch_id2label)

    @property
    def num_instruments(self) -> int:
        return len(self.id2label)

    @property
    def pitch_label2id(self) -> dict[str, int]:
        return {name: index for index, name in self.pitch_id2label.items()}

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs):
        if config_dict.get("model_type", cls.model_type) != cls.model_type:
            # A backbone's config (wav2vec2 pretraining or CTC checkpoint): keep the architecture, drop its
            # task fields and its pretraining masking.
            logger.info(
                f"Building a {cls.model_type} config from a {config_dict.get('model_type')} config: "
                "classification heads use NSynth's label spaces and fine-tuning masking."
            )
            dropped = {"model_type", "architectures", "id2label", "label2id", "auto_map", "num_labels"}
            config_dict = {key: value for key, value in config_dict.items() if key not in dropped}
            config_dict["mask_time_prob"] = min(
                config_dict.get("mask_time_prob", FINETUNE_MAX_MASK_TIME_PROB), FINETUNE_MAX_MASK_TIME_PROB
            )
        return super().from_dict(config_dict, **kwargs)


__all__ = [
    "FINETUNE_MAX_MASK_TIME_PROB",
    "SUPPORTED_TRANSFORMERS",
    "check_transformers_version",
    "MusicWav2Vec2Config",
    "NSYNTH_INSTRUMENT_FAMILIES",
    "NUM_MIDI_PITCHES",
    "midi_pitch_name",
    "wav2vec2_base_config",
]
