import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, Wav2Vec2Config, Wav2Vec2ForPreTraining

from hf_music_w2v import (
    NSYNTH_INSTRUMENT_FAMILIES,
    MusicWav2Vec2Config,
    midi_pitch_name,
    wav2vec2_base_config,
)

from .conftest import TINY, tiny_music_config

FIXTURE = Path(__file__).parent / "fixtures" / "wav2vec2-base-config.json"
# Keys of the 2021 file that transformers 5 no longer reads (legacy training flags and SpecAugment options
# fairseq never used for BASE), and the bookkeeping key of the version that wrote it.
NOT_IN_CURRENT_CONFIG = {
    "freeze_feat_extract_train",
    "gradient_checkpointing",
    "mask_channel_length",
    "mask_channel_min_space",
    "mask_channel_other",
    "mask_channel_prob",
    "mask_channel_selection",
    "mask_time_min_space",
    "mask_time_other",
    "mask_time_selection",
    "no_mask_channel_overlap",
    "no_mask_time_overlap",
    "transformers_version",
}


def as_plain(value):
    return list(value) if isinstance(value, tuple) else value


def test_base_preset_matches_published_config_field_by_field():
    published = json.loads(FIXTURE.read_text())
    ours = wav2vec2_base_config().to_dict()
    differing = {
        key: (value, as_plain(ours.get(key)))
        for key, value in published.items()
        if key not in NOT_IN_CURRENT_CONFIG and as_plain(ours.get(key)) != value
    }
    # The only intended difference: pretraining masking instead of the published fine-tuning value.
    assert differing == {"mask_time_prob": (0.05, 0.65)}


def test_base_preset_builds_the_base_architecture():
    with torch.device("meta"):
        model = Wav2Vec2ForPreTraining(wav2vec2_base_config())
    conv_layers = model.wav2vec2.feature_extractor.conv_layers
    assert [layer.conv.out_channels for layer in conv_layers] == [512] * 7
    assert [layer.conv.kernel_size[0] for layer in conv_layers] == [10, 3, 3, 3, 3, 2, 2]
    assert all(layer.conv.bias is None for layer in conv_layers)
    assert len(model.wav2vec2.encoder.layers) == 12
    assert model.quantizer.codevectors.shape == (1, 2 * 320, 256 // 2)
    assert model.wav2vec2.encoder.pos_conv_embed.conv.groups == 16
    parameters = sum(p.numel() for p in model.parameters())
    assert 94e6 < parameters < 96e6  # wav2vec2-base is the "95M" model


def test_base_preset_uses_pretraining_masking():
    config = wav2vec2_base_config()
    assert (config.mask_time_prob, config.mask_time_length, config.mask_time_min_masks) == (0.65, 10, 2)
    assert config.num_negatives == 100 and config.diversity_loss_weight == 0.1


def test_base_preset_overrides_apply():
    config = wav2vec2_base_config(num_hidden_layers=2, hidden_size=32, mask_time_prob=0.5)
    assert (config.num_hidden_layers, config.hidden_size, config.mask_time_prob) == (2, 32, 0.5)
    assert config.intermediate_size == 3072


def test_midi_pitch_names():
    assert [midi_pitch_name(p) for p in (0, 21, 60, 61, 69, 108, 127)] == [
        "C-1", "A0", "C4", "C#4", "A4", "C8", "G9",
    ]
    with pytest.raises(ValueError, match="128"):
        midi_pitch_name(128)


def test_music_config_label_spaces():
    config = MusicWav2Vec2Config()
    assert config.num_pitches == 128 and config.pitch_id2label[60] == "C4"
    assert config.num_instruments == 11 == config.num_labels
    assert [config.id2label[i] for i in range(11)] == list(NSYNTH_INSTRUMENT_FAMILIES)
    assert config.label2id["synth_lead"] == 9 and config.pitch_label2id["A4"] == 69
    assert config.mask_time_prob <= 0.05


def test_label_maps_survive_json_round_trip(tmp_path):
    config = tiny_music_config(
        id2label={0: "strings", 1: "winds"},
        label2id={"strings": 0, "winds": 1},
        pitch_id2label={i: f"p{i}" for i in range(5)},
        pitch_loss_weight=0.5,
    )
    config.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["model_type"] == "music_wav2vec2"
    assert set(raw["pitch_id2label"]) == {"0", "1", "2", "3", "4"}  # JSON made the keys strings
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is MusicWav2Vec2Config
    assert loaded.id2label == {0: "strings", 1: "winds"}
    assert loaded.pitch_id2label == {i: f"p{i}" for i in range(5)}
    assert loaded.num_pitches == 5 and loaded.pitch_loss_weight == 0.5


def test_backbone_config_becomes_finetuning_config(tmp_path):
    Wav2Vec2Config(**TINY, mask_time_prob=0.65).save_pretrained(tmp_path)
    config = MusicWav2Vec2Config.from_pretrained(tmp_path)
    assert config.model_type == "music_wav2vec2"
    assert config.hidden_size == TINY["hidden_size"] and config.conv_dim == list(TINY["conv_dim"])
    assert config.mask_time_prob == 0.05
    assert config.num_instruments == 11 and config.num_pitches == 128
