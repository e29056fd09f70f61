"""The training engine's own guarantees: recipes and options, one run per output folder, GPU code paths on CPU."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hf_music_w2v.training.arguments import recipe_file, recipe_flags
from hf_music_w2v.training.layout import RunLayout

from .conftest import program_env, run_program

REPO = Path(__file__).resolve().parent.parent


def env(**extra) -> dict:
    return program_env(**extra)


def program(name: str, args: list[str], timeout: int = 600, **extra) -> subprocess.CompletedProcess:
    return run_program(name, args, timeout, **extra)


def test_auto_mixed_precision_takes_the_launchers_choice_else_native_bf16(monkeypatch):
    from hf_music_w2v.precision import bf16_is_native
    from hf_music_w2v.training.engine import resolve_mixed_precision

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    native = "bf16" if bf16_is_native("cpu") else "no"
    assert resolve_mixed_precision("auto", use_cpu=True) == native
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # accelerate's default, not a choice
    assert resolve_mixed_precision("auto", use_cpu=True) == native
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    assert resolve_mixed_precision("auto", use_cpu=True) == "fp16"
    assert resolve_mixed_precision("no", use_cpu=True) == "no"  # an explicit flag wins


BATCH_FAULTS = r"""
import json, os, resource, subprocess, sys
import numpy as np
from hf_music_w2v.allocator import keep_freed_memory
made = keep_freed_memory() if sys.argv[1] != "default" else []
if sys.argv[1] == "keep-then-start":  # a process started afterwards, as spawned DataLoader workers are
    print(subprocess.run([sys.executable, "-c", sys.argv[2], "default"], capture_output=True, text=True).stdout)
    sys.exit()
import torch
def batch():  # a batch of 64 NSynth notes' buffers and a 64 MB activation, written and freed
    return [np.ones(64_000, np.float32) for _ in range(64)], torch.ones(16 << 20)
batch(), batch()  # the heap's layout settles in the first two
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    batch()
print(json.dumps({"made": made, "page_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_runs_reuse_freed_audio_buffers_instead_of_page_faulting_them_in_again():
    def batches(mode, **env):
        environment = {name: value for name, value in os.environ.items() if not name.startswith("MALLOC_")}
        result = subprocess.run([sys.executable, "-c", BATCH_FAULTS, mode, BATCH_FAULTS], capture_output=True,
                                text=True, check=True, env={**environment, **env})
        return json.loads(result.stdout)

    default, kept = batches("default"), batches("keep")
    assert kept["made"] == ["MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"]
    assert default["page_faults"] > 10 * (64 * 62 + 16_000)  # every buffer's 4 KB pages, every batch
    assert kept["page_faults"] < default["page_faults"] / 20
    assert batches("keep-then-start")["page_faults"] < default["page_faults"] / 20
    for told, made in (({"MALLOC_TRIM_THRESHOLD_": "0"}, "MALLOC_MMAP_MAX_"),
                       ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, "MALLOC_MMAP_MAX_"),
                       ({"MALLOC_MMAP_THRESHOLD_": "131072"}, "MALLOC_TRIM_THRESHOLD_")):
        left_alone = batches("keep", **told)  # the operator's own setting stays
        assert left_alone["made"] == [made], told
        assert left_alone["page_faults"] > default["page_faults"] / 10, told


def test_every_run_sets_the_allocator_before_it_builds_anything(monkeypatch, tmp_path):
    from hf_music_w2v.training import engine
    from hf_music_w2v.training.arguments import RunArguments

    calls = []
    monkeypatch.setattr(engine, "keep_freed_memory", lambda: calls.append("allocator"))

    class Task(engine.TrainingTask):
        def build_model(self):
            calls.append("model")
            raise KeyboardInterrupt  # enough: the run has started

    with pytest.raises(KeyboardInterrupt):
        engine.train(Task(None, RunArguments(output_dir=str(tmp_path / "run")), []))
    assert calls == ["allocator", "model"]


def test_recipe_flags_come_first_so_the_command_line_wins():
    from hf_music_w2v.training.pretrain import parse_args

    args, run = parse_args(["--recipe", "mini", "--musicnet_dir", "m", "--output_dir", "o", "--learning_rate", "3e-4"])
    assert args.config_name == "preset:wav2vec2-small" and args.segment_seconds == 4.0  # from the recipe
    assert run.max_train_steps == 800 and run.learning_rate == 3e-4  # the flag beats the recipe's 1e-3
    paper, paper_run = parse_args(["--recipe", "paper", "--musicnet_dir", "m", "--output_dir", "o"])
    default, default_run = parse_args(["--musicnet_dir", "m", "--output_dir", "o"])
    assert vars(paper) == vars(default)  # the paper's recipe spells out pretraining's defaults


def test_a_recipe_can_be_any_json_file(tmp_path):
    from hf_music_w2v.training.finetune import parse_args

    recipe = tmp_path / "mine.json"
    recipe.write_text(json.dumps({"_comment": "x", "freeze_base_model": True, "pitch_range": [21, 108],
                                  "num_train_epochs": 3}))
    assert recipe_flags(recipe) == ["--freeze_base_model", "true", "--pitch_range", "21", "108",
                                    "--num_train_epochs", "3"]
    args, run = parse_args(["--recipe", str(recipe), "--model_name_or_path", "m", "--nsynth_dir", "n",
                            "--output_dir", "o"])
    assert args.freeze_base_model and args.pitch_range == [21, 108] and run.num_train_epochs == 3
    assert run.checkpointing_steps == "epoch" and run.learning_rate == 5e-5  # fine-tuning's own defaults


def test_unknown_recipe_and_bad_options_are_argparse_errors(tmp_path):
    result = program("pretrain", ["--recipe", "huge", "--musicnet_dir", "m", "--output_dir", str(tmp_path)])
    assert result.returncode == 2 and "no packaged pretrain recipe of that name (there are: mini, paper)" in result.stderr
    result = program("finetune", ["--model_name_or_path", "m", "--nsynth_dir", "n", "--output_dir", str(tmp_path),
                                  "--checkpointing_steps", "often"])
    assert result.returncode == 2 and "--checkpointing_steps must be 'epoch' or a positive number" in result.stderr
    with pytest.raises(FileNotFoundError, match="no such file"):
        recipe_file("pretrain", str(tmp_path / "missing.json"))


def test_help_shows_every_default():
    result = subprocess.run([sys.executable, "-m", "hf_music_w2v.cli", "pretrain", "--help"], env=env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for expected in ("--num_processes N", "(default: 0.0005)", "(default: 20.0)", "(default: 32000)",
                     "(default: preset:wav2vec2-base)", "(default: 1000)"):
        assert expected in text, expected
    finetune = subprocess.run([sys.executable, "-m", "hf_music_w2v.training.finetune", "--help"], env=env(),
                              capture_output=True, text=True, timeout=120)
    text = " ".join(finetune.stdout.split())
    assert "(default: 5e-05)" in text and "(default: epoch)" in text and "(default: 0.1)" in text


def test_a_second_run_on_a_locked_folder_is_refused_at_once(tmp_path, pretrain_args):
    layout = RunLayout(tmp_path / "out")
    layout.lock()  # this test process is the live holder
    try:
        started = time.monotonic()
        result = program("pretrain", pretrain_args(layout.root))
        assert result.returncode != 0
        assert f"is in use by another run (pid {os.getpid()} on " in result.stderr
        assert time.monotonic() - started < 60
        assert not layout.checkpoints.exists() and not layout.settings.exists()
    finally:
        layout.unlock()


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path, pretrain_args):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from hf_music_w2v.training.layout import RunLayout; "
         "RunLayout(sys.argv[1]).lock(); print('locked', flush=True); time.sleep(600)", str(tmp_path / "out")],
        env=env(), stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    result = program("pretrain", pretrain_args(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"took over the lock of {tmp_path / 'out'} from a run that is gone (pid {holder.pid} " in result.stdout
    assert RunLayout(tmp_path / "out").is_finished()
    # That run ended cleanly, and so does one that finds nothing to do: neither is reported as gone.
    for _ in range(2):
        again = program("pretrain", pretrain_args(tmp_path / "out", 4, "--resume_from_checkpoint", "latest"))
        assert again.returncode == 0 and "holds a finished run" in again.stdout
        assert "took over the lock" not in again.stdout


@pytest.mark.slow
def test_a_folder_belongs_to_one_run(tmp_path, pretrain_args):
    out = tmp_path / "out"
    first = program("pretrain", pretrain_args(out, 4))
    assert first.returncode == 0, first.stderr[-3000:]
    results = (out / "all_results.json").read_text()

    again = program("pretrain", pretrain_args(out, 6))
    assert again.returncode != 0 and "already holds a run" in again.stderr and "--overwrite_output_dir" in again.stderr
    other = program("pretrain", pretrain_args(out, 4, "--resume_from_checkpoint", "latest", "--seed", "1"))
    assert other.returncode != 0 and "seed 0 -> 1" in other.stderr  # (a higher --max_train_steps would extend it)
    assert (out / "all_results.json").read_text() == results  # nothing was touched

    finished = program("pretrain", pretrain_args(out, 4, "--resume_from_checkpoint", "latest", "--logging_steps", "1"))
    assert finished.returncode == 0 and "holds a finished run" in finished.stdout
    assert (out / "all_results.json").read_text() == results

    fresh = program("pretrain", pretrain_args(out, 6, "--overwrite_output_dir", "--checkpointing_steps", "3"))
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert json.loads((out / "all_results.json").read_text())["steps"] == 6
    # The old run's log is gone: logging every 10 updates, the new one logged only its final update.
    assert [json.loads(line)["step"] for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()] == [6]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000003", "step_00000006"]


@pytest.mark.slow
@pytest.mark.parametrize("compile_", [False, True], ids=["eager", "compiled"])
def test_bf16_updates_run_on_cpu(tmp_path, pretrain_args, mini_root, compile_):
    """bf16 autocast (accelerate's mixed precision) and torch.compile: dtype or compile breakage shows without a GPU."""
    extra = ["--mixed_precision", "bf16", "--logging_steps", "1"] + (["--torch_compile"] if compile_ else [])
    pretrain = program("pretrain", pretrain_args(tmp_path / "pre", 3, *extra))
    assert pretrain.returncode == 0, pretrain.stderr[-3000:]
    assert "mixed precision bf16" in pretrain.stdout
    rows = [json.loads(line) for line in (tmp_path / "pre" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["skipped_updates"] == 0 for r in rows)
    assert all(0 < r["loss"] < 100 for r in rows)

    if compile_:
        return  # compiling the classifier too would double the test's minutes; its forward is the same backbone
    nsynth = mini_root / "nsynth"
    finetune = program("finetune", ["--model_name_or_path", str(tmp_path / "pre"), "--nsynth_dir", str(nsynth),
                                    "--output_dir", str(tmp_path / "ft"), "--max_train_samples", "16",
                                    "--max_eval_samples", "8", "--per_device_train_batch_size", "8",
                                    "--num_train_epochs", "1", "--report_to", "none", *extra])
    assert finetune.returncode == 0, finetune.stderr[-3000:]
    results = json.loads((tmp_path / "ft" / "all_results.json").read_text())
    assert results["steps"] == 2 and results["skipped_updates"] == 0 and 0 <= results["test_pitch_accuracy"] <= 1


@pytest.mark.slow
def test_the_command_line_launches_several_cpu_processes(tmp_path, pretrain_args):
    # `hf-music-w2v pretrain --num_processes 2` without an accelerate config: on a machine without GPUs the
    # processes go through torchrun on the CPU (accelerate's own --cpu --num_processes 2 starts only one).
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine the processes would use the GPUs")
    env_without = {k: v for k, v in env().items() if k != "ACCELERATE_USE_CPU"}
    result = subprocess.run([sys.executable, "-m", "hf_music_w2v.cli", "pretrain", "--num_processes", "2",
                             *pretrain_args(tmp_path / "out", 2, "--per_device_train_batch_size", "1")],
                            env=env_without, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pretraining on 2 process(es)" in result.stdout
    assert json.loads((tmp_path / "out" / "all_results.json").read_text())["steps"] == 2
