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
    assert main(["predict", str(model_dir), str(audio_files["note"]), "--precision", "fp32"]) == 0
    line = capsys.readouterr().out.strip()
    audio = torch.from_numpy(sf.read(audio_files["note"], dtype="float32")[0])[None]
    with torch.no_grad():
        output = tiny_model((audio - audio.mean()) / torch.sqrt(audio.var(unbiased=False) + 1e-7))
    pitch = int(output.pitch_logits.argmax())
    family = tiny_model.config.id2label[int(output.instrument_logits.argmax())]
    probability = float(output.pitch_logits.softmax(-1)[0, pitch])
    assert f"pitch {tiny_model.config.pitch_id2label[pitch]} (MIDI {pitch}) {probability:.3f}" in line
    assert f"instrument family {family} " in line


def test_bf16_inference_stays_close_to_fp32(model_dir, audio_files, tiny_model):
    """bf16 autocast (predict's default where the device has native bf16) against fp32, on the same files."""
    from transformers import AutoFeatureExtractor

    from hf_music_w2v.inference import AudioRunner, class_probabilities, layer_embedding

    extractor = AutoFeatureExtractor.from_pretrained(model_dir)
    paths = [audio_files[k] for k in ("note", "long", "short")]
    results = {}
    for precision in ("fp32", "bf16"):
        probabilities = AudioRunner(tiny_model, extractor, class_probabilities, batch_size=2, precision=precision)
        embeddings = AudioRunner(tiny_model, extractor, layer_embedding(-1), batch_size=2, precision=precision)
        results[precision] = ([r.outputs for r in probabilities.run(paths)], [r.outputs for r in embeddings.run(paths)])
    for fp32, bf16 in zip(results["fp32"][0], results["bf16"][0]):
        for head in ("pitch", "instrument"):
            assert np.abs(fp32[head] - bf16[head]).max() < 0.01 * fp32[head].max()
    for fp32, bf16 in zip(results["fp32"][1], results["bf16"][1]):
        assert np.linalg.norm(fp32["embedding"] - bf16["embedding"]) < 0.02 * np.linalg.norm(fp32["embedding"])
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16"):
        AudioRunner(tiny_model, extractor, class_probabilities, precision="fp16")


def test_predict_refuses_a_backbone_without_heads(tmp_path, audio_files):
    Wav2Vec2ForPreTraining(Wav2Vec2Config(**TINY)).save_pretrained(tmp_path / "pre")
    with pytest.raises(SystemExit, match="predict needs a fine-tuned classifier"):
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


def write(path, audio, rate=16_000, subtype="PCM_16"):
    sf.write(path, audio, rate, subtype=subtype)
    return str(path)


def test_too_short_and_silent_files_are_reported_and_the_others_answered(tmp_path, model_dir, audio_files, capsys):
    from hf_music_w2v.inference import receptive_field

    note = np.random.default_rng(1).uniform(-0.5, 0.5, 16_000)
    quantised = np.round(note * 32767) / 32767
    files = [
        write(tmp_path / "tiny.wav", note[:10]),  # below the tiny model's 20-sample receptive field
        write(tmp_path / "zeros.wav", np.zeros(64_000)),
        write(tmp_path / "cancelled.wav", np.stack([quantised, -quantised], axis=1)),  # nothing left after downmix
        str(audio_files["note"]),
    ]
    assert receptive_field(hf_config(model_dir)) == 20
    code = main(["predict", str(model_dir), *files, "--json", "--batch_size", "4"])
    out, err = capsys.readouterr()
    assert code == 1
    assert f"{files[0]}: too short: 10 samples at 16000 Hz; the model needs at least 20 (1.2 ms)" in err
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert [row["file"] for row in rows] == files[1:]
    assert rows[0]["silent"] and rows[1]["silent"] and "pitch" not in rows[0] and "pitch" not in rows[1]
    assert "-Infinity" not in out and "NaN" not in out  # strict JSON: an all-zero file's level is null
    assert rows[0]["level_dbfs"] is None and rows[1]["level_dbfs"] < -60
    assert len(rows[2]["pitch"]) == 1 and "silent" not in rows[2]
    assert f"2 of 4 file(s) silent, skipped: {files[1]}, {files[2]}" in err
    assert "1 of 4 file(s) could not be processed" in err

    text = main(["predict", str(model_dir), files[1]])
    out, err = capsys.readouterr()
    assert text == 0 and "zeros.wav: silent (RMS -inf dBFS, below -60 dBFS); not classified" in out
    assert "1 of 1 file(s) silent, skipped" in err


def hf_config(folder):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder)


def test_embed_writes_the_good_files_and_lists_the_failed_ones(tmp_path, model_dir, audio_files, capsys):
    short = write(tmp_path / "tiny.wav", np.ones(5) * 0.1)
    out = tmp_path / "emb.npz"
    code = main(["embed", str(model_dir), short, str(audio_files["note"]), str(tmp_path), "--output", str(out)])
    _, err = capsys.readouterr()
    assert code == 1
    assert f"{tmp_path}: is a folder; expected an audio file" in err and "tiny.wav: too short" in err
    saved = np.load(out)
    assert list(saved["files"]) == [str(audio_files["note"])]


@pytest.mark.parametrize(("flags", "message"), [
    (["--window_seconds", "0"], "--window_seconds must be positive, got 0.0"),
    (["--window_seconds", "-1"], "--window_seconds must be positive"),
    (["--top_k", "-1"], "--top_k must be >= 1, got -1"),
    (["--batch_size", "0"], "--batch_size must be >= 1, got 0"),
])
def test_bad_predict_arguments_are_refused_before_any_work(model_dir, audio_files, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(model_dir), str(audio_files["note"]), *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_embed_output_is_checked_before_any_audio_is_read(tmp_path, model_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["embed", str(model_dir), str(tmp_path / "never_read.wav"), "--output", str(tmp_path / "x.npy")])
    assert exit_info.value.code == 2 and "--output must end in .npz" in capsys.readouterr().err


def test_window_shorter_than_the_receptive_field_and_too_many_classes_are_clear_errors(model_dir, audio_files):
    with pytest.raises(SystemExit, match="--window_seconds must be at least 0.001 s"):
        main(["predict", str(model_dir), str(audio_files["note"]), "--window_seconds", "0.0005"])
    with pytest.raises(SystemExit, match="--top_k 200 is more than the model's classes"):
        main(["predict", str(model_dir), str(audio_files["note"]), "--top_k", "200"])


def test_models_that_are_not_wav2vec2_or_not_there_get_a_message(tmp_path, audio_files):
    from transformers import BertConfig

    BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16).save_pretrained(
        tmp_path / "bert")
    with pytest.raises(SystemExit, match="is a bert model; expected a wav2vec2 checkpoint or a music_wav2vec2"):
        main(["predict", str(tmp_path / "bert"), str(audio_files["note"])])
    with pytest.raises(SystemExit, match="no model folder ./nowhere/model, and it is not a Hub id"):
        main(["embed", "./nowhere/model", str(audio_files["note"]), "--output", str(tmp_path / "e.npz")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="has no config.json"):
        main(["predict", str(tmp_path / "empty"), str(audio_files["note"])])


@pytest.mark.parametrize("head", ["pitch", "instrument"])
def test_predict_answers_the_one_head_of_an_exported_widget_folder(tmp_path, tiny_model, audio_files, capsys, head):
    from hf_music_w2v.export import export_widget_models

    folder = export_widget_models(tiny_model, tmp_path / "widget")[head]
    assert main(["predict", str(folder), str(audio_files["note"]), "--json", "--top_k", "2"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert set(row) == {"file", "seconds", "windows", head}
    two_head = save_pretrained_atomic(tiny_model, tmp_path / "model")
    assert main(["predict", str(two_head), str(audio_files["note"]), "--json", "--top_k", "2"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in both[head]] == [c["name"] for c in row[head]]  # identical logits, same ranking
