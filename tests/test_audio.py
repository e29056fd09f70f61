"""Block-wise decoding and resampling: the same signal as the whole-file path, in bounded memory."""

import numpy as np
import pytest
import soundfile as sf
import torch

from hf_music_w2v.audio import resample, resample_blocks, resampled_length, window_starts, windows_of_stream
from hf_music_w2v.data.validation import DataError, read_audio, read_audio_blocks, read_float32


@pytest.mark.parametrize(("length", "rate", "block"), [(441_017, 44_100, 50_000), (100_000, 22_050, 7_777),
                                                       (64_000, 8_000, 3_000), (22_050, 44_100, 441), (5, 44_100, 2)])
def test_resampling_in_blocks_equals_resampling_the_whole_signal(length, rate, block):
    signal = np.random.default_rng(length).standard_normal(length).astype(np.float32)
    whole = resample(signal, rate, 16_000)
    pieces = list(resample_blocks((signal[i : i + block] for i in range(0, length, block)), rate, 16_000))
    joined = np.concatenate(pieces)
    assert len(joined) == len(whole) == resampled_length(length, rate, 16_000)
    np.testing.assert_allclose(joined, whole, rtol=0, atol=1e-6)  # conv blocking changes only float rounding
    assert max(len(p) for p in pieces) < len(whole) or len(pieces) == 1


def test_windows_cut_from_a_stream_equal_windows_cut_from_the_array():
    signal = np.arange(1000, dtype=np.float32)
    pieces = (signal[i : i + 37] for i in range(0, 1000, 37))
    starts = window_starts(1000, 120, 50)
    got = list(windows_of_stream(pieces, 1000, starts, 120))
    assert [start for start, _ in got] == starts
    for start, window in got:
        np.testing.assert_array_equal(window, signal[start : start + 120])


def test_blocks_of_a_file_are_the_file_and_a_bad_block_names_it(tmp_path):
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, (10_000, 2)).astype(np.float32)
    sf.write(tmp_path / "a.wav", audio, 16_000, subtype="FLOAT")
    blocks = list(read_audio_blocks(tmp_path / "a.wav", block_frames=3_000))
    assert [len(b) for b in blocks] == [3_000, 3_000, 3_000, 1_000]
    np.testing.assert_array_equal(np.concatenate(blocks), read_audio(tmp_path / "a.wav", downmix=True)[0])
    audio[7_500, 0] = np.nan
    sf.write(tmp_path / "a.wav", audio, 16_000, subtype="FLOAT")
    with pytest.raises(DataError, match="a.wav: contains NaN or infinite samples"):
        list(read_audio_blocks(tmp_path / "a.wav", block_frames=3_000))


@pytest.mark.parametrize("container, subtype", [
    ("WAV", "PCM_U8"), ("WAV", "PCM_16"), ("WAV", "PCM_24"), ("WAV", "PCM_32"), ("WAV", "FLOAT"),
    ("FLAC", "PCM_S8"), ("FLAC", "PCM_16"), ("FLAC", "PCM_24"), ("AIFF", "PCM_16"),
])
def test_integer_pcm_read_as_integers_gives_libsndfiles_floats_bit_for_bit(tmp_path, container, subtype):
    rng = np.random.default_rng(0)
    audio = rng.uniform(-1, 1, size=(5000, 2))
    audio[:2] = [[-1.0, 1.0], [0.0, -0.5]]  # full scale both ways, and zero
    path = tmp_path / f"note.{container.lower()}"
    sf.write(path, audio, 16000, format=container, subtype=subtype)
    expected = sf.read(path, dtype="float32", always_2d=True)[0]
    with sf.SoundFile(path) as file:
        head, rest = read_float32(file, 1234), read_float32(file)
    read = np.concatenate([head, rest])
    assert read.dtype == np.float32 and read.shape == expected.shape
    np.testing.assert_array_equal(read.view(np.int32), expected.view(np.int32))


def test_normalize_audio_matches_the_feature_extractor_in_place_or_not():
    from transformers import Wav2Vec2FeatureExtractor

    from hf_music_w2v.audio import normalize_audio

    audio = torch.randn(3, 16_000, generator=torch.Generator().manual_seed(0)) * 0.3 + 0.1
    extractor = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False)
    expected = extractor(list(audio.numpy()), sampling_rate=16_000, return_tensors="pt").input_values
    copy = audio.clone()
    torch.testing.assert_close(normalize_audio(audio), expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(audio, copy)  # not in place: the input is untouched
    torch.testing.assert_close(normalize_audio(copy, in_place=True), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(copy, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="contiguous"):  # rows written to a reshaped copy would be lost
        normalize_audio(audio.t(), in_place=True)
    weights = audio.clone().requires_grad_()
    torch.testing.assert_close(normalize_audio(weights), expected, rtol=1e-4, atol=1e-5)  # autograd-safe path


def test_collate_notes_cuts_pads_and_normalises_each_note():
    from hf_music_w2v.audio import NOTE_SAMPLES, normalize_audio
    from hf_music_w2v.data.nsynth import collate_notes

    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=NOTE_SAMPLES + 100).astype(np.float32), rng.normal(size=1000).astype(np.float32)]
    batch = collate_notes([{"audio": {"array": a}, "pitch": p, "instrument_family": f}
                           for a, p, f in zip(arrays, (60, 72), (3, 8))])
    assert batch["input_values"].shape == (2, NOTE_SAMPLES)
    padded = np.zeros(NOTE_SAMPLES, dtype=np.float32)
    padded[:1000] = arrays[1]
    expected = normalize_audio(torch.from_numpy(np.stack([arrays[0][:NOTE_SAMPLES], padded])))
    torch.testing.assert_close(batch["input_values"], expected)
    assert batch["pitch_labels"].tolist() == [60, 72] and batch["instrument_labels"].tolist() == [3, 8]
