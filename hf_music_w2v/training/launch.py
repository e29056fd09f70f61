"""Starting the training programs under accelerate's launcher: `hf-music-w2v pretrain|finetune [--num_processes N]`.

The programs are package modules, so an installed package trains without a checkout:
`python -m hf_music_w2v.training.launch [accelerate launcher options] -m hf_music_w2v.training.pretrain ARGS`
runs accelerate's launcher in-process and turns a failed run into its exit status (the program has printed
its own `error:` line) instead of accelerate's `CalledProcessError` traceback; a run the kernel killed is
named as such, with what to try.
"""

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

PROGRAMS = {"pretrain": "hf_music_w2v.training.pretrain", "finetune": "hf_music_w2v.training.finetune"}
#: This module, run as the launcher (`python -m`).
LAUNCHER = "hf_music_w2v.training.launch"
#: What a training run interrupted by Ctrl-C says.
INTERRUPTED = ("interrupted: completed checkpoints are kept; the same command with --resume_from_checkpoint latest "
               "continues the run")


def launch_command(program: str, program_args: list[str], accelerate_config: str | None = None,
                   num_processes: int | None = None, cpu_threads: int | None = None) -> list[str]:
    """`accelerate launch` of a training program in this interpreter.

    With `accelerate_config`, that file decides (a `num_processes` given too overrides its count). Without
    one: `num_processes` local processes (default 1) on the GPUs if there are any, else on the CPU, with
    `cpu_threads` threads in all (default: this process's torch thread count) shared out between them.
    """
    command = [sys.executable, "-m", LAUNCHER]
    if accelerate_config:
        command += ["--config_file", accelerate_config]
        if num_processes:
            command += ["--num_processes", str(num_processes)]
    else:
        processes = num_processes or 1
        command += ["--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
                    "--dynamo_backend", "no"]
        if processes > 1:
            # On CPU too: accelerate starts CPU processes only through torchrun (see launch_environment).
            command.append("--multi_gpu")
        elif not torch.cuda.is_available():
            command.append("--cpu")
        threads = max(1, (cpu_threads or torch.get_num_threads()) // processes) if not torch.cuda.is_available() else 1
        command += ["--num_cpu_threads_per_process", str(threads)]
    return command + ["-m", PROGRAMS[program], *program_args]


def launch_environment() -> dict[str, str]:
    """The runs' environment: on a machine without GPUs, multi-process launches must use the CPU backend."""
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env.setdefault("ACCELERATE_USE_CPU", "true")
    return env


def launcher_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--accelerate_config", default=None)
    parser.add_argument("--num_processes", type=int, default=None)
    return parser


def check_accelerate_config(path: str) -> str | None:
    """Why the accelerate config at `path` cannot run here, or None: a GPU config on a machine without GPUs
    would otherwise start its processes on the CPU without a word."""
    import yaml

    try:
        config = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        return f"--accelerate_config {path}: not a readable accelerate config ({' '.join(str(error).split())})"
    if not isinstance(config, dict):
        return f"--accelerate_config {path}: not an accelerate config (expected a YAML mapping)"
    if config.get("gpu_ids") is not None and not config.get("use_cpu") and not torch.cuda.is_available():
        return (f"--accelerate_config {path}: a GPU config (gpu_ids: {config['gpu_ids']}), and no GPU is visible "
                "here; for CPU processes use training/accelerate_configs/cpu_2proc.yaml or --num_processes N")
    return None


def launch(program: str, argv: list[str]) -> int:
    """`hf-music-w2v pretrain|finetune ARGS`: split off the launcher's options, then become the launcher."""
    launcher, program_args = launcher_parser().parse_known_args(argv)
    if launcher.num_processes is not None and launcher.num_processes < 1:
        print("error: --num_processes must be >= 1", file=sys.stderr)
        return 2
    if "-h" in program_args or "--help" in program_args:
        module = __import__(PROGRAMS[program], fromlist=["main"])
        print(f"Launcher options (hf-music-w2v {program} only):\n  --accelerate_config FILE  an accelerate config "
              "(default: one local process, GPU if any)\n  --num_processes N         local processes (default 1, "
              "or the config's)\n")
        return module.main(program_args)
    problem = launcher.accelerate_config and check_accelerate_config(launcher.accelerate_config)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    command = launch_command(program, program_args, launcher.accelerate_config, launcher.num_processes)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(command[0], command, launch_environment())


def exit_status(code: int) -> int:
    """The launcher's exit status for a child's return code, saying why when a signal ended the child."""
    if code >= 0:
        return code
    number = -code
    reason = "most likely out of memory" if number == signal.SIGKILL else signal.Signals(number).name
    # The newline ends whatever line the killed process was writing (a progress bar, say).
    print(f"\nerror: the training process was killed by signal {number} ({reason}). Completed checkpoints are kept "
          "(--resume_from_checkpoint latest continues from the newest). With too little memory, try a smaller "
          "--per_device_train_batch_size (with --gradient_accumulation_steps to keep the update's size), shorter "
          "crops, or --recipe mini", file=sys.stderr)
    return 128 + number


def first_cause(codes: list[int]) -> int:
    """The return code that says why a multi-process run failed: a process killed by a signal other than SIGTERM
    (the kernel's SIGKILL), else one that exited with an error (it printed why), else a SIGTERM. When one process
    fails, torch's elastic agent sends SIGTERM to the others: their deaths are consequences, not the cause."""
    killed = [code for code in codes if code < 0 and code != -signal.SIGTERM]
    exited = [code for code in codes if code > 0]
    return min(killed) if killed else max(exited) if exited else min(codes)


def run_launcher(launcher_args: list[str]) -> int:
    """accelerate's `launch` with `launcher_args`, a failed run reported by its exit status, not a traceback."""
    import logging

    from accelerate.commands.launch import launch_command as accelerate_launch
    from accelerate.commands.launch import launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from .signals import forward_stop_signals

    args = launch_command_parser().parse_args(launcher_args)
    forward_stop_signals()  # a signal to the launcher stops the run as gracefully as one to the run itself
    # The processes print their own error line (and a bug's traceback); torch's elastic agent would add its
    # per-process failure log and summary to each of them.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        accelerate_launch(args)
    except KeyboardInterrupt:
        # Ctrl-C reached the training processes too (one process group): they say what happened.
        return 130
    except subprocess.CalledProcessError as error:
        return exit_status(error.returncode)
    except ChildFailedError as error:
        return exit_status(first_cause([failure.exitcode for failure in error.failures.values()]))
    return 0


__all__ = ["PROGRAMS", "exit_status", "first_cause", "launch", "launch_command", "launch_environment", "run_launcher"]


if __name__ == "__main__":
    sys.exit(run_launcher(sys.argv[1:]))
