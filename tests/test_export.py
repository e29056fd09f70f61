import numpy as np
import pytest
import torch
from transformers import Wav2Vec2ForSequenceClassification, pipeline

from hf_music_w2v import Wav2Vec2ForMusicClassification
from hf_music_w2v.export import export_widget_models, to_sequence_classification

from .conftest import tiny_music_config


@pytest.mark.parametrize("norm", ["group", "layer"])
@pytest.mark.parametrize(("head", "logits_name"), [("pitch", "pitch_logits"), ("instrument", "instrument_logits")])
def test_exported_head_gives_the_same_logits(norm, head, logits_name, waveforms):
    torch.manual_seed(0)
    model = Wav2Vec2ForMusicClassification(tiny_music_config(feat_extract_norm=norm)).eval()
    exported = to_sequence_classification(model, head)
    assert type(exported) is Wav2Vec2ForSequenceClassification
    kwargs = {}
    if norm == "layer":  # layer-norm backbones take padded batches with a mask; pooling must skip the padding
        kwargs["attention_mask"] = torch.ones_like(waveforms, dtype=torch.long)
        kwargs["attention_mask"][1, 2500:] = 0
    with torch.no_grad():
        expected = getattr(model(waveforms, **kwargs), logits_name)
        got = exported(waveforms, **kwargs).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_exported_labels_are_the_heads_classes(tiny_model):
    pitch = to_sequence_classification(tiny_model, "pitch")
    family = to_sequence_classification(tiny_model, "instrument")
    assert pitch.config.id2label[60] == "C4" and pitch.config.num_labels == 128
    assert family.config.id2label[0] == "bass" and family.config.num_labels == 11
    assert pitch.config.model_type == "wav2vec2" and not getattr(pitch.config, "auto_map", None)


def test_unknown_head_is_rejected(tiny_model):
    with pytest.raises(ValueError, match="head must be one of pitch, instrument"):
        to_sequence_classification(tiny_model, "tempo")


def test_exported_folders_run_in_the_standard_pipeline(tmp_path, tiny_model):
    folders = export_widget_models(tiny_model, tmp_path)
    assert sorted(folders) == ["instrument", "pitch"]
    tone = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32)
    for head, folder in folders.items():
        assert not list(folder.glob("*.py"))  # no custom code: the hosted widget can run it
        top = pipeline("audio-classification", model=str(folder), device="cpu")({"raw": tone, "sampling_rate": 16000},
                                                                                 top_k=3)
        assert len(top) == 3 and all(0 <= p["score"] <= 1 for p in top)
        with torch.no_grad():
            output = tiny_model(torch.from_numpy((tone - tone.mean()) / np.sqrt(tone.var() + 1e-7))[None])
        logits = output.pitch_logits if head == "pitch" else output.instrument_logits
        best = int(logits.argmax())
        assert top[0]["label"] == (tiny_model.config.pitch_id2label if head == "pitch" else tiny_model.config.id2label)[best]


@pytest.mark.slow
def test_onnx_export_names_both_heads_and_agrees_with_pytorch_on_real_notes(tmp_path, tiny_model, mini_root, capsys):
    import onnx

    from hf_music_w2v import save_pretrained_atomic
    from hf_music_w2v.audio import normalize_audio
    from hf_music_w2v.cli import main
    from hf_music_w2v.data import load_nsynth
    from hf_music_w2v.onnx_export import onnx_difference

    folder = save_pretrained_atomic(tiny_model, tmp_path / "model")
    assert main(["export-onnx", str(folder), str(tmp_path / "model.onnx")]) == 0
    assert "onnxruntime agrees with PyTorch within" in capsys.readouterr().out
    graph = onnx.load(tmp_path / "model.onnx").graph
    assert [o.name for o in graph.output] == ["pitch_logits", "instrument_logits"]
    notes = load_nsynth(mini_root / "nsynth", "test").select(range(5))
    audio = normalize_audio(torch.from_numpy(np.stack([n["audio"]["array"] for n in notes]))).numpy()
    assert onnx_difference(tiny_model, tmp_path / "model.onnx", audio) < 1e-4
    assert onnx_difference(tiny_model, tmp_path / "model.onnx", audio[:2, :20_000]) < 1e-4  # other batch and length


def test_onnx_export_refuses_what_it_cannot_export(tmp_path):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from hf_music_w2v.cli import main

    from .conftest import TINY

    Wav2Vec2Model(Wav2Vec2Config(**TINY)).save_pretrained(tmp_path / "backbone")
    with pytest.raises(SystemExit, match="export-onnx exports the two-head music_wav2vec2 classifier"):
        main(["export-onnx", str(tmp_path / "backbone"), str(tmp_path / "m.onnx")])
    with pytest.raises(SystemExit, match="OUTPUT must end in .onnx"):
        main(["export-onnx", str(tmp_path / "backbone"), str(tmp_path / "m.bin")])
