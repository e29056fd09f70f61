"""`hf-music-w2v convert-fairseq`: fairseq checkpoints read weights-only, without fairseq, in every saved form.

The comparison with fairseq's own forward pass is in test_fairseq_against_fairseq.py (`make test-fairseq`).
"""

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import Wav2Vec2ForPreTraining

from hf_music_w2v.cli import main
from hf_music_w2v.convert_fairseq import (
    FairseqCheckpointError,
    conv_layers,
    convert_fairseq_checkpoint,
    load_fairseq_checkpoint,
)
from hf_music_w2v.modeling_music_wav2vec2 import Wav2Vec2ForMusicClassification

from .fairseq_checkpoints import (
    FORMS,
    LARGE_STYLE,
    Payload,
    fairseq_state_dict,
    tiny_settings,
    write_checkpoint,
)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A BASE-style tiny checkpoint (settings as a plain dict) and its converted folder."""
    root = tmp_path_factory.mktemp("fairseq")
    checkpoint = write_checkpoint(root / "checkpoint_best.pt")
    convert_fairseq_checkpoint(checkpoint, root / "converted")
    return checkpoint, root / "converted"


@pytest.mark.parametrize("form", FORMS)
def test_each_saved_form_gives_the_same_settings_and_weights(tmp_path, form):
    reference = load_fairseq_checkpoint(write_checkpoint(tmp_path / "dict.pt", "dict"))
    loaded = load_fairseq_checkpoint(write_checkpoint(tmp_path / f"{form}.pt", form))
    assert loaded.form == form
    assert loaded.model["conv_feature_layers"] == reference.model["conv_feature_layers"]
    assert loaded.model["final_dim"] == 12 and loaded.task["normalize"] is False
    assert loaded.criterion["loss_weights"] == [0.1, 10.0]
    assert loaded.state_dict.keys() == reference.state_dict.keys()


def test_no_fairseq_omegaconf_or_hydra_is_imported(tmp_path):
    # a fresh interpreter, so that modules imported by other tests (or by test-fairseq's venv) do not count
    paths = [str(write_checkpoint(tmp_path / f"{form}.pt", form)) for form in FORMS]
    script = ("import sys; from hf_music_w2v.convert_fairseq import convert_fairseq_checkpoint\n"
              "for path in sys.argv[1:]: convert_fairseq_checkpoint(path, path + '.out')\n"
              "print(sorted({name.split('.')[0] for name in sys.modules} & {'fairseq', 'omegaconf', 'hydra'}))")
    result = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert all(Path(path + ".out", "model.safetensors").is_file() for path in paths)


def test_weights_land_where_fairseq_keeps_them(converted):
    checkpoint, folder = converted
    model = Wav2Vec2ForPreTraining.from_pretrained(folder)
    weights = fairseq_state_dict(tiny_settings())
    torch.testing.assert_close(model.wav2vec2.encoder.layers[1].feed_forward.intermediate_dense.weight,
                               weights["encoder.layers.1.fc1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(model.quantizer.codevectors, weights["quantizer.vars"], rtol=0, atol=0)
    torch.testing.assert_close(model.project_hid.weight, weights["final_proj.weight"], rtol=0, atol=0)
    torch.testing.assert_close(model.wav2vec2.feature_extractor.conv_layers[0].layer_norm.weight,
                               weights["feature_extractor.conv_layers.0.2.weight"], rtol=0, atol=0)


def test_config_follows_the_checkpoint(converted):
    config = Wav2Vec2ForPreTraining.from_pretrained(converted[1]).config
    assert (config.conv_dim, config.conv_kernel, config.conv_stride) == ([8, 8], [10, 8], [5, 8])
    assert config.feat_extract_norm == "group" and not config.conv_bias and not config.do_stable_layer_norm
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (16, 2, 24)
    assert (config.num_codevector_groups, config.num_codevectors_per_group) == (2, 4)
    assert (config.codevector_dim, config.proj_codevector_dim, config.num_negatives) == (12, 12, 7)
    assert (config.mask_time_prob, config.mask_time_length, config.diversity_loss_weight) == (0.65, 10, 0.1)
    assert (config.num_conv_pos_embeddings, config.num_conv_pos_embedding_groups) == (8, 2)


def test_large_style_and_identity_projection(tmp_path):
    # final_dim 0 and a last convolution as wide as the Transformer: fairseq has no input projection
    settings = tiny_settings(**LARGE_STYLE, conv_feature_layers="[(16, 10, 5), (16, 3, 2)]", final_dim=0)
    conversion = convert_fairseq_checkpoint(write_checkpoint(tmp_path / "large.pt", model=settings), tmp_path / "out")
    model = Wav2Vec2ForPreTraining.from_pretrained(conversion.output_dir)
    assert model.config.feat_extract_norm == "layer" and model.config.conv_bias and model.config.do_stable_layer_norm
    assert model.config.proj_codevector_dim == 16
    torch.testing.assert_close(model.wav2vec2.feature_projection.projection.weight, torch.eye(16))


def test_feature_extractor_follows_the_task(tmp_path):
    from transformers import AutoFeatureExtractor

    for normalize in (False, True):
        checkpoint = write_checkpoint(tmp_path / f"{normalize}.pt", normalize=normalize)
        folder = convert_fairseq_checkpoint(checkpoint, tmp_path / f"out-{normalize}").output_dir
        extractor = AutoFeatureExtractor.from_pretrained(folder)
        assert extractor.do_normalize is normalize and extractor.sampling_rate == 16000
        assert extractor.return_attention_mask is False  # group norm


def test_model_card_names_source_and_checks(converted):
    import hashlib

    checkpoint, folder = converted
    card = (folder / "README.md").read_text()
    assert checkpoint.name in card
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() in card
    assert "all 53 tensors" in card and "reloads" in card


def test_output_loads_as_the_music_classifier(converted):
    from hf_music_w2v.training.finetune import build_classifier

    reference = Wav2Vec2ForPreTraining.from_pretrained(converted[1])
    direct = Wav2Vec2ForMusicClassification.from_pretrained(converted[1]).eval()
    model = build_classifier(str(converted[1])).eval()  # what `hf-music-w2v finetune --model_name_or_path` runs
    for classifier in (direct, model):
        assert isinstance(classifier, Wav2Vec2ForMusicClassification)
        torch.testing.assert_close(classifier.wav2vec2.encoder.layers[0].attention.q_proj.weight,
                                   reference.wav2vec2.encoder.layers[0].attention.q_proj.weight, rtol=0, atol=0)
        with torch.no_grad():
            out = classifier(torch.randn(2, 4000))
        assert out.pitch_logits.shape == (2, 128) and out.instrument_logits.shape == (2, 11)
        assert torch.isfinite(out.pitch_logits).all() and classifier.pitch_head.weight.abs().sum() > 0


def test_output_is_a_probe_model(converted):
    from hf_music_w2v.probing import load_encoder

    encoder, extractor = load_encoder(str(converted[1]))
    reference = Wav2Vec2ForPreTraining.from_pretrained(converted[1]).wav2vec2
    torch.testing.assert_close(encoder.encoder.layers[1].final_layer_norm.bias,
                               reference.encoder.layers[1].final_layer_norm.bias, rtol=0, atol=0)
    assert extractor.do_normalize is False


def test_output_is_a_pretraining_start(converted):
    from hf_music_w2v.training.pretrain import PretrainArguments, build_config

    config = build_config(PretrainArguments(audio_dir="unused", init_from=str(converted[1])))
    model, info = Wav2Vec2ForPreTraining.from_pretrained(converted[1], config=config, output_loading_info=True)
    assert not any(info.values()) and config.conv_dim == [8, 8] and config.proj_codevector_dim == 12


def test_planted_payload_never_runs(tmp_path):
    marker = tmp_path / "marker"
    checkpoint = write_checkpoint(tmp_path / "planted.pt", extra={"extra_state": {"hook": Payload(marker)}})
    with pytest.raises(FairseqCheckpointError, match=r"tests\.fairseq_checkpoints\.plant_marker"):
        convert_fairseq_checkpoint(checkpoint, tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()
    torch.load(checkpoint, weights_only=False)  # the payload is real: a plain unpickling runs it
    assert marker.exists()


def test_another_global_is_refused_naming_it(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "odd.pt", extra={"extra_state": {"when": pickle.PickleBuffer}})
    with pytest.raises(FairseqCheckpointError, match=r"refused: .*global pickle\.PickleBuffer"):
        load_fairseq_checkpoint(checkpoint)


@pytest.mark.parametrize("setting, value", [("quantize_input", True), ("layer_type", "conformer"),
                                            ("pos_conv_depth", 5)])
def test_settings_transformers_cannot_reproduce_are_refused(tmp_path, setting, value):
    checkpoint = write_checkpoint(tmp_path / "odd.pt", model=tiny_settings(**{setting: value}))
    with pytest.raises(FairseqCheckpointError, match=f"{setting}="):
        convert_fairseq_checkpoint(checkpoint, tmp_path / "out")


def test_settings_that_disagree_with_the_weights_are_refused_before_building(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "odd.pt")
    raw = torch.load(checkpoint, weights_only=True)
    raw["cfg"]["model"]["encoder_embed_dim"] = 1 << 20  # a model of terabytes, if it were built
    torch.save(raw, checkpoint)
    with pytest.raises(FairseqCheckpointError, match="has shape"):
        convert_fairseq_checkpoint(checkpoint, tmp_path / "out")


def test_conv_layers_are_parsed_not_evaluated():
    assert conv_layers("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2") == (
        [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2)
    with pytest.raises(FairseqCheckpointError, match="conv_feature_layers"):
        conv_layers("__import__('os').getcwd()")
    with pytest.raises(FairseqCheckpointError, match="conv_feature_layers"):
        conv_layers("[(512, 3, 2)] * 10**12")


def test_cli_converts_and_reports(converted, tmp_path, capsys):
    assert main(["convert-fairseq", str(converted[0]), str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "settings saved as dict" in out and "wrote" in out
    assert (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.parametrize("case, message", [
    ("missing", "no checkpoint file"),
    ("text", "is not a PyTorch checkpoint"),
    ("tensor", "not a fairseq checkpoint"),
    ("ctc", "fine-tuned model"),
    ("payload", "refused: the checkpoint holds the Python global"),
    ("occupied", "is not a model folder"),
    ("run folder", "is a training run's folder"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, case, message):
    path = tmp_path / "in.pt"
    if case == "text":
        path.write_text("not a checkpoint\n")
    elif case == "tensor":
        torch.save(torch.zeros(3), path)
    elif case == "ctc":
        write_checkpoint(path, model=tiny_settings(_name="wav2vec_ctc"))
    elif case == "payload":
        write_checkpoint(path, extra={"extra_state": Payload(tmp_path / "marker")})
    elif case == "occupied":  # e.g. the checkpoint's own folder: it would be replaced as a whole
        write_checkpoint(path)
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "notes.txt").write_text("keep me")
    elif case == "run folder":  # a finished pretraining output has a config.json too: never replaced
        write_checkpoint(path)
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "config.json").write_text("{}")
        (tmp_path / "out" / "run_settings.json").write_text("{}")
    assert main(["convert-fairseq", str(path), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "marker").exists()
    if case == "occupied":
        assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]
    elif case == "run folder":
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "run_settings.json"]
    else:
        assert not (tmp_path / "out").exists()
