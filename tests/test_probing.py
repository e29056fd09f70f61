"""Layer-wise probes: `hf-music-w2v probe` and `hf_music_w2v.probing`, on encoders of every family it promises."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_music_w2v.probing import ProbeError, ProbeSettings, ProbeSplits, probe_model, train_probes

from .conftest import TINY, program_env, tiny_pretraining_config

FIXTURES = Path(__file__).parent / "fixtures"
# Small enough for CPU tests: one seed, few epochs.
QUICK = dict(seeds=(0,), max_epochs=4, patience=2)
# The Transformer sizes of TINY with a conv stride of 80, for HuBERT, WavLM and data2vec-audio alike.
TINY_AUDIO = {key: TINY[key] for key in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                         "intermediate_size", "num_conv_pos_embeddings",
                                         "num_conv_pos_embedding_groups", "layerdrop")}
TINY_AUDIO.update(conv_dim=(8, 8), conv_kernel=(10, 16), conv_stride=(5, 16))


def save_toy_remote_encoder(folder: Path) -> Path:
    """A folder whose config's auto_map points at its own toy_encoder.py, with a 24 kHz feature extractor."""
    from transformers import Wav2Vec2FeatureExtractor

    spec = importlib.util.spec_from_file_location("toy_encoder", FIXTURES / "toy_remote_encoder" / "toy_encoder.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["toy_encoder"] = module  # save_pretrained copies the code of the module it finds here
    try:
        spec.loader.exec_module(module)
        module.ToyEncoderConfig.register_for_auto_class()
        module.ToyEncoderModel.register_for_auto_class("AutoModel")
        module.ToyEncoderModel(module.ToyEncoderConfig()).save_pretrained(folder)
    finally:
        del sys.modules["toy_encoder"]
    Wav2Vec2FeatureExtractor(sampling_rate=24_000, do_normalize=True).save_pretrained(folder)
    assert (folder / "toy_encoder.py").is_file() and "auto_map" in json.loads((folder / "config.json").read_text())
    return folder


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> dict[str, Path]:
    """Tiny random encoders saved as folders: this package's two outputs, HuBERT, WavLM, data2vec-audio, remote code."""
    from transformers import (
        Data2VecAudioConfig,
        Data2VecAudioModel,
        HubertConfig,
        HubertModel,
        Wav2Vec2ForPreTraining,
        WavLMConfig,
        WavLMModel,
    )

    from hf_music_w2v.training.finetune import build_classifier

    root = tmp_path_factory.mktemp("encoders")
    torch.manual_seed(0)
    folders = {"pretraining": root / "pretraining", "classifier": root / "classifier"}
    Wav2Vec2ForPreTraining(tiny_pretraining_config()).save_pretrained(folders["pretraining"])
    build_classifier(str(folders["pretraining"])).save_pretrained(folders["classifier"])
    for name, config_class, model_class in (("hubert", HubertConfig, HubertModel), ("wavlm", WavLMConfig, WavLMModel),
                                            ("data2vec-audio", Data2VecAudioConfig, Data2VecAudioModel)):
        folders[name] = root / name
        model_class(config_class(**TINY_AUDIO)).save_pretrained(folders[name])
    folders["remote"] = save_toy_remote_encoder(root / "remote")
    return folders


def run_probe_command(*args: str, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hf_music_w2v.cli", "probe", *args], capture_output=True, text=True,
                          timeout=600, env=program_env(HF_MUSIC_W2V_CACHE=str(cache)))


def test_the_probe_command_writes_results_plot_and_table_and_reuses_its_feature_cache(encoders, mini_root, tmp_path):
    cache = tmp_path / "cache"
    args = [str(encoders["pretraining"]), "--nsynth_dir", str(mini_root / "nsynth"), "--seeds", "0", "1",
            "--max_epochs", "4", "--patience", "2"]
    first = run_probe_command(*args, "--output_dir", str(tmp_path / "first"), cache=cache)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "train features" in first.stderr  # the progress bar of the one pass over audio

    report = json.loads((tmp_path / "first" / "probe_results.json").read_text())
    assert report["model"] == str(encoders["pretraining"]) and report["protocol"]["layers"] == [0, 1, 2]
    assert report["protocol"]["pitch_classes"] == 128 and report["protocol"]["seeds"] == [0, 1]
    entries = {(e["task"], e["layer"], e["probe"]) for e in report["results"]}
    expected = {(task, layer, probe) for task in ("pitch", "instrument") for layer in (0, 1, 2)
                for probe in ("linear", "mlp")}
    assert entries == expected | {("pitch", "weighted", "linear"), ("instrument", "weighted", "linear")}
    for entry in report["results"]:
        assert 0 <= entry["test_accuracy"] <= 1 and 0 <= entry["valid_accuracy"] <= 1
        assert len(entry["test_accuracy_per_seed"]) == 2
    weighted = next(e for e in report["results"] if e["layer"] == "weighted")
    assert len(weighted["layer_weights"]) == 3 and abs(sum(weighted["layer_weights"]) - 1) < 1e-5
    assert (tmp_path / "first" / "probe_layers.png").stat().st_size > 10_000
    table = (tmp_path / "first" / "probe_results.md").read_text()
    assert "| 2 |" in table and "Weighted sum of layers" in table

    cached = sorted((cache / "probe_features").glob("*.npy"))
    assert len(cached) == 3  # one per split
    stamps = [path.stat().st_mtime_ns for path in cached]
    second = run_probe_command(*args, "--output_dir", str(tmp_path / "second"), cache=cache)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "train features" not in second.stderr
    assert [path.stat().st_mtime_ns for path in cached] == stamps
    assert json.loads((tmp_path / "second" / "probe_results.json").read_text())["results"] == report["results"]


def test_other_weights_or_a_torn_cache_entry_are_computed_again(encoders, mini_root, tmp_path):
    settings = ProbeSettings(tasks=("instrument",), probes=("linear",), weighted_sum=False, **QUICK)
    features = tmp_path / "features"
    probe_model(str(encoders["pretraining"]), str(mini_root / "nsynth"), tmp_path / "a", settings,
                feature_cache_dir=features)
    first = sorted(features.glob("*.npy"))
    # The classifier's backbone holds the same weights: the same features, so the same cache files.
    probe_model(str(encoders["classifier"]), str(mini_root / "nsynth"), tmp_path / "b", settings,
                feature_cache_dir=features)
    assert sorted(features.glob("*.npy")) == first
    # HuBERT's weights differ: three new files.
    probe_model(str(encoders["hubert"]), str(mini_root / "nsynth"), tmp_path / "c", settings,
                feature_cache_dir=features)
    assert len(list(features.glob("*.npy"))) == 6
    # A run killed between writing the features and their fingerprint leaves no fingerprint: computed again.
    first[0].with_suffix(".json").unlink()
    stamp = first[0].stat().st_mtime_ns
    probe_model(str(encoders["pretraining"]), str(mini_root / "nsynth"), tmp_path / "a", settings,
                feature_cache_dir=features)
    assert first[0].stat().st_mtime_ns != stamp and first[0].with_suffix(".json").is_file()


@pytest.mark.parametrize("family", ["classifier", "hubert", "wavlm", "data2vec-audio"])
def test_every_encoder_family_is_probed_layer_by_layer(encoders, mini_root, tmp_path, family):
    report = probe_model(str(encoders[family]), str(mini_root / "nsynth"), tmp_path,
                         ProbeSettings(probes=("linear",), **QUICK), feature_cache_dir=tmp_path / "features")
    layers = {e["layer"] for e in report["results"]}
    assert layers == {0, 1, 2, "weighted"}
    assert {e["task"] for e in report["results"]} == {"pitch", "instrument"}


def test_remote_code_needs_trust_and_its_audio_comes_at_the_encoders_own_rate(encoders, mini_root, tmp_path):
    settings = ProbeSettings(tasks=("instrument",), probes=("linear",), **QUICK)
    with pytest.raises(ProbeError, match="--trust_remote_code"):
        probe_model(str(encoders["remote"]), str(mini_root / "nsynth"), tmp_path, settings,
                    feature_cache_dir=tmp_path / "features")
    report = probe_model(str(encoders["remote"]), str(mini_root / "nsynth"), tmp_path, settings,
                         trust_remote_code=True, feature_cache_dir=tmp_path / "features")
    assert report["protocol"]["sampling_rate"] == 24_000
    for path in (tmp_path / "features").glob("*.npy"):
        # Channel 0 is the input's length in seconds at 24 kHz: 4 s notes resampled from 16 kHz.
        assert np.allclose(np.load(path)[:, :, 0], 4.0)


def test_the_hear_pitch_protocol_keeps_the_88_keys_and_reports_chroma(encoders, mini_root, tmp_path):
    from hf_music_w2v.data import load_nsynth

    report = probe_model(str(encoders["pretraining"]), str(mini_root / "nsynth"), tmp_path,
                         ProbeSettings(tasks=("pitch",), probes=("linear",), pitch_classes=88, **QUICK),
                         feature_cache_dir=tmp_path / "features")
    test = load_nsynth(mini_root / "nsynth", "test")
    assert report["protocol"]["notes"]["test"] == sum(21 <= p <= 108 for p in test["pitch"])
    for entry in report["results"]:
        assert entry["test_chroma_accuracy"] >= entry["test_accuracy"]


def separable_splits(seed: int) -> ProbeSplits:
    """Three layers of 16 features; only layer 1 carries the class (4 classes), the others are noise."""
    generator = torch.Generator().manual_seed(seed)
    features, labels = {}, {}
    centres = torch.randn(4, 16, generator=generator) * 3
    for split, count in (("train", 400), ("valid", 100), ("test", 100)):
        labels[split] = torch.randint(0, 4, (count,), generator=generator)
        noise = torch.randn(count, 3, 16, generator=generator)
        noise[:, 1] += centres[labels[split]]
        features[split] = noise
    return ProbeSplits(features, labels, classes=4)


@pytest.mark.parametrize("kind", ["linear", "mlp", "weighted"])
def test_probes_find_the_layer_that_holds_the_label(kind):
    data = separable_splits(0)
    results = train_probes(kind, data, seed=0, settings=ProbeSettings(max_epochs=30, patience=5), chroma=False)
    if kind == "weighted":
        assert results[0]["test_accuracy"] > 0.9
        assert int(np.argmax(results[0]["layer_weights"])) == 1
    else:
        accuracy = [entry["test_accuracy"] for entry in results]
        assert accuracy[1] > 0.9 and accuracy[0] < 0.5 and accuracy[2] < 0.5
        assert all(entry["valid_accuracy"] >= 0 and entry["epoch"] >= 1 for entry in results)


def test_bad_models_and_settings_are_refused_with_what_was_expected(encoders, mini_root, tmp_path):
    from transformers import BertConfig, BertModel

    nsynth = str(mini_root / "nsynth")
    with pytest.raises(ProbeError, match="no model folder"):
        probe_model(str(tmp_path / "missing"), nsynth, tmp_path, ProbeSettings(**QUICK))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProbeError, match="has no config.json"):
        probe_model(str(tmp_path / "empty"), nsynth, tmp_path, ProbeSettings(**QUICK))
    BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                         vocab_size=50)).save_pretrained(tmp_path / "bert")
    with pytest.raises(ProbeError, match="not an audio encoder"):
        probe_model(str(tmp_path / "bert"), nsynth, tmp_path, ProbeSettings(**QUICK))
    with pytest.raises(ProbeError, match="has layers 0-2, got 7"):
        probe_model(str(encoders["pretraining"]), nsynth, tmp_path, ProbeSettings(layers=(7,), **QUICK))
    with pytest.raises(ProbeError, match="--pitch_classes must be 128"):
        probe_model(str(encoders["pretraining"]), nsynth, tmp_path, ProbeSettings(pitch_classes=100, **QUICK))

    refused = run_probe_command(str(encoders["pretraining"]), "--nsynth_dir", nsynth, "--output_dir",
                                str(tmp_path / "out"), "--seeds", "0", "--max_epochs", "0", cache=tmp_path / "cache")
    assert refused.returncode != 0 and "--max_epochs must be at least 1, got 0" in refused.stderr
