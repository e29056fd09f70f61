"""Long runs as an operator runs them: extended after they finish, stopped by signals and resumed."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_music_w2v.training.checkpoints import list_checkpoints

from .conftest import program_env, run_program
from .test_cli_errors import assert_one_error_line, cli


def metric_rows(run: Path) -> list[dict]:
    path = run / "logs" / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line being written
            pass
    return rows


def test_a_finished_run_is_extended_from_its_last_checkpoint_and_never_shortened(tmp_path, pretrain_args):
    out = tmp_path / "out"
    first = run_program("pretrain", pretrain_args(out, 4, "--logging_steps", "1"))
    assert first.returncode == 0, first.stderr[-3000:]
    peak = json.loads((out / "run_settings.json").read_text())["learning_rate"]
    finished = (out / "all_results.json").read_text()

    # A raise that cannot lengthen the run (--max_train_steps 4 bounds it) is refused before anything changes, and
    # the run stays finished under its own settings.
    epochs = cli("pretrain", *pretrain_args(out, 4, "--logging_steps", "1", "--num_train_epochs", "1000",
                                            "--resume_from_checkpoint", "latest"))
    assert_one_error_line(epochs, "does not lengthen the run")
    assert (out / "all_results.json").read_text() == finished
    again = run_program("pretrain", pretrain_args(out, 4, "--logging_steps", "1", "--resume_from_checkpoint", "latest"))
    assert again.returncode == 0 and "holds a finished run" in again.stdout

    extended = run_program("pretrain", pretrain_args(out, 6, "--logging_steps", "1", "--resume_from_checkpoint",
                                                     "latest"))
    assert extended.returncode == 0, extended.stderr[-3000:]
    assert "extending the run" in extended.stdout and "max_train_steps 4 -> 6" in extended.stdout
    # The stated rule: the schedule of a 6-update run (2 warmup updates, then linear decay to 0) from update 5 on.
    assert f"extended at update 4 from 4 to 6 updates: the learning rate follows the schedule of a 6-update run " \
           f"from here ({peak * (6 - 4) / (6 - 2):.6g} at update 5)" in extended.stdout
    rows = [r for r in metric_rows(out) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]  # none repeated, none missing
    assert rows[3]["learning_rate"] == 0.0  # the first run had decayed to 0 at its end ...
    assert rows[4]["learning_rate"] == pytest.approx(peak * (6 - 5) / (6 - 2))  # ... the extension follows 6 updates
    results = json.loads((out / "all_results.json").read_text())
    assert results["steps"] == 6
    assert results["extensions"] == [{"at_step": 4, "from_updates": 4, "to_updates": 6}]
    assert json.loads((out / "logs" / "all_results.update_4.json").read_text())["steps"] == 4
    assert "extended at update 4 from 4 to 6 updates" in (out / "README.md").read_text()

    shorter = cli("pretrain", *pretrain_args(out, 5, "--logging_steps", "1", "--resume_from_checkpoint", "latest"))
    assert_one_error_line(shorter, "--max_train_steps 6", "can be extended, not shortened")
    assert json.loads((out / "all_results.json").read_text())["steps"] == 6

    # Without a checkpoint there is nothing to extend from: refused, nothing retrained from scratch.
    shutil.rmtree(out / "checkpoints")
    longer = cli("pretrain", *pretrain_args(out, 8, "--logging_steps", "1", "--resume_from_checkpoint", "latest"))
    assert_one_error_line(longer, "holds no checkpoint to extend the run from")
    assert json.loads((out / "all_results.json").read_text())["steps"] == 6


def start_run(args: list[str], **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hf_music_w2v.cli", "pretrain", *args], env=program_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def wait_for_update(process: subprocess.Popen, run: Path, step: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not any(r.get("step", 0) >= step for r in metric_rows(run)):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.01)


def stopped_checkpoint(stderr: str, name: str, run: Path) -> int:
    """The update the run says it stopped after (one line, no traceback), checked against the newest checkpoint and
    the log."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("stopped by")]
    assert len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith(f"stopped by {name} after update ") and "--resume_from_checkpoint latest" in lines[0]
    step = int(lines[0].split("after update ")[1].split(",")[0])
    assert int(list_checkpoints(run)[-1].name[5:]) == step
    assert max(r["step"] for r in metric_rows(run)) == step
    assert not (run / "all_results.json").exists()
    return step


@pytest.mark.slow
def test_ctrl_c_finishes_the_update_writes_a_checkpoint_and_the_resume_is_bit_identical(tmp_path, pretrain_args):
    steps = ["12", "--logging_steps", "1", "--checkpointing_steps", "1000"]
    straight = run_program("pretrain", pretrain_args(tmp_path / "straight", *steps))
    assert straight.returncode == 0, straight.stderr[-3000:]

    run = tmp_path / "stopped"
    # Ctrl-C: SIGINT to the whole process group, the launcher and the run alike (the launcher forwards it too).
    process = start_run(pretrain_args(run, *steps), start_new_session=True)
    wait_for_update(process, run, 3)
    started = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGINT, stderr[-3000:]
    assert time.monotonic() - started < 60
    step = stopped_checkpoint(stderr, "SIGINT", run)
    assert step < 12

    resumed = run_program("pretrain", [*pretrain_args(run, *steps), "--resume_from_checkpoint", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    keys = ("step", "loss", "grad_norm", "learning_rate")
    assert [{k: r[k] for k in keys} for r in metric_rows(run)] == \
           [{k: r[k] for k in keys} for r in metric_rows(tmp_path / "straight")]
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(run / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_sigterm_to_the_launcher_of_two_processes_stops_both_after_the_same_update(tmp_path, pretrain_args):
    run = tmp_path / "out"
    steps = ["12", "--logging_steps", "1", "--checkpointing_steps", "1000"]
    process = start_run(["--num_processes", "2", *pretrain_args(run, *steps)])
    wait_for_update(process, run, 2)
    process.send_signal(signal.SIGTERM)  # the launcher only, as `kill PID` or a scheduler's preemption sends it
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    step = stopped_checkpoint(stderr, "SIGTERM", run)
    assert step < 12 and "elastic" not in stderr
    # A mistake through the launcher of two processes is one line too, with none of torch elastic's failure logs.
    shorter = cli("pretrain", "--num_processes", "2", *pretrain_args(run, "10", "--logging_steps", "1",
                                                                      "--checkpointing_steps", "1000",
                                                                      "--resume_from_checkpoint", "latest"))
    assert_one_error_line(shorter, "can be extended, not shortened")
    assert "elastic" not in shorter.stderr, shorter.stderr
    resumed = cli("pretrain", "--num_processes", "2", *pretrain_args(run, *steps, "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["step"] for r in metric_rows(run)] == list(range(1, 13))


STOP_SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    from hf_music_w2v.training.signals import RunStopped, StopRequests

    with StopRequests() as stops:
        try:
            time.sleep(0.2)
            os.kill(os.getpid(), signal.SIGUSR1)  # not armed yet: stops at once
        except RunStopped as stop:
            print("unarmed", stop.exit_status, flush=True)
    with StopRequests() as stops:
        stops.armed = True
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # within the grace window: the same request
        print("armed", stops.signum, flush=True)
        time.sleep(float(sys.argv[1]))
        os.kill(os.getpid(), signal.SIGTERM)  # a second request: exits at once
        time.sleep(5)
        print("still running", flush=True)
""")


def test_a_second_signal_exits_at_once_and_one_ctrl_c_seen_twice_counts_once(tmp_path):
    from hf_music_w2v.training.signals import GRACE_SECONDS

    script = tmp_path / "stop.py"
    script.write_text(STOP_SCRIPT)
    result = subprocess.run([sys.executable, str(script), str(GRACE_SECONDS + 0.5)], capture_output=True, text=True,
                            env=program_env(), timeout=60)
    assert result.stdout.splitlines() == [f"unarmed {128 + signal.SIGUSR1}", f"armed {int(signal.SIGTERM)}"]
    assert result.returncode == 128 + signal.SIGTERM
    assert "SIGTERM again: exiting at once" in result.stderr


def test_a_multi_process_failure_is_named_by_its_cause_not_by_the_agents_teardown():
    from hf_music_w2v.training.launch import first_cause

    assert first_cause([1, -signal.SIGTERM]) == 1  # one process refused; the agent then sent SIGTERM to the other
    assert first_cause([-signal.SIGKILL, 1]) == -signal.SIGKILL  # the kernel's kill is the cause, whatever followed
    assert first_cause([128 + signal.SIGTERM, 128 + signal.SIGTERM]) == 128 + signal.SIGTERM  # a graceful stop
    assert first_cause([-signal.SIGTERM, -signal.SIGTERM]) == -signal.SIGTERM
