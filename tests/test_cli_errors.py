"""Mistakes a user makes, through the real `hf-music-w2v` command line: one `error:` line, no traceback."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from hf_music_w2v.training.layout import RunLayout

from .conftest import PRETRAIN_BASE_ARGS, program_env


def cli(*args: str, timeout: int = 300, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hf_music_w2v.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=program_env(**env))


def assert_one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "CalledProcessError" not in result.stderr, result.stderr[-3000:]
    # argparse's own form, after its usage, is "hf-music-w2v pretrain: error: ...".
    lines = [line for line in result.stderr.splitlines() if re.match(r"(hf-music-w2v[\w -]*: )?error: ", line)]
    assert len(lines) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, mini_root):
    """A model folder with its config alone, and a real small pretrained model."""
    import torch
    from transformers import Wav2Vec2ForPreTraining

    from .conftest import tiny_pretraining_config

    root = tmp_path_factory.mktemp("models")
    tiny_pretraining_config().save_pretrained(root / "config_only")
    (root / "empty").mkdir()
    torch.manual_seed(0)
    Wav2Vec2ForPreTraining(tiny_pretraining_config()).save_pretrained(root / "model")
    return root


def finetune_args(model, nsynth, output_dir, *extra) -> list[str]:
    return ["finetune", "--model_name_or_path", str(model), "--nsynth_dir", str(nsynth), "--output_dir",
            str(output_dir), "--report_to", "none", "--num_train_epochs", "1", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["config-only model", "empty model folder", "empty init_from", "musicnet as nsynth",
                                  "offline hub id", "too few examples", "tracker not installed", "missing recipe",
                                  "push to an offline Hub"])
def test_a_training_mistake_is_one_line(case, folders, mini_root, tiny_config_file, tmp_path):
    out = tmp_path / "out"
    nsynth = mini_root / "nsynth"
    pretrain = ["pretrain", "--musicnet_dir", str(mini_root / "musicnet"), "--config_name", str(tiny_config_file),
                *PRETRAIN_BASE_ARGS, "--max_train_steps", "2", "--report_to", "none", "--output_dir", str(out)]
    command, expected = {
        "config-only model": (finetune_args(folders / "config_only", nsynth, out),
                              (str(folders / "config_only"), "model.safetensors")),
        # transformers takes a folder without config.json for wav2vec2-base; a random initialisation must name its
        # architecture.
        "empty model folder": (finetune_args(folders / "empty", nsynth, out, "--random_init"),
                               ("--model_name_or_path", f"{folders / 'empty'} has no config.json")),
        "empty init_from": ([*pretrain[:3], "--init_from", str(folders / "empty"), *pretrain[5:]],
                            ("--init_from", f"{folders / 'empty'} has no config.json")),
        "musicnet as nsynth": (finetune_args(folders / "model", mini_root / "musicnet", out),
                               (str(mini_root / "musicnet"),)),
        "offline hub id": (finetune_args("nobody-here/no-such-model", nsynth, out), ("nobody-here/no-such-model",)),
        # (--skip_memory_check: such a batch would not fit in memory either, which the memory check says first)
        "too few examples": ([*pretrain, "--per_device_train_batch_size", "100000", "--skip_memory_check"],
                             ("fewer than one update needs",)),
        "tracker not installed": ([*pretrain, "--report_to", "wandb"], ("--report_to wandb", "pip install wandb")),
        "missing recipe": ([*pretrain, "--recipe", "no-such-recipe"], ("--recipe no-such-recipe",)),
        "push to an offline Hub": ([*pretrain, "--push_to_hub", "--hub_model_id", "me/w2v"],
                                   ("uploading to me/w2v: HF_HUB_OFFLINE is set",)),
    }[case]
    assert_one_error_line(cli(*command), *expected)
    assert not RunLayout(out).is_finished()


def test_a_busy_output_folder_is_one_line_through_the_launcher(tmp_path, pretrain_args):
    layout = RunLayout(tmp_path / "out")
    layout.lock()  # this test process is the live holder
    try:
        result = cli("pretrain", *pretrain_args(layout.root))
    finally:
        layout.unlock()
    assert_one_error_line(result, "is in use by another run")


def test_a_missing_model_for_predict_is_one_line(tmp_path):
    note = tmp_path / "note.wav"
    import numpy as np
    import soundfile as sf

    sf.write(note, np.zeros(16_000, dtype=np.float32), 16_000)
    assert_one_error_line(cli("predict", str(tmp_path / "nowhere"), str(note)), str(tmp_path / "nowhere"))


def test_debug_variable_gives_the_traceback_back(folders, mini_root, tmp_path):
    result = cli(*finetune_args(folders / "config_only", mini_root / "nsynth", tmp_path / "out"),
                 HF_MUSIC_W2V_DEBUG="1")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_a_run_killed_by_the_kernel_is_named_with_what_to_try(tmp_path, pretrain_args):
    """SIGKILL, as the kernel's out-of-memory killer sends it, to the training process under the launcher."""
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "hf_music_w2v.cli", "pretrain",
                                *pretrain_args(out, 400, "--checkpointing_steps", "1000")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=program_env())
    lock = RunLayout(out).lock_file
    deadline = time.monotonic() + 300
    while not (lock.is_file() and lock.read_text().startswith("pid ") and (out / "run_settings.json").is_file()):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.2)
    os.kill(int(lock.read_text().split()[1]), signal.SIGKILL)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGKILL
    line = assert_one_error_line(subprocess.CompletedProcess([], process.returncode, "", stderr),
                                 "killed by signal 9 (most likely out of memory)", "--per_device_train_batch_size")
    assert "--recipe mini" in line
    assert json.loads((out / "run_settings.json").read_text())["max_train_steps"] == 400
    # It wrote no checkpoint, so nothing is lost by starting over with other settings (a smaller run, say).
    again = cli("pretrain", *pretrain_args(out, 2))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{out} held a run that wrote no checkpoint" in again.stdout
    assert json.loads((out / "all_results.json").read_text())["steps"] == 2


def test_every_option_of_every_command_has_help():
    import argparse
    import dataclasses

    from hf_music_w2v.cli import build_parser
    from hf_music_w2v.training.arguments import RunArguments
    from hf_music_w2v.training.finetune import FinetuneArguments
    from hf_music_w2v.training.pretrain import PretrainArguments

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {'/'.join(action.option_strings) or action.dest}"
               for name, sub in commands.choices.items() for action in sub._actions
               if not isinstance(action, argparse._HelpAction) and not action.help and sub.add_help]
    for arguments in (RunArguments, PretrainArguments, FinetuneArguments):
        # The programs' parser appends "(default: ...)" itself: a help text that states one too shows two.
        missing += [f"{arguments.__name__}.{f.name}" for f in dataclasses.fields(arguments)
                    if not f.metadata.get("help") or "default" in f.metadata["help"].lower()]
    assert missing == []
    assert subprocess.run([sys.executable, "-m", "hf_music_w2v.cli", "--version"], capture_output=True,
                          text=True).stdout.startswith("hf-music-w2v ")


def test_every_command_answers_help_and_the_top_level_help_imports_neither_torch_nor_the_package(capsys):
    from hf_music_w2v.cli import build_parser
    from hf_music_w2v.training.launch import PROGRAMS, launch
    from hf_music_w2v_command import COMMANDS

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    assert list(commands.choices) == list(COMMANDS)  # the fast help lists what the full parser runs
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            launch(name, ["--help"]) if name in PROGRAMS else parser.parse_args([name, "--help"])
        assert exit_.value.code == 0
        assert "usage:" in capsys.readouterr().out, name
    probe = ("import sys\nimport hf_music_w2v_command as command\nsys.argv = ['hf-music-w2v', sys.argv[1]]\n"
             "try:\n    command.main()\nexcept SystemExit:\n    pass\n"
             "print('heavy:', sorted({'torch', 'transformers', 'hf_music_w2v'} & set(sys.modules)))")
    for flag in ("--help", "--version"):
        result = subprocess.run([sys.executable, "-c", probe, flag], capture_output=True, text=True, env=program_env())
        assert result.stdout.rstrip().endswith("heavy: []"), result.stdout + result.stderr
    assert all(name in result.stdout for name in COMMANDS) or flag == "--version"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the check is for machines without GPUs")
def test_a_gpu_launcher_config_without_gpus_is_refused_before_any_process_starts(tmp_path, pretrain_args):
    from hf_music_w2v.training.launch import check_accelerate_config

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    configs = os.path.join(repo, "training", "accelerate_configs")
    assert check_accelerate_config(os.path.join(configs, "cpu_2proc.yaml")) is None
    gpu = os.path.join(configs, "gpu_8.yaml")
    result = cli("pretrain", "--accelerate_config", gpu, *pretrain_args(tmp_path / "out"))
    assert result.returncode == 2
    assert_one_error_line(result, f"--accelerate_config {gpu}: a GPU config", "no GPU is visible here")
    assert not (tmp_path / "out").exists()


def test_loading_a_pretraining_output_is_quiet_and_a_foreign_weight_still_warns(tmp_path, capfd, caplog):
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import Wav2Vec2ForPreTraining

    from hf_music_w2v.training.finetune import build_classifier

    from .conftest import tiny_pretraining_config

    torch.manual_seed(0)
    Wav2Vec2ForPreTraining(tiny_pretraining_config()).save_pretrained(tmp_path / "pretrained")
    capfd.readouterr()
    model = build_classifier(str(tmp_path / "pretrained"))
    out, err = capfd.readouterr()
    assert model.pitch_head.out_features == 128
    for noise in ("UNEXPECTED", "MISSING", "model of type", "Loading weights"):
        assert noise not in out + err, (noise, out + err)
    weights = load_file(tmp_path / "pretrained" / "model.safetensors")
    weights["stray.weight"] = torch.zeros(2)
    save_file(weights, tmp_path / "pretrained" / "model.safetensors", metadata={"format": "pt"})
    build_classifier(str(tmp_path / "pretrained"))
    assert "weights not used: ['stray.weight']" in caplog.text


def test_embed_and_probe_load_a_pretraining_output_quietly(tmp_path, capfd):
    import torch
    from transformers import Wav2Vec2ForPreTraining

    from hf_music_w2v.cli import load_for_inference
    from hf_music_w2v.probing import load_encoder

    from .conftest import tiny_pretraining_config

    torch.manual_seed(0)
    Wav2Vec2ForPreTraining(tiny_pretraining_config()).save_pretrained(tmp_path / "pretrained")
    capfd.readouterr()
    model, _ = load_for_inference(str(tmp_path / "pretrained"), "cpu")
    encoder, _ = load_encoder(str(tmp_path / "pretrained"))
    out, err = capfd.readouterr()
    assert type(model).__name__ == type(encoder).__name__ == "Wav2Vec2Model"
    for noise in ("UNEXPECTED", "MISSING", "model of type", "Loading weights"):
        assert noise not in out + err, (noise, out + err)
