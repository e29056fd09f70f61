"""How a run stops when it is asked to: SIGTERM (a scheduler's preemption), SIGINT (Ctrl-C) or SIGUSR1.

In the training loop the first such signal is a request: the run finishes the update it is in, writes a
checkpoint, prints one line saying how to resume, and exits with status 128 + the signal's number (143 for
SIGTERM, 130 for SIGINT, 138 for SIGUSR1). With several processes, every process stops after the same update
(the request is agreed on by a reduction after each update). A second signal, more than `GRACE_SECONDS` after
the first, exits at once with the same status; completed checkpoints are kept. One Ctrl-C reaches both the
launcher and the run (one process group), and the launcher forwards what it receives, so signals closer together
than that count once.

Before the first update and after the last one there is no update to finish: a signal then stops the run at
once (`RunStopped`), and the atomic writes leave nothing half-written.

The launcher (`hf_music_w2v.training.launch`) forwards these signals to the training processes it started, so
`kill -TERM <launcher pid>` stops a run as gracefully as a signal to the run itself.
"""

import os
import signal
import sys
import time
from pathlib import Path

#: The signals that ask a run to stop.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
#: Signals closer together than this count as one request (Ctrl-C reaches the run directly and through the launcher).
GRACE_SECONDS = 2.0


def exit_status(signum: int) -> int:
    """The status of a run stopped by signal `signum`: 128 + its number, as a shell reports a signal's end."""
    return 128 + signum


class RunStopped(Exception):
    """The run stopped on a signal; `message` (empty on all but the main process) says how to go on."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message)
        self.signum, self.message = signum, message

    @property
    def exit_status(self) -> int:
        return exit_status(self.signum)


class StopRequests:
    """Signal handlers for one run: `with StopRequests() as stops:` installs them, leaving restores the old ones.

    While `stops.armed` (the training loop) the first signal only sets `stops.signum`; otherwise it raises
    `RunStopped` where the run is.
    """

    def __init__(self):
        self.signum: int | None = None
        self.first_at = 0.0
        self.armed = False
        self.previous = {}

    def __enter__(self) -> "StopRequests":
        for number in STOP_SIGNALS:
            self.previous[number] = signal.signal(number, self.handle)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    def handle(self, signum: int, frame) -> None:
        now = time.monotonic()
        if self.signum is not None:
            if now - self.first_at < GRACE_SECONDS:
                return
            print(f"\n{signal.Signals(signum).name} again: exiting at once; completed checkpoints are kept",
                  file=sys.stderr, flush=True)
            os._exit(exit_status(signum))
        self.signum, self.first_at = signum, now
        if not self.armed:
            main = os.environ.get("RANK", "0") == "0"
            raise RunStopped(signum, f"stopped by {signal.Signals(signum).name} outside the training updates; "
                                     "completed checkpoints are kept, and the same command with "
                                     "--resume_from_checkpoint latest continues the run" if main else "")

    def agreed(self, accelerator) -> int | None:
        """The signal every process stops on after this update, or None: one process's request stops them all."""
        if accelerator.num_processes == 1:
            return self.signum
        import torch

        agreed = accelerator.reduce(torch.tensor(self.signum or 0, device=accelerator.device), reduction="max")
        return int(agreed) or None


def child_processes(pid: int | None = None) -> list[int]:
    """The processes whose parent is `pid` (default: this one), from /proc (Linux); empty where there is none."""
    pid = os.getpid() if pid is None else pid
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name (field 2) is in parentheses and may hold spaces; the parent pid follows it.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def forward_stop_signals() -> None:
    """In the launcher: pass each stop signal on to the training processes, and keep waiting for them."""

    def forward(signum: int, frame) -> None:
        for child in child_processes():
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    for number in STOP_SIGNALS:
        signal.signal(number, forward)
    # torch's elastic agent (multi-process launches) would otherwise take SIGTERM and SIGINT over, and kill the
    # processes 30 s later whatever they were writing. torchrun reads its --signals_to_handle from PET_*.
    os.environ["PET_SIGNALS_TO_HANDLE"] = os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = "SIGHUP,SIGQUIT"


__all__ = ["GRACE_SECONDS", "RunStopped", "STOP_SIGNALS", "StopRequests", "child_processes", "exit_status",
           "forward_stop_signals"]
