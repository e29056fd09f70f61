"""What a run folder holds, the keys of its results, and the lock that gives the folder to one run at a time.

    OUT/
      .run.lock             held (flock) by the run while it lives: pid, host, start time
      run_settings.json     the arguments of the run that owns the folder
      checkpoints/step_*/   resumable state (model.safetensors, optimizer.pt, trainer_state.json, manifest.json)
      logs/metrics.jsonl    one JSON row per logged update or evaluation
      logs/<name>/          tensorboard / wandb files
      best_model/           fine-tuning: the best epoch on valid
      features/             fine-tuning probe: cached pooled features
      widget/<head>/        fine-tuning: one standard audio-classification model per head
      model.safetensors, config.json, preprocessor_config.json, README.md, ...   the finished model
      all_results.json      written last, atomically: the run is finished once it exists

The training programs write through `RunLayout`; the demo and the report read through it.
"""

import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path

from ..atomic import write_text_atomic, writing

#: The two heads of the classifier, by the one name used in results keys, logits and labels.
HEADS = ("pitch", "instrument")
HEAD_TITLES = {"pitch": "pitch", "instrument": "instrument family"}
#: The valid score that picks a fine-tuning run's kept epoch, and the demo's best run.
SCORES = ("pitch_accuracy", "instrument_accuracy", "mean_accuracy")


def result_key(split: str, head: str, metric: str = "accuracy") -> str:
    """`test_pitch_accuracy`, `valid_instrument_macro_f1`, ...: the one spelling of a fine-tuning result."""
    return f"{split}_{head}_{metric}"


class OutputDirInUse(RuntimeError):
    """Another live run holds the output folder's lock."""


class OutputDirTaken(RuntimeError):
    """The output folder belongs to a run made with other settings."""


class RunLayout:
    """Paths of one run folder, and the operations that keep it consistent."""

    RESULTS = "all_results.json"
    SETTINGS = "run_settings.json"
    LOCK = ".run.lock"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._lock_handle = None
        self.extending: list[str] = []  # set by `claim`: the raised settings of a run being extended

    checkpoints = property(lambda self: self.root / "checkpoints")
    logs = property(lambda self: self.root / "logs")
    metrics = property(lambda self: self.root / "logs" / "metrics.jsonl")
    results = property(lambda self: self.root / self.RESULTS)
    settings = property(lambda self: self.root / self.SETTINGS)
    best_model = property(lambda self: self.root / "best_model")
    features = property(lambda self: self.root / "features")
    widget = property(lambda self: self.root / "widget")
    lock_file = property(lambda self: self.root / self.LOCK)

    #: Folders that are working state, never part of the published model.
    WORKING_DIRS = ("checkpoints", "features", "best_model", "widget")

    def is_finished(self) -> bool:
        return self.results.is_file()

    def read_results(self) -> dict:
        return json.loads(self.results.read_text())

    def write_results(self, results: dict) -> None:
        """The run's results, written atomically: call it last, after every model, export and card."""
        write_text_atomic(self.results, json.dumps(results, indent=2))

    def read_metrics(self) -> list[dict]:
        """The rows of the metrics log (none if there is no log yet)."""
        return read_jsonl(self.metrics)

    # The lock: one run per folder.
    def lock(self) -> str | None:
        """Take the folder's lock for this process's life; raise `OutputDirInUse` naming a live holder.

        The lock is an flock on OUT/.run.lock, which the kernel drops when its holder dies however it dies, so a
        lock left behind by a killed run is simply taken over; the previous holder is returned in that case
        (for a message), None otherwise.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        handle = open(self.lock_file, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise OutputDirInUse(f"{self.root} is in use by another run ({holder}); wait for it to finish, or "
                                 "give another --output_dir") from None
        handle.seek(0)
        previous = handle.read().strip() or None
        handle.seek(0)
        handle.truncate()
        with writing(self.lock_file):
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
            handle.flush()
        self._lock_handle = handle
        return previous

    def unlock(self) -> None:
        """Release the lock, emptying the holder line first: the next run then knows this one ended cleanly."""
        if self._lock_handle is not None:
            self._lock_handle.truncate(0)
            self._lock_handle.flush()
            self._lock_handle.close()
            self._lock_handle = None

    # Ownership: a folder holds one run's settings, checkpoints, logs and results.
    def claim(self, settings: dict, resuming: bool, overwrite: bool, operational: frozenset,
              extendable: frozenset = frozenset()) -> str | None:
        """Make the folder this run's, or raise `OutputDirTaken` saying why not; returns a note to print, if any.

        A folder with another run's state (checkpoints, logs or results) is refused unless the run resumes it
        with the same settings (those in `operational` may differ: logging, upload, resume flags) or
        `overwrite` is given, which deletes that state first; a folder without a checkpoint or results holds nothing
        to resume and is taken over the same way. A resume may raise the settings in `extendable` (the run's
        length), never lower them, when the folder holds a checkpoint to extend from; `self.extending` then says
        so, and the raised values are written by `start_extension` once the extended training really starts (so
        an extension stopped before that leaves the run as it was). The settings are then written to the folder.
        """
        from .checkpoints import list_checkpoints

        previous = json.loads(self.settings.read_text()) if self.settings.is_file() else None
        has_state = any(p.exists() for p in (self.checkpoints, self.metrics, self.results))
        nothing_resumable = not list_checkpoints(self.root) and not self.results.exists()
        if (has_state or previous is not None) and nothing_resumable and not overwrite:
            # A run that died before its first checkpoint (killed for memory, say) left only settings and logs:
            # nothing to resume and nothing lost, so it does not stand in a new run's way.
            overwrite = True
            note = (f"{self.root} held a run that wrote no checkpoint; its logs and settings are replaced by this "
                    "run's")
        else:
            note = None
        if overwrite:
            for path in (self.checkpoints, self.logs, self.best_model, self.features, self.widget):
                shutil.rmtree(path, ignore_errors=True)
            self.results.unlink(missing_ok=True)
        elif has_state or previous is not None:
            # A setting the previous file lacks was added to the programs after that run began: not compared.
            changed = sorted(
                f"{name} {previous.get(name)!r} -> {value!r}" for name, value in settings.items()
                if name not in operational and name in previous and previous[name] != value
                and not (name in extendable and previous[name] is not None and value is not None)
            ) if previous is not None else ["(no run_settings.json: made by another program or version)"]
            raised = sorted(
                f"{name} {previous[name]} -> {settings[name]}" for name in extendable
                if previous is not None and previous.get(name) is not None and settings.get(name) is not None
                and previous[name] != settings[name]
            )
            if not resuming:
                raise OutputDirTaken(
                    f"{self.root} already holds a run (checkpoints, logs or results). Resume it with "
                    "--resume_from_checkpoint latest, or start over with --overwrite_output_dir, or give another "
                    "--output_dir")
            if changed:
                raise OutputDirTaken(
                    f"{self.root} holds a run made with other settings ({'; '.join(changed)}); resuming would mix "
                    "the two. Resume with the same settings, or start over with --overwrite_output_dir, or give "
                    "another --output_dir")
            lowered = [name for name in sorted(extendable) if previous is not None and previous.get(name) is not None
                       and settings.get(name) is not None and settings[name] < previous[name]]
            if lowered:
                raise OutputDirTaken(
                    f"{self.root} holds a run of --{lowered[0]} {previous[lowered[0]]}; a run can be extended, not "
                    f"shortened (--{lowered[0]} {settings[lowered[0]]}). Give {previous[lowered[0]]} or more, or "
                    "start over with --overwrite_output_dir")
            if raised:
                if not list_checkpoints(self.root):
                    raise OutputDirTaken(
                        f"{self.root} holds no checkpoint to extend the run from ({'; '.join(raised)}); resume with "
                        "the same settings, or start over with --overwrite_output_dir")
                self.extending = raised
                note = f"extending the run in {self.root} from its newest checkpoint ({'; '.join(raised)})"
                settings = {**settings, **{name: previous[name] for name in extendable if name in previous}}
        write_text_atomic(self.settings, json.dumps(settings, indent=2, sort_keys=True))
        return note

    def start_extension(self, settings: dict) -> str | None:
        """The extended run starts: its raised settings are written, and a finished run's results move to
        `logs/all_results.update_N.json` (the run is no longer finished). Returns where they went, if anywhere."""
        write_text_atomic(self.settings, json.dumps(settings, indent=2, sort_keys=True))
        if not self.results.is_file():
            return None
        kept = self.logs / f"all_results.update_{self.read_results().get('steps', 'unknown')}.json"
        self.logs.mkdir(parents=True, exist_ok=True)
        os.replace(self.results, kept)
        return str(kept)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The rows of a JSON-lines log; a missing file gives no rows, blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


__all__ = ["HEADS", "HEAD_TITLES", "OutputDirInUse", "OutputDirTaken", "RunLayout", "SCORES", "read_jsonl",
           "result_key"]
