"""Where a run is (`TrainerState`) and its checkpoints: written whole or not at all, verified, never executed.

A checkpoint folder `checkpoints/step_N/` holds only formats that cannot run code when read:

    model.safetensors     the unwrapped model's weights
    optimizer.pt          the optimizer's state dict, read back with torch's weights-only loader
    scaler.json           the fp16 GradScaler's state (fp16 runs only)
    trainer_state.json    `TrainerState`
    manifest.json         every other file's size and SHA-256, written last

The learning-rate schedule is a function of the update count and is rebuilt on resume (so a `--learning_rate`
given on resume re-bases it); random generators are not saved because the engine reseeds them every update.
Resume verifies the checkpoint against its manifest before reading anything from it: `latest` falls back to
the newest intact checkpoint and says which file was bad; an explicit damaged checkpoint is an error naming
the file.
"""

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..atomic import DiskFull, disk_full_errno, replace_directory, torch_save, writing
from ..fingerprints import file_digest
from .layout import RunLayout

TRAINER_STATE_NAME = "trainer_state.json"
MANIFEST_NAME = "manifest.json"
MODEL_NAME = "model.safetensors"
OPTIMIZER_NAME = "optimizer.pt"
SCALER_NAME = "scaler.json"


class CheckpointError(RuntimeError):
    """A checkpoint is damaged, incomplete or not ours; the message names the file."""


@dataclass
class TrainerState:
    """Where a run is, saved in every checkpoint."""

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
    #: The run's length in updates when this state was saved (None in checkpoints from before it was recorded).
    max_steps: int | None = None
    #: Each resume that raised the length: {"at_step", "from_updates", "to_updates"}.
    extensions: list = field(default_factory=list)

    @classmethod
    def read(cls, checkpoint: Path) -> "TrainerState":
        path = Path(checkpoint) / TRAINER_STATE_NAME
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as error:
            raise CheckpointError(f"{path}: not a trainer state ({error})") from None


def checkpoint_path(output_dir: str | os.PathLike, step: int) -> Path:
    return RunLayout(output_dir).checkpoints / f"step_{step:08d}"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first (a folder counts once its manifest, written last, is in it)."""
    folder = RunLayout(output_dir).checkpoints
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("step_*") if (p / MANIFEST_NAME).is_file() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def write_manifest(folder: Path) -> None:
    files = {p.name: {"size": p.stat().st_size, "sha256": file_digest(p)}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST_NAME}
    (folder / MANIFEST_NAME).write_text(json.dumps({"format": 1, "files": files}, indent=2))


def verify_checkpoint(folder: Path) -> None:
    """Raise `CheckpointError` naming the first file that is missing, of another size or of other content."""
    manifest_path = folder / MANIFEST_NAME
    try:
        files = json.loads(manifest_path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{manifest_path}: missing or unreadable manifest ({error})") from None
    for required in (MODEL_NAME, OPTIMIZER_NAME, TRAINER_STATE_NAME):
        if required not in files:
            raise CheckpointError(f"{folder / required}: not listed in the manifest")
    for name, expected in files.items():
        path = folder / name
        if Path(name).name != name or not path.is_file():
            raise CheckpointError(f"{path}: missing")
        if path.stat().st_size != expected["size"]:
            raise CheckpointError(f"{path}: {path.stat().st_size} bytes, the manifest says {expected['size']} "
                                  "(truncated or replaced)")
        if file_digest(path) != expected["sha256"]:
            raise CheckpointError(f"{path}: its content does not match the manifest's checksum (damaged or replaced)")


def params_finite(model) -> bool:
    """True when every parameter of `model` is finite (one reduction, one sync)."""
    maxima = [p.detach().abs().amax().float() for p in model.parameters() if p.numel()]
    return bool(torch.isfinite(torch.stack(maxima)).all()) if maxima else True


def save_checkpoint(accelerator, output_dir: str | os.PathLike, state: TrainerState, keep_last: int | None,
                    model, optimizer) -> Path:
    """Write a checkpoint to a hidden folder, then rename it into place; older ones beyond `keep_last` go after.

    A crash in the middle leaves a hidden `.step_*.tmp` folder that is never resumed from; the previous
    checkpoints stay untouched. Called on every process; the main process writes (model and optimizer states
    are replicated across data-parallel processes).
    """
    unwrapped = accelerator.unwrap_model(model)
    if not params_finite(unwrapped):
        raise CheckpointError(f"refusing to write a checkpoint at update {state.step}: the model has non-finite "
                              "weights")
    target = checkpoint_path(output_dir, state.step)
    staging = target.with_name(f".{target.name}.tmp")
    accelerator.wait_for_everyone()
    full = None
    if accelerator.is_main_process:
        try:
            write_checkpoint_files(accelerator, staging, target, state, unwrapped, optimizer)
        except BaseException as error:
            shutil.rmtree(staging, ignore_errors=True)  # never resumed from, but it holds the space a resume needs
            if not isinstance(error, DiskFull):
                raise
            full = (error.filename, error.errno)
        else:
            replace_directory(staging, target)
            if keep_last:
                for old in list_checkpoints(output_dir)[:-keep_last]:
                    shutil.rmtree(old)
    if accelerator.num_processes > 1:  # every process stops together, not the main process alone
        from accelerate.utils import broadcast_object_list

        full = broadcast_object_list([full])[0]
    if full is not None:
        raise DiskFull(full[0], full[1])
    return target


def write_checkpoint_files(accelerator, staging: Path, target: Path, state: TrainerState, unwrapped, optimizer
                           ) -> None:
    """The files of checkpoint `target`, into the folder `staging`; a full disk is `DiskFull` naming the file."""
    from safetensors.torch import save_model

    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    with writing(target / MODEL_NAME):
        save_model(unwrapped, str(staging / MODEL_NAME))
    with writing(target / OPTIMIZER_NAME):
        torch_save(optimizer.state_dict(), staging / OPTIMIZER_NAME)
    texts = {TRAINER_STATE_NAME: json.dumps(asdict(state), indent=2)}
    if accelerator.scaler is not None:
        texts[SCALER_NAME] = json.dumps(accelerator.scaler.state_dict())
    for name, text in texts.items():
        with writing(target / name):
            (staging / name).write_text(text)
    with writing(target / MANIFEST_NAME):
        write_manifest(staging)


def disk_full_in_run(error: BaseException, output_dir: str | os.PathLike) -> DiskFull | None:
    """`error` as the one line a run in `output_dir` stopped by a full disk ends with: the file, the newest
    complete checkpoint and what to do; None when `error` is not about a full disk."""
    code = disk_full_errno(error)
    if code is None:
        return None
    checkpoints = list_checkpoints(output_dir)
    if checkpoints:
        advice = (f"the newest complete checkpoint, {checkpoints[-1]}, is intact; free space on that file system (or "
                  "lower --checkpoints_total_limit) and run the same command with --resume_from_checkpoint latest")
    else:
        advice = ("no checkpoint was completed yet; free space on that file system (or give another --output_dir or "
                  "--cache_dir) and run the same command again")
    return DiskFull(getattr(error, "filename", None) or f"a file under {output_dir}", code, advice)


def load_checkpoint(accelerator, checkpoint: Path, model, optimizer) -> TrainerState:
    """Read a verified checkpoint into `model` and `optimizer`; nothing in it can execute code."""
    import pickle

    from safetensors.torch import load_model

    try:
        load_model(accelerator.unwrap_model(model), str(checkpoint / MODEL_NAME), device=str(accelerator.device))
    except Exception as error:  # safetensors raises its own error types for damaged headers
        raise CheckpointError(f"{checkpoint / MODEL_NAME}: cannot be read as the model's weights ({error})") from None
    try:
        optimizer.load_state_dict(torch.load(checkpoint / OPTIMIZER_NAME, map_location="cpu", weights_only=True))
    except (pickle.UnpicklingError, RuntimeError, ValueError, KeyError, EOFError) as error:
        raise CheckpointError(f"{checkpoint / OPTIMIZER_NAME}: refused by torch's weights-only loader or not this "
                              f"optimizer's state ({str(error).splitlines()[0]})") from None
    if accelerator.scaler is not None and (checkpoint / SCALER_NAME).is_file():
        accelerator.scaler.load_state_dict(json.loads((checkpoint / SCALER_NAME).read_text()))
    return TrainerState.read(checkpoint)


def restore_checkpoint(accelerator, value: str | None, output_dir: str | os.PathLike, model, optimizer
                       ) -> TrainerState:
    """`--resume_from_checkpoint`: the trainer state of the checkpoint loaded, or a fresh one if there is none.

    With 'latest', a checkpoint that fails verification or loading is reported and the next older one is tried.
    """
    if value is None:
        return TrainerState()
    if value == "latest":
        candidates = list(reversed(list_checkpoints(output_dir)))
    else:
        candidates = [Path(value)]
        if not candidates[0].is_dir():
            raise SystemExit(f"error: --resume_from_checkpoint {value}: not a checkpoint folder")
    for checkpoint in candidates:
        try:
            verify_checkpoint(checkpoint)
            state = load_checkpoint(accelerator, checkpoint, model, optimizer)
        except CheckpointError as error:
            if value != "latest":
                raise SystemExit(f"error: cannot resume: {error}") from None
            accelerator.print(f"skipping a damaged checkpoint: {error}")
            continue
        accelerator.print(f"resumed from {checkpoint} at update {state.step}")
        return state
    if value == "latest":
        accelerator.print(f"no intact checkpoint in {output_dir}; starting from scratch")
    return TrainerState()


def reset_metrics_log(accelerator, path: str | os.PathLike, step: int) -> Path:
    """The run's JSON-lines metrics log, cut back to its rows up to `step`: a resumed run rewrites the rest.

    A torn last line (a crash or a full disk in the middle of a write) is dropped and reported; a damaged line
    elsewhere is an error naming the file and line.
    """
    from ..atomic import write_text_atomic

    path = Path(path)
    if accelerator.is_main_process:
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        kept = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                if number == len(lines):
                    accelerator.print(f"dropped the torn last line {number} of {path} (a write cut off by a crash)")
                    continue
                raise SystemExit(f"error: {path}:{number}: not a JSON row; fix or delete the log") from None
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
                kept.append(line)
        write_text_atomic(path, "".join(line + "\n" for line in kept))
    return path


__all__ = ["CheckpointError", "TRAINER_STATE_NAME", "TrainerState", "checkpoint_path", "disk_full_in_run",
           "list_checkpoints", "load_checkpoint", "params_finite", "reset_metrics_log", "restore_checkpoint",
           "save_checkpoint", "verify_checkpoint"]
