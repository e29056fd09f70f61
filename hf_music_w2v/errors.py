"""The command line's one error path: a mistake the user can fix is one `error: ...` line, a bug a traceback.

Every `hf-music-w2v` subcommand and training program runs through `report_user_errors`. Set
`HF_MUSIC_W2V_DEBUG=1` to get the full traceback of user errors too.
"""

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

DEBUG_VARIABLE = "HF_MUSIC_W2V_DEBUG"


class SettingsError(ValueError):
    """Options that cannot work, alone, together or with the data given (the message names them)."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that say what the user gave was wrong (files, folders, data, settings, the disk, the network).

    Imported here rather than at module level, so `--help` stays quick."""
    from .convert_fairseq import FairseqCheckpointError
    from .data.validation import DataError
    from .demo import DemoError
    from .probing import ProbeError
    from .training.checkpoints import CheckpointError
    from .training.engine import TrainingDiverged
    from .training.layout import OutputDirInUse, OutputDirTaken

    return (SettingsError, DataError, DemoError, ProbeError, CheckpointError, TrainingDiverged, OutputDirInUse,
            OutputDirTaken, FairseqCheckpointError, OSError)


@contextmanager
def naming(option: str, value: object) -> Iterator[None]:
    """An `OSError` inside (a missing file, a folder without weights, the Hub unreachable) is raised again naming
    `option value`, which transformers' loading errors do not."""
    try:
        yield
    except OSError as error:
        raise OSError(f"{option} {value}: {error}") from error


def debugging() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "").lower() in ("1", "true", "yes")


def close_progress_bars() -> None:
    """Close the live tqdm bars, so that a message after them starts on its own line (an open bar has none)."""
    tqdm = sys.modules.get("tqdm")
    if tqdm is not None:
        for bar in list(getattr(tqdm.tqdm, "_instances", ())):  # tqdm's registry of live bars (not public API)
            bar.close()


def report_user_errors(main: Callable[[], int], interrupted: str = "interrupted") -> int:
    """Run `main`; a user error becomes one `error:` line on stderr and exit status 1, Ctrl-C the line
    `interrupted` and exit status 130, a training run stopped by a signal its own line and 128 + the signal."""
    from .training.signals import RunStopped

    try:
        return main()
    except RunStopped as stop:
        if stop.message:
            print(f"\n{stop.message}", file=sys.stderr)
        return stop.exit_status
    except KeyboardInterrupt:
        if debugging():
            raise
        print(f"\n{interrupted}", file=sys.stderr)
        return 130
    except user_error_types() as error:
        if debugging():
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        close_progress_bars()
        print(f"error: {message}", file=sys.stderr)
        return 1


__all__ = ["DEBUG_VARIABLE", "SettingsError", "debugging", "naming", "report_user_errors", "user_error_types"]
