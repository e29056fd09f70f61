"""Where a run is (`TrainerState`) and its checkpoints: saved whole or not at all, resumed exactly."""

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..atomic import replace_directory
from .layout import RunLayout

TRAINER_STATE_NAME = "trainer_state.json"


@dataclass
class TrainerState:
    """Where a run is, saved next to accelerate's state in every checkpoint."""

    step: int = 0
    epoch: int = 0
    micro_batches_in_epoch: int = 0
    skipped_updates: int = 0
    audio_seconds_seen: float = 0.0
    train_seconds: float = 0.0
    best_score: float | None = None
    best_epoch: int | None = None
    best_metrics: dict = field(default_factory=dict)
    epochs_evaluated: list = field(default_factory=list)
    last_metrics: dict = field(default_factory=dict)

    @classmethod
    def read(cls, checkpoint: Path) -> "TrainerState":
        return cls(**json.loads((Path(checkpoint) / TRAINER_STATE_NAME).read_text()))


def checkpoint_path(output_dir: str | os.PathLike, step: int) -> Path:
    return RunLayout(output_dir).checkpoints / f"step_{step:08d}"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first (a folder counts once its trainer state is in it)."""
    folder = RunLayout(output_dir).checkpoints
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("step_*") if (p / TRAINER_STATE_NAME).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def resolve_checkpoint(value: str | None, output_dir: str | os.PathLike) -> Path | None:
    """`--resume_from_checkpoint`: None, 'latest' (the newest in output_dir, or None if there is none) or a path."""
    if value is None:
        return None
    if value == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(value)
    if not (path / TRAINER_STATE_NAME).is_file():
        raise FileNotFoundError(f"--resume_from_checkpoint {value}: not a checkpoint folder (no {TRAINER_STATE_NAME})")
    return path


def save_checkpoint(accelerator, output_dir: str | os.PathLike, state: TrainerState, keep_last: int | None) -> Path:
    """`accelerator.save_state` plus the trainer state, written to a hidden folder and renamed into place.

    A crash in the middle leaves a hidden `.step_*.tmp` folder that is never resumed from; the previous
    checkpoints stay untouched. Only then are checkpoints beyond the newest `keep_last` deleted. Called on
    every process.
    """
    target = checkpoint_path(output_dir, state.step)
    staging = target.with_name(f".{target.name}.tmp")
    if accelerator.is_main_process:
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (staging / TRAINER_STATE_NAME).write_text(json.dumps(asdict(state), indent=2))
        replace_directory(staging, target)
        if keep_last:
            for old in list_checkpoints(output_dir)[:-keep_last]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return target


def restore_checkpoint(accelerator, value: str | None, output_dir: str | os.PathLike) -> TrainerState:
    """`--resume_from_checkpoint`: load accelerate's state and return the trainer state saved with it.

    A fresh `TrainerState` when there is nothing to resume from.
    """
    checkpoint = resolve_checkpoint(value, output_dir)
    if checkpoint is None:
        if value == "latest":
            accelerator.print(f"no checkpoint in {output_dir}; starting from scratch")
        return TrainerState()
    accelerator.load_state(str(checkpoint))
    state = TrainerState.read(checkpoint)
    accelerator.print(f"resumed from {checkpoint} at update {state.step}")
    return state


def reset_metrics_log(accelerator, path: str | os.PathLike, step: int) -> Path:
    """The run's JSON-lines metrics log, cut back to its entries up to `step`: a resumed run rewrites the rest."""
    path = Path(path)
    if accelerator.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step] \
            if path.exists() else []
        path.write_text("".join(line + "\n" for line in kept))
    return path


__all__ = ["TRAINER_STATE_NAME", "TrainerState", "checkpoint_path", "list_checkpoints", "reset_metrics_log",
           "resolve_checkpoint", "restore_checkpoint", "save_checkpoint"]
