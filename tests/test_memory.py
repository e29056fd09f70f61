"""Too little memory: the estimate a run checks before its first update, its refusal, and --gradient_checkpointing."""

import numpy as np
import pytest
import torch
from transformers import Wav2Vec2ForPreTraining

from hf_music_w2v import Wav2Vec2ForMusicClassification
from hf_music_w2v.presets import preset_config
from hf_music_w2v.training.finetune import classifier_update
from hf_music_w2v.training.memory import enable_gradient_checkpointing, estimate_training_memory, parse_size
from hf_music_w2v.training.pretrain import parse_args, pretraining_batch, pretraining_update

from .conftest import PRETRAIN_BASE_ARGS, tiny_music_config, tiny_pretraining_config
from .test_cli_errors import assert_one_error_line, cli
from .test_pretraining import reset_accelerate_state

DROPOUT = dict(hidden_dropout=0.1, attention_dropout=0.1, activation_dropout=0.1, feat_proj_dropout=0.1)


def pretraining_inputs(config) -> list[dict]:
    audio = torch.randn(2, 4000, generator=torch.Generator().manual_seed(1))
    return [pretraining_batch(audio, [(0, 0), (0, 1)], config)]


def classifier_inputs(config) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    return [{"input_values": torch.randn(2, 4000, generator=generator), "pitch_labels": torch.tensor([60, 61]),
             "instrument_labels": torch.tensor([0, 3])}]


KINDS = {  # model class, its tiny config, its inputs, its update
    "pretraining": (Wav2Vec2ForPreTraining, lambda: tiny_pretraining_config(**DROPOUT), pretraining_inputs,
                    lambda *args: pretraining_update(*args, 25.0)),
    "fine-tuning": (Wav2Vec2ForMusicClassification, lambda: tiny_music_config(**DROPOUT), classifier_inputs,
                    lambda *args: classifier_update(*args, 1.0)),
}


def weights_after_one_update(kind: str, checkpointing: bool) -> dict[str, torch.Tensor]:
    from accelerate import Accelerator

    model_class, make_config, make_inputs, update = KINDS[kind]
    reset_accelerate_state()
    accelerator = Accelerator(cpu=True)
    config = make_config()
    torch.manual_seed(0)
    model = model_class(config).train()  # dropout on: checkpointing must replay the same masks
    if checkpointing:
        enable_gradient_checkpointing(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    torch.manual_seed(5)
    np.random.seed(5)  # transformers draws the time masks from numpy's generator
    update(accelerator, model, optimizer, make_inputs(config))
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("kind", list(KINDS))
def test_gradient_checkpointing_gives_the_same_update(kind):
    plain, checkpointed = weights_after_one_update(kind, False), weights_after_one_update(kind, True)
    initial = KINDS[kind][0](KINDS[kind][1]()).state_dict()
    assert any(not torch.equal(plain[name], initial[name]) for name in plain)  # the update moved the weights
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=0, atol=1e-7, msg=name)


def test_the_flag_turns_checkpointing_on_in_the_model(tmp_path, mini_root, tiny_config_file):
    from hf_music_w2v.training.pretrain import PretrainTask

    argv = ["--musicnet_dir", str(mini_root / "musicnet"), "--config_name", str(tiny_config_file),
            "--output_dir", str(tmp_path), "--gradient_checkpointing"]
    assert PretrainTask(*parse_args(argv), argv).build_model().is_activation_checkpointing


def saved_activation_bytes(config, batch: int, samples: int) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one pretraining forward (weights aside)."""
    from hf_music_w2v.training.pretrain import pretraining_losses

    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(config).train()
    inputs = pretraining_batch(torch.randn(batch, samples), [(0, i) for i in range(batch)], config)
    seen = {p.untyped_storage().data_ptr() for p in model.parameters()}
    total = 0

    def count(tensor):
        nonlocal total
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
        pretraining_losses(model, inputs, config)
    return total


def test_the_activation_estimate_covers_what_autograd_keeps():
    config = preset_config("wav2vec2-small", layerdrop=0.0)
    torch.manual_seed(0)
    estimate = estimate_training_memory(Wav2Vec2ForPreTraining(config), 2, 4 * 16_000, pretraining=True)
    saved = saved_activation_bytes(config, 2, 4 * 16_000)
    assert saved <= estimate.activations <= 1.5 * saved, (saved, estimate.activations)


def test_the_readme_command_does_not_fit_in_24_gb_without_checkpointing():
    # The README's first pretraining command (wav2vec2-base, 8 x 20 s) was killed by the kernel on a 24 GB machine.
    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(preset_config("wav2vec2-base"))
    plain = estimate_training_memory(model, 8, 20 * 16_000, pretraining=True)
    checkpointed = estimate_training_memory(model, 8, 20 * 16_000, pretraining=True, gradient_checkpointing=True)
    assert plain.total > 24e9 > checkpointed.total


def test_sizes_read_like_the_readme_says():
    assert parse_size("24GB") == 24_000_000_000 and parse_size("512MiB") == 512 * 2**20 and parse_size("1e6") == 10**6


@pytest.mark.slow
def test_a_run_that_does_not_fit_stops_before_its_first_update_with_the_options(tmp_path, mini_root, tiny_config_file):
    args = ["pretrain", "--musicnet_dir", str(mini_root / "musicnet"), "--config_name", str(tiny_config_file),
            *PRETRAIN_BASE_ARGS, "--max_train_steps", "2", "--report_to", "none", "--output_dir", str(tmp_path / "out")]
    refused = cli(*args, HF_MUSIC_W2V_MEMORY_LIMIT="100kB")
    assert_one_error_line(refused, "this run needs about", "an estimate", "and 100 kB is available "
                          "(HF_MUSIC_W2V_MEMORY_LIMIT)", "--gradient_checkpointing", "--per_device_train_batch_size",
                          "--random_crop_seconds", "--recipe mini", "--skip_memory_check")
    assert "pretraining:" not in refused.stderr  # no update began

    forced = cli(*args, "--skip_memory_check", HF_MUSIC_W2V_MEMORY_LIMIT="100kB")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "--skip_memory_check: starting anyway" in forced.stdout


@pytest.mark.slow
def test_a_finetuning_run_that_does_not_fit_names_its_own_options(tmp_path, mini_root):
    refused = cli("finetune", "--model_name_or_path", "preset:wav2vec2-small", "--nsynth_dir", str(mini_root / "nsynth"),
                  "--max_train_samples", "16", "--max_eval_samples", "8", "--num_train_epochs", "1", "--report_to",
                  "none", "--output_dir", str(tmp_path / "out"), HF_MUSIC_W2V_MEMORY_LIMIT="1MiB")
    assert_one_error_line(refused, "this run needs about", "for 16 x 4 s of audio per micro-batch",
                          "and 1 MB is available (HF_MUSIC_W2V_MEMORY_LIMIT)", "--gradient_checkpointing",
                          "--freeze_base_model", "--recipe mini", "--skip_memory_check")
