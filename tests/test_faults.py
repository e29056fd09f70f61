"""Runs off the happy path, as an operator meets them: planted and damaged checkpoints, torn logs, divergence."""

import json
import math
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_music_w2v.atomic import DiskFull, append_text, torch_save, write_text_atomic
from hf_music_w2v.hub import save_pretrained_atomic, save_pretrained_into
from hf_music_w2v.onnx_export import export_onnx
from hf_music_w2v.training.checkpoints import list_checkpoints, verify_checkpoint, write_manifest

from .conftest import run_program

CHECKPOINT_FILES = ["model.safetensors", "optimizer.pt", "trainer_state.json", "manifest.json"]


class Payload:
    """Unpickling this creates `marker`: proof that loading ran code from the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def read_metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "logs" / "metrics.jsonl").read_text().splitlines()]


def all_finite(path: Path) -> bool:
    return all(torch.isfinite(t).all() for t in load_file(path).values())


@pytest.fixture(scope="module")
def straight(tmp_path_factory, mini_root, tiny_config_file):
    """An uninterrupted 6-update run, checkpointing every 2, every update logged: what resumes must reproduce."""
    from .conftest import PRETRAIN_BASE_ARGS

    out = tmp_path_factory.mktemp("straight") / "out"
    args = ["--musicnet_dir", str(mini_root / "musicnet"), "--config_name", str(tiny_config_file),
            *PRETRAIN_BASE_ARGS, "--max_train_steps", "6", "--checkpointing_steps", "2", "--report_to", "none",
            "--logging_steps", "1", "--checkpoints_total_limit", "5", "--output_dir", str(out)]
    result = run_program("pretrain", args)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"out": out, "args": args}


def cut_back_to(run: Path, step: int) -> None:
    """What a SIGKILL right after checkpoint `step` leaves: later checkpoints, outputs and results are gone."""
    for checkpoint in list_checkpoints(run):
        if int(checkpoint.name[5:]) > step:
            shutil.rmtree(checkpoint)
    (run / "all_results.json").unlink()


def copy_of(straight: dict, tmp_path: Path, step: int) -> tuple[Path, list[str]]:
    run = tmp_path / "out"
    shutil.copytree(straight["out"], run)
    cut_back_to(run, step)
    args = [a if a != str(straight["out"]) else str(run) for a in straight["args"]]
    return run, args


def assert_same_as_straight(run: Path, straight: dict) -> None:
    expected, got = read_metrics(straight["out"]), read_metrics(run)
    keys = ("step", "loss", "grad_norm", "learning_rate", "codevector_perplexity")
    assert [{k: r[k] for k in keys} for r in got] == [{k: r[k] for k in keys} for r in expected]
    a, b = load_file(straight["out"] / "model.safetensors"), load_file(run / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("planted", CHECKPOINT_FILES)
def test_a_pickle_planted_in_a_checkpoint_never_runs(tmp_path, straight, planted):
    run, args = copy_of(straight, tmp_path, 4)
    marker = tmp_path / "payload_ran"
    (run / "checkpoints" / "step_00000004" / planted).write_bytes(pickle.dumps(Payload(marker)))
    result = run_program("pretrain", [*args, "--resume_from_checkpoint", "latest"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert not marker.exists()
    assert f"skipping a damaged checkpoint: {run / 'checkpoints' / 'step_00000004' / planted}" in result.stdout \
        or (planted == "manifest.json" and "step_00000004/manifest.json: missing or unreadable" in result.stdout)
    assert f"resumed from {run / 'checkpoints' / 'step_00000002'} at update 2" in result.stdout
    assert_same_as_straight(run, straight)


@pytest.mark.slow
def test_a_planted_optimizer_pickle_with_a_matching_manifest_is_refused_by_the_weights_only_loader(tmp_path, straight):
    run, args = copy_of(straight, tmp_path, 4)
    marker = tmp_path / "payload_ran"
    newest = run / "checkpoints" / "step_00000004"
    torch.save({"state": {}, "param_groups": [], "extra": Payload(marker)}, newest / "optimizer.pt")
    write_manifest(newest)  # the attacker also rewrote the checksums
    explicit = run_program("pretrain", [*args, "--resume_from_checkpoint", str(newest)])
    assert explicit.returncode != 0 and not marker.exists()
    assert f"cannot resume: {newest / 'optimizer.pt'}: refused" in explicit.stderr

    result = run_program("pretrain", [*args, "--resume_from_checkpoint", "latest"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert not marker.exists()
    assert f"{newest / 'optimizer.pt'}: refused by torch's weights-only loader" in result.stdout
    assert_same_as_straight(run, straight)


@pytest.mark.slow
def test_a_truncated_newest_checkpoint_falls_back_and_an_explicit_one_is_a_clear_error(tmp_path, straight):
    run, args = copy_of(straight, tmp_path, 4)
    weights = run / "checkpoints" / "step_00000004" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    explicit = run_program("pretrain", [*args, "--resume_from_checkpoint", str(weights.parent)])
    assert explicit.returncode != 0
    assert f"cannot resume: {weights}: 1000 bytes, the manifest says" in explicit.stderr
    result = run_program("pretrain", [*args, "--resume_from_checkpoint", "latest"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"skipping a damaged checkpoint: {weights}: 1000 bytes" in result.stdout
    assert_same_as_straight(run, straight)


@pytest.mark.slow
def test_a_torn_last_log_line_is_dropped_and_reported(tmp_path, straight):
    run, args = copy_of(straight, tmp_path, 4)
    log = run / "logs" / "metrics.jsonl"
    log.write_text(log.read_text() + '{"step": 7, "loss": 4.6, "contrast')  # a write cut off by a crash
    result = run_program("pretrain", [*args, "--resume_from_checkpoint", "latest"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"dropped the torn last line 7 of {log}" in result.stdout
    assert_same_as_straight(run, straight)


@pytest.mark.slow
def test_divergence_never_reaches_disk_and_a_lower_rate_on_resume_recovers(tmp_path, straight):
    run, args = copy_of(straight, tmp_path, 4)
    diverged = run_program("pretrain", [*args, "--resume_from_checkpoint", "latest", "--learning_rate", "1e30",
                                        "--max_consecutive_skips", "2"])
    assert diverged.returncode != 0
    assert "Lower --learning_rate" in diverged.stderr
    assert not (run / "all_results.json").exists()
    for checkpoint in list_checkpoints(run):
        assert all_finite(checkpoint / "model.safetensors"), checkpoint
    assert [c.name for c in list_checkpoints(run)] == ["step_00000002", "step_00000004"]

    # The advice as written: resume with a lower rate. The schedule is rebuilt from the rate given on resume.
    recovered = run_program("pretrain", [*args, "--resume_from_checkpoint", "latest", "--learning_rate", "5e-4"])
    assert recovered.returncode == 0, recovered.stderr[-3000:]
    assert all_finite(run / "model.safetensors")
    assert_same_as_straight(run, straight)  # 5e-4 is the straight run's rate: the very same run


@pytest.mark.slow
def test_nan_audio_stops_the_run_before_any_update_naming_the_file(tmp_path, mini_root, tiny_config_file):
    import soundfile as sf

    musicnet = tmp_path / "musicnet"
    shutil.copytree(mini_root / "musicnet", musicnet)
    for wav in (musicnet / "train_data").glob("*.wav"):
        audio, rate = sf.read(wav, dtype="float32")
        audio[:] = math.nan
        sf.write(wav, audio, rate, subtype="FLOAT")
    from .conftest import PRETRAIN_BASE_ARGS

    result = run_program("pretrain", ["--musicnet_dir", str(musicnet), "--config_name", str(tiny_config_file),
                                      *PRETRAIN_BASE_ARGS, "--max_train_steps", "4", "--checkpointing_steps", "1",
                                      "--max_consecutive_skips", "3", "--report_to", "none",
                                      "--output_dir", str(tmp_path / "out")],
                         HF_MUSIC_W2V_CACHE=str(tmp_path / "cache"))
    assert result.returncode != 0
    assert "contains" in result.stderr and "NaN or infinite samples" in result.stderr
    assert str(musicnet / "train_data") in result.stderr
    assert list_checkpoints(tmp_path / "out") == [] and not (tmp_path / "out" / "model.safetensors").exists()


def wait_and_kill(command: list[str], ready, timeout: float = 300):
    """Start `command`, SIGKILL it as soon as `ready()` is true; fail if it ends first."""
    import os
    import signal
    import subprocess
    import time

    from .conftest import program_env

    process = subprocess.Popen(command, env=program_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def rows_of(run: Path) -> list[dict]:
    path = run / "logs" / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line being written
            pass
    return rows


KILL_POINTS = {
    # each: the moment after which the run is killed (it may have gone a little further by then)
    "after an update": lambda run: any(r.get("step") == 7 and "loss" in r for r in rows_of(run)),
    "after a checkpoint": lambda run: (run / "checkpoints" / "step_00000010" / "manifest.json").is_file(),
    "after validation": lambda run: any("valid_pitch_accuracy" in r and r["epoch"] == 1 for r in rows_of(run)),
    "after the best-model save": lambda run: (run / "best_model" / "model.safetensors").is_file(),
    "after the final save": lambda run: (run / "model.safetensors").is_file(),
}


@pytest.fixture(scope="module")
def finetune_straight(tmp_path_factory, mini_root):
    from hf_music_w2v.presets import preset_config

    root = tmp_path_factory.mktemp("finetune_kills")
    preset_config("wav2vec2-small", layerdrop=0.0).save_pretrained(root / "backbone")
    common = ["--model_name_or_path", str(root / "backbone"), "--random_init", "--nsynth_dir",
              str(mini_root / "nsynth"), "--max_train_samples", "40", "--max_eval_samples", "16",
              "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--num_train_epochs", "3",
              "--checkpointing_steps", "5", "--checkpoints_total_limit", "2", "--logging_steps", "1",
              "--final_dropout", "0.1", "--learning_rate", "1e-3", "--head_learning_rate", "3e-3",
              "--no_freeze_feature_encoder", "--report_to", "none"]
    result = run_program("finetune", [*common, "--output_dir", str(root / "straight")])
    assert result.returncode == 0, result.stderr[-3000:]
    return {"root": root, "common": common, "out": root / "straight"}


def comparable_results(run: Path) -> dict:
    results = json.loads((run / "all_results.json").read_text())
    return {k: v for k, v in results.items() if not k.endswith("_seconds")}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_finetuning_killed_at_each_boundary_resumes_to_the_same_run(tmp_path, finetune_straight, point):
    # 5 updates per epoch and a checkpoint every 5: checkpoints land on epoch ends and on the last update.
    import sys

    run = tmp_path / "killed"
    command = [sys.executable, "-m", "hf_music_w2v.training.finetune", *finetune_straight["common"],
               "--output_dir", str(run)]
    wait_and_kill(command, lambda: KILL_POINTS[point](run))
    assert not (run / "all_results.json").exists()
    resumed = run_program("finetune", [*finetune_straight["common"], "--output_dir", str(run),
                                       "--resume_from_checkpoint", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = finetune_straight["out"]
    assert rows_of(run) == rows_of(straight)  # every row once: no duplicate or missing validation
    assert comparable_results(run) == comparable_results(straight)
    results = comparable_results(run)
    assert (results["steps"], results["epochs"], results["skipped_updates"]) == (15, 3, 0)
    a, b = load_file(straight / "model.safetensors"), load_file(run / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)

    if point == "after the final save":  # resuming the finished run changes nothing (once is enough)
        again = run_program("finetune", [*finetune_straight["common"], "--output_dir", str(run),
                                         "--resume_from_checkpoint", "latest"])
        assert again.returncode == 0 and "holds a finished run" in again.stdout
        assert comparable_results(run) == results


PRETRAIN_KILL_POINTS = {
    "after an update": lambda run: any(r.get("step") == 3 for r in rows_of(run)),
    "after a checkpoint": lambda run: (run / "checkpoints" / "step_00000004" / "manifest.json").is_file(),
    "after the final save": lambda run: (run / "model.safetensors").is_file(),
}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(PRETRAIN_KILL_POINTS))
def test_pretraining_killed_at_each_boundary_resumes_to_the_same_run(tmp_path, straight, point):
    import sys

    run = tmp_path / "killed"
    args = [a if a != str(straight["out"]) else str(run) for a in straight["args"]]
    wait_and_kill([sys.executable, "-m", "hf_music_w2v.training.pretrain", *args],
                  lambda: PRETRAIN_KILL_POINTS[point](run))
    assert not (run / "all_results.json").exists()
    resumed = run_program("pretrain", [*args, "--resume_from_checkpoint", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_as_straight(run, straight)
    results = json.loads((run / "all_results.json").read_text())
    assert (results["steps"], results["skipped_updates"]) == (6, 0)


# A full disk: real small file systems (tmpfs, mounted by `small_disk`), not mocked errors.


def hidden_entries(folder: Path) -> list[Path]:
    """Temporary files and folders (their names start with a dot) anywhere under `folder`, the lock aside."""
    return [p for p in folder.rglob(".*") if p.name != ".run.lock"]


def fill(folder: Path) -> None:
    """Take all the space left on `folder`'s file system."""
    with (folder / "filler").open("wb", buffering=0) as file:
        try:
            while True:
                file.write(b"\0" * 4096)
        except OSError:
            pass


WRITERS = {
    "a text file": lambda path: write_text_atomic(path, "x" * 100_000),
    "a torch state": lambda path: torch_save({"state": torch.zeros(25_000)}, path),
    "a log line": lambda path: append_text(path, "x" * 100_000 + "\n"),
    "a model folder": lambda path: save_pretrained_atomic(classifier(), path),
    "a model among a run's files": lambda path: save_pretrained_into(classifier(), path),
    "an ONNX export": lambda path: export_onnx(classifier(), path),
}


def classifier():
    from hf_music_w2v import Wav2Vec2ForMusicClassification

    from .conftest import tiny_music_config

    torch.manual_seed(0)
    return Wav2Vec2ForMusicClassification(tiny_music_config(hidden_size=64, intermediate_size=256)).eval()


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_full_disk_raises_one_line_naming_the_file_and_keeps_the_old_version(small_disk, writer):
    disk = small_disk("256k")
    path = disk / ("out.onnx" if "ONNX" in writer else "out")
    old = disk / "old"
    old.write_text("the previous version")
    if writer == "a log line":
        path.write_text("a complete row\n")
    elif writer != "a model among a run's files":
        shutil.copy(old, path)
    fill(disk)
    with pytest.raises(DiskFull) as raised:
        WRITERS[writer](path)
    assert str(raised.value).startswith(f"{path}: no space left on device; free space")
    assert "\n" not in str(raised.value)
    assert hidden_entries(disk) == []  # no half-written temporary left behind
    if writer == "a log line":  # a torn last row, which a resume drops (test_a_torn_last_log_line_is_dropped...)
        assert path.read_text().startswith("a complete row\n")
    elif writer == "a model among a run's files":
        assert sorted(p.name for p in path.iterdir()) == []
    else:
        assert path.read_text() == "the previous version"


@pytest.mark.slow
def test_a_full_disk_at_a_checkpoint_is_one_line_and_freeing_space_resumes_to_the_same_run(small_disk, straight):
    from .conftest import resize_disk
    from .test_cli_errors import assert_one_error_line

    # Room for the settings, the log and two checkpoints of about 136 kB each: the third does not fit.
    disk = small_disk("320k")
    run = disk / "out"
    args = [a if a != str(straight["out"]) else str(run) for a in straight["args"]]
    full = run_program("pretrain", args)
    line = assert_one_error_line(full, f"{run / 'checkpoints' / 'step_00000006'}/", "no space left on device",
                                 f"the newest complete checkpoint, {run / 'checkpoints' / 'step_00000004'}, is intact",
                                 "--resume_from_checkpoint latest")
    assert "basic_ios" not in full.stderr and "unexpected pos" not in full.stderr, line
    assert [c.name for c in list_checkpoints(run)] == ["step_00000002", "step_00000004"]
    for checkpoint in list_checkpoints(run):
        verify_checkpoint(checkpoint)
    assert hidden_entries(run) == [] and not (run / "all_results.json").exists()

    resize_disk(disk, "2m")  # space freed
    resumed = run_program("pretrain", [*args, "--resume_from_checkpoint", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {run / 'checkpoints' / 'step_00000004'} at update 4" in resumed.stdout
    assert_same_as_straight(run, straight)


@pytest.mark.slow
def test_a_full_disk_while_filling_the_data_cache_is_one_line_naming_the_entry(small_disk, tmp_path, pretrain_args):
    from .test_cli_errors import assert_one_error_line

    cache = small_disk("64k")
    result = run_program("pretrain", pretrain_args(tmp_path / "out", 2, "--cache_dir", str(cache)))
    assert_one_error_line(result, str(cache), "no space left on device",
                          "no checkpoint was completed yet; free space on that file system (or give another "
                          "--output_dir or --cache_dir) and run the same command again")
    assert hidden_entries(cache) == []
