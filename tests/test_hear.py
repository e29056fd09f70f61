"""The HEAR 2021 API (`hf_music_w2v.hear`), checked as hear-validator checks a submission."""

import numpy as np
import pytest
import torch

import hf_music_w2v.hear as hear

from .conftest import TINY

# wav2vec2-base's convolutional geometry (hop 320 samples, receptive field 400) with TINY's widths.
BASE_GEOMETRY = dict(conv_dim=(8,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2))


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining

    folder = tmp_path_factory.mktemp("hear") / "pretraining"
    torch.manual_seed(0)
    Wav2Vec2ForPreTraining(Wav2Vec2Config(**{**TINY, **BASE_GEOMETRY})).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model(model_folder):
    return hear.load_model(str(model_folder))


def white_noise(count: int, seconds: float, rate: int) -> torch.Tensor:
    return torch.rand(count, int(seconds * rate), generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_the_model_states_what_hear_asks_for(model):
    assert model.sample_rate == 16_000 and isinstance(model.sample_rate, int)
    assert model.scene_embedding_size == model.timestamp_embedding_size == TINY["hidden_size"]
    assert isinstance(model, torch.nn.Module) and model.hop == 320 and model.receptive_field == 400


@pytest.mark.parametrize("seconds", [1.07, 1.98, 2.74, 4.0])
def test_timestamp_embeddings_are_evenly_spaced_and_cover_the_clip(model, seconds):
    embeddings, timestamps = hear.get_timestamp_embeddings(white_noise(2, seconds, model.sample_rate), model)
    assert embeddings.dtype == torch.float32 and embeddings.ndim == 3
    assert embeddings.shape[0] == 2 and embeddings.shape[2] == model.timestamp_embedding_size
    assert tuple(timestamps.shape) == tuple(embeddings.shape[:2])
    steps = np.diff(timestamps.numpy(), axis=1)
    average = steps.mean()
    assert np.abs(steps - average).max() <= 1.0  # even spacing, within 1 ms
    assert average <= 50.0  # HEAR's suggested hop for transcription's 50 ms tolerance
    length_ms = 1000 * seconds
    assert timestamps.min() <= average  # starts at the beginning
    assert length_ms - average <= timestamps.max() <= length_ms  # ends at the end, never past it


@pytest.mark.parametrize("seconds", [1.07, 1.98, 2.74, 4.0])
def test_scene_embeddings_are_one_float32_vector_per_sound(model, seconds):
    embeddings = hear.get_scene_embeddings(white_noise(4, seconds, model.sample_rate), model)
    assert embeddings.dtype == torch.float32 and tuple(embeddings.shape) == (4, model.scene_embedding_size)
    assert torch.isfinite(embeddings).all()


def test_a_frame_embedding_describes_the_audio_around_its_timestamp(model):
    """A click at 1.5 s changes the frames whose timestamps are near 1.5 s first (the Transformer spreads it later)."""
    clip = white_noise(1, 3.0, 16_000)
    clicked = clip.clone()
    clicked[0, 24_000:24_100] = 1.0  # short enough to leave the clip's normalisation almost unchanged
    model.layer = 0  # the Transformer's input: the convolutional features, local by construction
    try:
        quiet, times = hear.get_timestamp_embeddings(clip, model)
        loud, _ = hear.get_timestamp_embeddings(clicked, model)
    finally:
        model.layer = -1
    change = (loud - quiet).norm(dim=-1)[0]
    assert abs(times[0, int(change.argmax())].item() - 1503.0) <= 20.0


def test_layers_are_chosen_at_load_time_and_checked(model_folder, monkeypatch):
    audio = white_noise(1, 1.0, 16_000)
    first = hear.get_scene_embeddings(audio, hear.load_model(str(model_folder), layer=1))
    monkeypatch.setenv("HF_MUSIC_W2V_HEAR_LAYER", "1")
    assert torch.equal(hear.get_scene_embeddings(audio, hear.load_model(str(model_folder))), first)
    assert not torch.equal(hear.get_scene_embeddings(audio, hear.load_model(str(model_folder), layer=2)), first)
    with pytest.raises(ValueError, match=r"layer must be in \[-3, 2\]"):
        hear.load_model(str(model_folder), layer=3)
    with pytest.raises(ValueError, match="needs a model folder"):
        hear.load_model()
