import numpy as np
import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining

from hf_music_w2v.codebook import (
    analyse_codebook,
    normalized_mutual_information,
    quantizer_code_ids,
    sounding_frames,
)
from hf_music_w2v.training.pretrain import num_feature_frames

from .conftest import TINY

# Five codes per group, so that the combined id's arithmetic is not a power of two by accident.
CONFIG = dict(TINY, num_codevectors_per_group=5)


def test_nmi_is_one_for_the_same_partition_under_other_names():
    a = np.array([0, 0, 1, 1, 2, 2])
    assert normalized_mutual_information(a, np.array([7, 7, 3, 3, 9, 9])) == pytest.approx(1.0)


def test_nmi_is_zero_for_independent_labelings():
    a = np.array([0, 0, 1, 1])
    b = np.array([0, 1, 0, 1])
    assert normalized_mutual_information(a, b) == pytest.approx(0.0, abs=1e-12)


def test_nmi_of_a_refinement_matches_its_closed_form():
    # a splits each class of b in two: I = H(b) = ln 2, H(a) = ln 4, NMI = ln 2 / ((ln 4 + ln 2) / 2) = 2/3.
    a = np.array([0, 1, 2, 3])
    b = np.array([0, 0, 1, 1])
    assert normalized_mutual_information(a, b) == pytest.approx(2 / 3)


def test_nmi_rejects_labelings_of_different_lengths():
    with pytest.raises(ValueError, match="equal length"):
        normalized_mutual_information(np.zeros(3), np.zeros(4))


def test_sounding_frames_drop_silence_after_the_note():
    audio = np.zeros(320 * 10, dtype=np.float32)
    audio[: 320 * 4] = np.sin(np.arange(320 * 4) * 0.1)
    mask = sounding_frames(audio, 10)
    assert mask.tolist() == [True] * 4 + [False] * 6


def test_code_ids_combine_the_groups_of_the_quantizer_hard_choice():
    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(Wav2Vec2Config(**CONFIG)).eval()
    audio = torch.randn(2, 4000)
    ids = quantizer_code_ids(model, audio)
    frames = num_feature_frames(model.config, 4000)
    assert ids.shape == (2, frames)
    assert 0 <= int(ids.min()) and int(ids.max()) < 5 * 5
    # The quantizer's own hard codevectors are the concatenation of the chosen entries of each group.
    extract = model.wav2vec2(audio).extract_features
    codevectors, _ = model.quantizer(extract)
    table = model.quantizer.codevectors[0].view(2, 5, -1)
    expected = torch.cat([table[0][ids // 5], table[1][ids % 5]], dim=-1)
    torch.testing.assert_close(codevectors, expected)


def test_analysis_labels_each_sounding_frame_with_its_note():
    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(Wav2Vec2Config(**CONFIG))
    rng = np.random.default_rng(0)
    notes = []
    for i in range(5):
        audio = np.zeros(64_000, dtype=np.float32)
        audio[: 16_000 * (i + 1) // 2] = rng.standard_normal(16_000 * (i + 1) // 2)
        notes.append({"audio": {"array": audio}, "pitch": 40 + i, "instrument_family": i % 2})
    analysis = analyse_codebook(model, notes, batch_size=2)
    assert np.unique(analysis.note).tolist() == [0, 1, 2, 3, 4]
    for i in range(5):
        frames = analysis.note == i
        assert set(analysis.pitch[frames]) == {40 + i}
        assert set(analysis.family[frames]) == {i % 2}
    # Longer notes sound for more frames.
    lengths = [int((analysis.note == i).sum()) for i in range(5)]
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1]
    scores = analysis.scores()
    assert 0.0 <= scores["pitch_nmi"] <= 1.0 and 0.0 <= scores["family_nmi_shuffled"] <= 1.0
    assert scores["notes"] == 5 and scores["codebook_size"] == 25
