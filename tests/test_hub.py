import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from transformers import (
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForAudioClassification,
    Wav2Vec2FeatureExtractor,
    pipeline,
)

from hf_music_w2v import Wav2Vec2ForMusicClassification, music_feature_extractor, save_pretrained_atomic


@pytest.fixture
def saved(tmp_path, tiny_model, waveforms):
    folder = save_pretrained_atomic(tiny_model, tmp_path / "model")
    torch.save({"waveforms": waveforms, "pitch_logits": tiny_model(waveforms).pitch_logits}, tmp_path / "expected.pt")
    return folder


def test_saved_folder_has_weights_code_and_feature_extractor(saved):
    files = set(os.listdir(saved))
    assert {
        "model.safetensors",
        "config.json",
        "configuration_music_wav2vec2.py",
        "modeling_music_wav2vec2.py",
        "preprocessor_config.json",
    } <= files
    auto_map = json.loads((saved / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_music_wav2vec2.MusicWav2Vec2Config",
        "AutoModel": "modeling_music_wav2vec2.Wav2Vec2ForMusicClassification",
        "AutoModelForAudioClassification": "modeling_music_wav2vec2.Wav2Vec2ForMusicClassification",
    }


@pytest.mark.parametrize("auto_class", [AutoModel, AutoModelForAudioClassification])
def test_auto_classes_reload_identical_model(saved, tiny_model, waveforms, auto_class):
    reloaded = auto_class.from_pretrained(saved).eval()
    assert type(reloaded) is Wav2Vec2ForMusicClassification
    expected = tiny_model(waveforms)
    output = reloaded(waveforms)
    torch.testing.assert_close(output.pitch_logits, expected.pitch_logits, rtol=0, atol=0)
    torch.testing.assert_close(output.instrument_logits, expected.instrument_logits, rtol=0, atol=0)
    assert reloaded.config.pitch_id2label == tiny_model.config.pitch_id2label


def test_auto_feature_extractor_is_16khz_and_normalising(saved, tiny_model):
    extractor = AutoFeatureExtractor.from_pretrained(saved)
    assert isinstance(extractor, Wav2Vec2FeatureExtractor)
    assert extractor.sampling_rate == 16000 and extractor.do_normalize
    assert not extractor.return_attention_mask  # group-norm backbone: no mask
    values = extractor(np.linspace(-3, 5, 1600), sampling_rate=16000, return_tensors="np").input_values[0]
    assert abs(values.mean()) < 1e-4 and abs(values.std() - 1) < 1e-3
    assert music_feature_extractor(tiny_model.config.__class__(feat_extract_norm="layer")).return_attention_mask


REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["hf_music_w2v"] = None  # make `import hf_music_w2v` fail, as where it is not installed
    try:
        import hf_music_w2v
    except ImportError:
        pass
    else:
        raise SystemExit("hf_music_w2v is importable; the test would prove nothing")
    import torch
    from transformers import AutoFeatureExtractor, AutoModel, AutoModelForAudioClassification

    folder, expected_path = sys.argv[1], sys.argv[2]
    expected = torch.load(expected_path)
    for auto_class in (AutoModel, AutoModelForAudioClassification):
        model = auto_class.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            logits = model(expected["waveforms"]).pitch_logits
        print(auto_class.__name__, type(model).__name__, float((logits - expected["pitch_logits"]).abs().max()))
    print("sampling_rate", AutoFeatureExtractor.from_pretrained(folder).sampling_rate)
    """
)


def test_remote_code_loads_without_the_package(saved, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_CODE_SCRIPT, str(saved), str(tmp_path / "expected.pt")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.strip().splitlines())
    for name in ("AutoModel", "AutoModelForAudioClassification"):
        class_name, max_difference = lines[name].split()
        assert class_name == "Wav2Vec2ForMusicClassification"
        assert float(max_difference) == 0.0
    assert lines["sampling_rate"] == "16000"


def test_audio_classification_pipeline_names_instrument_families(saved):
    classifier = pipeline("audio-classification", model=str(saved), device="cpu")
    tone = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32)
    predictions = classifier({"raw": tone, "sampling_rate": 16000}, top_k=11)
    assert len(predictions) == 11
    assert {p["label"] for p in predictions} == {
        "bass", "brass", "flute", "guitar", "keyboard", "mallet", "organ", "reed", "string", "synth_lead", "vocal",
    }
    assert abs(sum(p["score"] for p in predictions) - 1) < 1e-4


class FailingFeatureExtractor(Wav2Vec2FeatureExtractor):
    def save_pretrained(self, *args, **kwargs):
        raise OSError("disk full")


def test_failed_save_leaves_previous_folder_intact(saved, tiny_model):
    before = {name: (saved / name).read_bytes() for name in os.listdir(saved)}
    with pytest.raises(OSError, match="disk full"):
        save_pretrained_atomic(tiny_model, saved, feature_extractor=FailingFeatureExtractor())
    assert {name: (saved / name).read_bytes() for name in os.listdir(saved)} == before
    assert [p.name for p in saved.parent.iterdir() if p.name.startswith(".")] == []


def test_save_replaces_existing_folder(saved, tiny_model):
    (saved / "stale.txt").write_text("from an older save")
    save_pretrained_atomic(tiny_model, saved)
    assert not (saved / "stale.txt").exists() and (saved / "model.safetensors").exists()
