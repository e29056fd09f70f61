"""The converter against fairseq itself: real checkpoints written by `fairseq-hydra-train`, the same audio through
fairseq's forward pass and through the converted transformers model.

Run with `make test-fairseq` (a separate .venv-fairseq with fairseq-fixed); skipped where fairseq is not importable,
as in `make test`. Two styles at small sizes: BASE-like (group-norm feature encoder, post-LN Transformer, input not
normalised) and LARGE-like (layer-norm feature encoder with conv bias, pre-LN Transformer, normalised input).
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

fairseq = pytest.importorskip("fairseq", reason="fairseq is not installed here; `make test-fairseq` builds "
                                                 ".venv-fairseq with fairseq-fixed and runs these tests")

from transformers import Wav2Vec2ForPreTraining  # noqa: E402

from hf_music_w2v.convert_fairseq import convert_fairseq_checkpoint, load_fairseq_checkpoint  # noqa: E402
from hf_music_w2v.hub import quiet_loading  # noqa: E402

pytestmark = pytest.mark.slow

TOLERANCE = 1e-5

SMALL_MODEL = {
    "_name": "wav2vec2", "quantize_targets": True, "conv_feature_layers": "[(32, 10, 5)] + [(32, 3, 2)] * 2",
    "encoder_layers": 2, "encoder_embed_dim": 48, "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 4,
    "conv_pos": 16, "conv_pos_groups": 4, "final_dim": 24, "latent_vars": 16, "latent_groups": 2,
    "num_negatives": 10, "encoder_layerdrop": 0.05, "dropout_input": 0.1, "dropout_features": 0.1,
    "feature_grad_mult": 0.1,
}


def fixture_maker():
    """tests/fixtures/fairseq/make_fixtures.py, whose shrunk training config and audio these tests share."""
    import importlib.util

    path = Path(__file__).resolve().parent / "fixtures" / "fairseq" / "make_fixtures.py"
    spec = importlib.util.spec_from_file_location("make_fairseq_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKER = fixture_maker()
training_config, write_audio = MAKER.training_config, MAKER.write_training_audio
STYLES = MAKER.STYLES  # the two styles, as the committed fixtures have them


@pytest.fixture(scope="module", params=list(STYLES))
def trained(request, tmp_path_factory):
    """A real fairseq trainer checkpoint of the style, after a few updates on CPU."""
    style = request.param
    overrides, normalize = STYLES[style]
    root = tmp_path_factory.mktemp(f"fairseq-{style}")
    data = write_audio(root / "data")
    (root / "config").mkdir()
    (root / "config" / "small.yaml").write_text(training_config({**SMALL_MODEL, **overrides}, normalize, data,
                                                                root / "checkpoints"))
    command = [str(Path(sys.executable).with_name("fairseq-hydra-train")), "--config-dir", str(root / "config"),
               "--config-name", "small", f"hydra.run.dir={root / 'hydra'}"]
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    checkpoint = root / "checkpoints" / "checkpoint_last.pt"
    assert checkpoint.is_file(), f"fairseq-hydra-train wrote no checkpoint:\n{result.stdout[-3000:]}\n" \
                                 f"{result.stderr[-3000:]}"
    return style, checkpoint, normalize


def fairseq_model(checkpoint: Path):
    from fairseq import checkpoint_utils

    models, _, _ = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)])
    return models[0].eval()


def probe_audio() -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    t = torch.arange(24000) / 16000
    tones = torch.stack([torch.sin(2 * torch.pi * 220 * t), torch.sign(torch.sin(2 * torch.pi * 330 * t))])
    return 0.3 * tones + 0.05 * torch.randn(2, t.numel(), generator=generator)


@torch.no_grad()
def fairseq_outputs(model, audio: torch.Tensor) -> dict[str, torch.Tensor]:
    """fairseq's forward pass in eval mode without masking: final hidden states, final_proj of them, and the
    quantized targets through project_q."""
    result = model.extract_features(audio, None, mask=False)
    quantized = model.quantizer(result["features"], produce_targets=False)["x"]
    return {"last_hidden_state": result["x"], "projected_states": model.final_proj(result["x"]),
            "projected_quantized_states": model.project_q(quantized)}


@torch.no_grad()
def converted_outputs(folder: Path, audio: torch.Tensor) -> dict[str, torch.Tensor]:
    with quiet_loading():
        model = Wav2Vec2ForPreTraining.from_pretrained(folder).eval()
    out = model(audio)
    return {"last_hidden_state": model.wav2vec2(audio).last_hidden_state,
            "projected_states": out.projected_states, "projected_quantized_states": out.projected_quantized_states}


def max_differences(checkpoint: Path, folder: Path, normalize: bool) -> tuple[dict[str, float], int]:
    """Largest |converted - fairseq| of each output, and how many distinct quantized targets fairseq chose."""
    audio = probe_audio()
    if normalize:  # both models see what their feature extractor gives: zero mean, unit variance per clip
        audio = (audio - audio.mean(-1, keepdim=True)) / torch.sqrt(audio.var(-1, keepdim=True, unbiased=False) + 1e-7)
    theirs, ours = fairseq_outputs(fairseq_model(checkpoint), audio), converted_outputs(folder, audio)
    targets = theirs["projected_quantized_states"]
    distinct = torch.unique(targets.reshape(-1, targets.shape[-1]), dim=0).shape[0]
    assert distinct > 1, "every frame got the same codevectors: the quantizer comparison would be empty"
    differences = {}
    for name, value in theirs.items():
        assert ours[name].shape == value.shape, name
        differences[name] = (ours[name] - value).abs().max().item()
    return differences, distinct


def test_converted_model_matches_fairseq(trained, tmp_path):
    style, checkpoint, normalize = trained
    conversion = convert_fairseq_checkpoint(checkpoint, tmp_path / "converted")
    assert conversion.form == "dict"
    differences, distinct = max_differences(checkpoint, conversion.output_dir, normalize)
    print(f"\n{style}: max |converted - fairseq| " + ", ".join(f"{k} {v:.2e}" for k, v in differences.items())
          + f" ({distinct} distinct quantized targets)")
    assert max(differences.values()) <= TOLERANCE, differences


def test_settings_of_the_real_checkpoint(trained, tmp_path):
    style, checkpoint, normalize = trained
    folder = convert_fairseq_checkpoint(checkpoint, tmp_path / "converted").output_dir
    config = Wav2Vec2ForPreTraining.from_pretrained(folder).config
    assert config.feat_extract_norm == ("layer" if style == "large" else "group")
    assert config.do_stable_layer_norm is (style == "large") and config.conv_bias is (style == "large")
    assert (config.conv_dim, config.conv_stride) == ([32, 32, 32], [5, 2, 2])
    assert (config.proj_codevector_dim, config.num_codevectors_per_group, config.num_negatives) == (24, 16, 10)
    from transformers import AutoFeatureExtractor

    assert AutoFeatureExtractor.from_pretrained(folder).do_normalize is normalize


def test_real_omegaconf_and_namespace_forms_convert_alike(trained, tmp_path):
    """The same weights saved with the settings as a real omegaconf DictConfig and as an argparse.Namespace (the
    older forms) convert to the same model, without omegaconf imported by the converter."""
    from omegaconf import OmegaConf

    style, checkpoint, normalize = trained
    raw = torch.load(checkpoint, weights_only=True)
    as_dictconfig = dict(raw, cfg=OmegaConf.create(raw["cfg"]))
    flat = {**raw["cfg"]["task"], **raw["cfg"]["criterion"], **raw["cfg"]["model"], "arch": "wav2vec2"}
    as_namespace = {key: value for key, value in raw.items() if key != "cfg"}
    as_namespace["args"] = argparse.Namespace(**{k: v for k, v in flat.items() if k != "_name"})
    reference = load_fairseq_checkpoint(checkpoint)
    for form, content in (("DictConfig", as_dictconfig), ("Namespace", as_namespace)):
        path = tmp_path / f"{form}.pt"
        torch.save(content, path)
        loaded = load_fairseq_checkpoint(path)
        assert loaded.form == form
        assert {k: loaded.model[k] for k in SMALL_MODEL if k != "_name"} == {
            k: reference.model[k] for k in SMALL_MODEL if k != "_name"}
        assert loaded.task["normalize"] is normalize
        folder = convert_fairseq_checkpoint(path, tmp_path / form).output_dir
        assert max(max_differences(checkpoint, folder, normalize)[0].values()) <= TOLERANCE
