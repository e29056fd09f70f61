import json

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining

from hf_music_w2v import save_pretrained_atomic
from hf_music_w2v.audio import window_starts
from hf_music_w2v.cli import main

from .conftest import TINY


@pytest.fixture
def model_dir(tmp_path, tiny_model):
    return save_pretrained_atomic(tiny_model, tmp_path / "model")


@pytest.fixture
def audio_files(tmp_path):
    """A 10 s stereo file at 44.1 kHz, a 1 s mono FLAC at 8 kHz, an unreadable file and a 4 s note at 16 kHz."""
    rng = np.random.default_rng(0)
    files = {
        "long": tmp_path / "long_stereo.wav",
        "short": tmp_path / "short.flac",
        "bad": tmp_path / "bad.wav",
        "note": tmp_path / "note.wav",
    }
    sf.write(files["long"], rng.uniform(-0.5, 0.5, (441_000, 2)), 44_100)
    sf.write(files["short"], rng.uniform(-0.5, 0.5, 8000), 8000)
    files["bad"].write_bytes(b"RIFF....WAVEfmt but not really")
    sf.write(files["note"], rng.uniform(-0.5, 0.5, 64_000).astype(np.float32), 16_000, subtype="FLOAT")
    return files


def test_window_starts_cover_the_file_without_padding():
    # Inference cuts files into back-to-back windows (hop = window), the last one ending with the file.
    assert window_starts(100, 40, 40) == [0, 40, 60]
    assert window_starts(80, 40, 40) == [0, 40]
    assert window_starts(30, 40, 40) == [0]


def test_predict_handles_any_rate_channels_and_length_and_reports_bad_files(model_dir, audio_files, capsys):
    paths = [str(audio_files[k]) for k in ("long", "bad", "short")]
    code = main(["predict", str(model_dir), *paths, "--json", "--top_k", "3", "--batch_size", "2"])
    out, err = capsys.readouterr()
    assert code == 1
    assert f"{audio_files['bad']}: not a readable audio file" in err
    assert "1 of 3 file(s) could not be processed" in err
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert [row["file"] for row in rows] == [paths[0], paths[2]]
    assert rows[0]["windows"] == 3 and rows[0]["seconds"] == pytest.approx(10.0)  # 4 s windows at 0, 4 and 6 s
    assert rows[1]["windows"] == 1 and rows[1]["seconds"] == pytest.approx(1.0)
    for row in rows:
        assert len(row["pitch"]) == 3 and len(row["instrument"]) == 3
        assert row["pitch"][0]["probability"] >= row["pitch"][1]["probability"]


def test_predict_on_a_note_matches_the_model(model_dir, audio_files, tiny_model, capsys):
    assert main(["predict", str(model_dir), str(audio_files["note"])]) == 0
    line = capsys.readouterr().out.strip()
    audio = torch.from_numpy(sf.read(audio_files["note"], dtype="float32")[0])[None]
    with torch.no_grad():
        output = tiny_model((audio - audio.mean()) / torch.sqrt(audio.var(unbiased=False) + 1e-7))
    pitch = int(output.pitch_logits.argmax())
    family = tiny_model.config.id2label[int(output.instrument_logits.argmax())]
    probability = float(output.pitch_logits.softmax(-1)[0, pitch])
    assert f"pitch {tiny_model.config.pitch_id2label[pitch]} (MIDI {pitch}) {probability:.3f}" in line
    assert f"instrument family {family} " in line


def test_predict_refuses_a_backbone_without_heads(tmp_path, audio_files):
    Wav2Vec2ForPreTraining(Wav2Vec2Config(**TINY)).save_pretrained(tmp_path / "pre")
    with pytest.raises(SystemExit, match="predict needs a fine-tuned music_wav2vec2 classifier"):
        main(["predict", str(tmp_path / "pre"), str(audio_files["note"])])


@pytest.mark.parametrize("layer", [0, 1, -1])
def test_embed_writes_mean_pooled_layer_outputs(model_dir, audio_files, tiny_model, tmp_path, layer, capsys):
    output = tmp_path / "embeddings.npz"
    code = main(["embed", str(model_dir), str(audio_files["note"]), str(audio_files["bad"]),
                 str(audio_files["short"]), "--layer", str(layer), "--output", str(output)])
    assert code == 1 and "1 of 3 file(s) could not be processed" in capsys.readouterr().err
    saved = np.load(output)
    assert saved["embeddings"].shape == (2, 16) and int(saved["layer"]) == layer
    assert list(saved["files"]) == [str(audio_files["note"]), str(audio_files["short"])]
    audio = torch.from_numpy(sf.read(audio_files["note"], dtype="float32")[0])[None]
    with torch.no_grad():
        normalised = (audio - audio.mean()) / torch.sqrt(audio.var(unbiased=False) + 1e-7)
        hidden = tiny_model(normalised, output_hidden_states=True).hidden_states[layer].mean(dim=1)[0]
    np.testing.assert_allclose(saved["embeddings"][0], hidden.numpy(), rtol=1e-4, atol=1e-5)


def test_embed_rejects_a_layer_the_model_does_not_have(model_dir, audio_files, tmp_path):
    with pytest.raises(SystemExit, match=r"--layer must be in \[0, 2\]"):
        main(["embed", str(model_dir), str(audio_files["note"]), "--layer", "5", "--output", str(tmp_path / "e.npz")])
