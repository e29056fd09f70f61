"""The converter against fairseq's own forward pass, without fairseq: tiny checkpoints that fairseq wrote, and what
fairseq computed from them, committed under tests/fixtures/fairseq/ (made by make_fixtures.py there; `make
fairseq-check` makes them again with fairseq and re-checks them).
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import Wav2Vec2ForPreTraining, Wav2Vec2Model

from hf_music_w2v.cli import main
from hf_music_w2v.convert_fairseq import (
    convert_fairseq_checkpoint,
    load_fairseq_checkpoint,
    read_checkpoint_file,
)
from hf_music_w2v.hub import quiet_loading

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "fairseq"
TOLERANCE = 1e-5


def reference(name: str) -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / f"{name}.outputs.safetensors")


def differences(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> dict[str, float]:
    found = {}
    for name, value in ours.items():
        assert value.shape == theirs[name].shape, name
        found[name] = (value - theirs[name]).abs().max().item()
    return found


@pytest.mark.parametrize("style", ["base", "large"])
@torch.no_grad()
def test_pretraining_checkpoint_matches_fairseq(tmp_path, style):
    conversion = convert_fairseq_checkpoint(FIXTURES / f"{style}.pt", tmp_path / "converted")
    theirs = reference(style)
    with quiet_loading():
        model = Wav2Vec2ForPreTraining.from_pretrained(conversion.output_dir).eval()
    audio = theirs["input_values"]
    out = model(audio)
    ours = {"last_hidden_state": model.wav2vec2(audio).last_hidden_state, "projected_states": out.projected_states,
            "projected_quantized_states": out.projected_quantized_states}
    targets = theirs["projected_quantized_states"]
    assert torch.unique(targets.reshape(-1, targets.shape[-1]), dim=0).shape[0] > 1  # a quantizer comparison at all
    found = differences(ours, theirs)
    print(f"\n{style}: max |converted - fairseq| " + ", ".join(f"{k} {v:.1e}" for k, v in found.items()))
    assert max(found.values()) <= TOLERANCE, found


def test_pretraining_styles_are_what_they_claim():
    base, large = (load_fairseq_checkpoint(FIXTURES / f"{style}.pt") for style in ("base", "large"))
    assert (base.model["extractor_mode"], base.model["layer_norm_first"], base.task["normalize"]) == (
        "default", False, False)
    assert (large.model["extractor_mode"], large.model["layer_norm_first"], large.model["conv_bias"],
            large.task["normalize"]) == ("layer_norm", True, True, True)
    assert base.form == large.form == "dict"


HEADS = {"ctc": ["w2v_encoder.proj.bias", "w2v_encoder.proj.weight"],
         "classification": ["pooling_layer.linear.bias", "pooling_layer.linear.weight",
                            "pooling_layer.projection.bias", "pooling_layer.projection.weight"]}


@pytest.mark.parametrize("kind", list(HEADS))
@torch.no_grad()
def test_fine_tuned_checkpoint_converts_its_encoder(tmp_path, kind):
    conversion = convert_fairseq_checkpoint(FIXTURES / f"{kind}.pt", tmp_path / "converted")
    assert conversion.model_class == "Wav2Vec2Model"
    assert conversion.head == HEADS[kind]
    theirs = reference(kind)
    with quiet_loading():
        model = Wav2Vec2Model.from_pretrained(conversion.output_dir).eval()
    found = differences({"last_hidden_state": model(theirs["input_values"]).last_hidden_state}, theirs)
    print(f"\n{kind} encoder: max |converted - fairseq| last_hidden_state {found['last_hidden_state']:.1e}")
    assert found["last_hidden_state"] <= TOLERANCE
    # the fine-tune moved the encoder: its own weights were taken, not those of the pretraining checkpoint
    with quiet_loading():
        pretrained = Wav2Vec2ForPreTraining.from_pretrained(
            convert_fairseq_checkpoint(FIXTURES / "base.pt", tmp_path / "base").output_dir).eval()
    assert (pretrained.wav2vec2(theirs["input_values"]).last_hidden_state
            - theirs["last_hidden_state"]).abs().max() > 100 * TOLERANCE
    assert "head was left out" in (conversion.output_dir / "README.md").read_text()


@torch.no_grad()
def test_fine_tuned_head_is_left_out_as_the_logits_show(tmp_path):
    """fairseq's CTC logits are its encoder's output through the left-out head: the converted encoder plus that
    head gives them back, so the encoder is exactly the one the head was trained on."""
    conversion = convert_fairseq_checkpoint(FIXTURES / "ctc.pt", tmp_path / "converted")
    theirs = reference("ctc")
    state = read_checkpoint_file(FIXTURES / "ctc.pt")["model"]
    with quiet_loading():
        model = Wav2Vec2Model.from_pretrained(conversion.output_dir).eval()
    logits = torch.nn.functional.linear(model(theirs["input_values"]).last_hidden_state,
                                        state["w2v_encoder.proj.weight"], state["w2v_encoder.proj.bias"])
    assert (logits - theirs["logits"]).abs().max().item() <= TOLERANCE


def test_cli_says_the_head_was_left_out(tmp_path, capsys):
    assert main(["convert-fairseq", str(FIXTURES / "ctc.pt"), str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "left out: the fine-tuned model's head (2 tensors: w2v_encoder.proj.bias, w2v_encoder.proj.weight)" in out
    assert "(Wav2Vec2Model, feature extractor, README.md)" in out


def test_fine_tune_naming_only_a_missing_w2v_path_is_one_error_line(tmp_path, capsys):
    raw = read_checkpoint_file(FIXTURES / "ctc.pt")
    raw["cfg"]["model"]["w2v_args"] = None
    raw["cfg"]["model"]["w2v_path"] = str(tmp_path / "gone.pt")
    torch.save({k: raw[k] for k in ("args", "cfg", "model")}, tmp_path / "ctc.pt")
    assert main(["convert-fairseq", str(tmp_path / "ctc.pt"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "w2v_path" in err and len(err.strip().splitlines()) == 1


def test_fine_tune_reads_encoder_settings_from_w2v_path(tmp_path):
    raw = read_checkpoint_file(FIXTURES / "ctc.pt")
    raw["cfg"]["model"]["w2v_args"] = None
    raw["cfg"]["model"]["w2v_path"] = str(FIXTURES / "base.pt")
    torch.save({k: raw[k] for k in ("args", "cfg", "model")}, tmp_path / "ctc.pt")
    loaded = load_fairseq_checkpoint(tmp_path / "ctc.pt")
    assert loaded.fine_tuned == "wav2vec_ctc" and loaded.model["encoder_embed_dim"] == 24


def test_fine_tuned_encoder_is_a_finetuning_start(tmp_path):
    from hf_music_w2v.modeling_music_wav2vec2 import Wav2Vec2ForMusicClassification
    from hf_music_w2v.training.finetune import build_classifier

    folder = convert_fairseq_checkpoint(FIXTURES / "ctc.pt", tmp_path / "converted").output_dir
    with quiet_loading():
        encoder = Wav2Vec2Model.from_pretrained(folder)
    model = build_classifier(str(folder)).eval()  # what `hf-music-w2v finetune --model_name_or_path` runs
    assert isinstance(model, Wav2Vec2ForMusicClassification)
    torch.testing.assert_close(model.wav2vec2.encoder.layers[0].attention.q_proj.weight,
                               encoder.encoder.layers[0].attention.q_proj.weight, rtol=0, atol=0)


def test_w2v_path_naming_a_fine_tune_is_one_error_line(tmp_path, capsys):
    raw = read_checkpoint_file(FIXTURES / "ctc.pt")
    raw["cfg"]["model"]["w2v_args"] = None
    raw["cfg"]["model"]["w2v_path"] = str(tmp_path / "ctc.pt")  # itself
    torch.save({k: raw[k] for k in ("args", "cfg", "model")}, tmp_path / "ctc.pt")
    assert main(["convert-fairseq", str(tmp_path / "ctc.pt"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is itself a fine-tuned" in err and len(err.strip().splitlines()) == 1


@torch.no_grad()
def test_namespace_fine_tune_converts_alike(tmp_path):
    """fairseq before 0.10: the fine-tune's settings and its encoder's (`w2v_args`) as flat argparse.Namespaces."""
    import argparse

    raw = read_checkpoint_file(FIXTURES / "ctc.pt")
    settings = raw["cfg"]["model"]
    encoder = {**settings["w2v_args"]["task"], **settings["w2v_args"]["model"], "arch": "wav2vec2"}
    encoder.pop("_name")
    flat = {k: v for k, v in settings.items() if k not in ("_name", "w2v_args")}
    namespace = argparse.Namespace(**flat, arch="wav2vec_ctc", w2v_args=argparse.Namespace(**encoder))
    torch.save({"args": namespace, "model": raw["model"]}, tmp_path / "old.pt")
    conversion = convert_fairseq_checkpoint(tmp_path / "old.pt", tmp_path / "converted")
    assert conversion.form == "Namespace" and conversion.head == HEADS["ctc"]
    theirs = reference("ctc")
    with quiet_loading():
        model = Wav2Vec2Model.from_pretrained(conversion.output_dir).eval()
    assert differences({"last_hidden_state": model(theirs["input_values"]).last_hidden_state},
                       theirs)["last_hidden_state"] <= TOLERANCE
