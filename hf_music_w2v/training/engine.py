"""The training loop, once, for pretraining and fine-tuning alike.

A `TrainingTask` supplies what differs (data, model, one update, evaluation, outputs); `train` does the rest
in one readable order: model -> accelerator -> Hub checked (`--push_to_hub`) -> output folder claimed -> data ->
optimizer and schedule -> prepare -> resume (or extend) -> loop -> outputs -> results (last) -> upload.

Extending: a run resumed with a higher --max_train_steps or --num_train_epochs continues from its newest
checkpoint, finished or not. Its learning rate then follows the warmup-and-linear-decay schedule of the new
length from the update it resumes at, as if it had been planned that long from the start (what fairseq's
--max-update and the Trainer's max_steps do): a finished run's rate, decayed to 0, rises to that schedule's
value, with no second warmup unless the new warmup reaches past the resume point. The resume says so with the
rate of its first update; the results and the model card record each extension.

Stopping: SIGTERM, SIGINT or SIGUSR1 finish the update in progress, write a checkpoint and exit with status
128 + the signal's number (`signals.py`).

Exactness: every update reseeds torch's and numpy's global generators from (seed, epoch, micro-batch,
process), the data order comes from `UpdateBatchSampler`, and the checkpoint of an update is written after
everything that update triggers (evaluation, best model, epoch end), so a run resumed from any checkpoint
computes exactly what the uninterrupted run did.
"""

import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import islice

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, broadcast_object_list
from torch.utils.data import Sampler
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from ..allocator import keep_freed_memory
from ..atomic import append_text
from ..errors import SettingsError
from ..hub import HubError, check_hub_access, push_run, run_repo_ids
from ..precision import bf16_is_native
from .arguments import EXTENDABLE, OPERATIONAL, RunArguments
from .checkpoints import (
    TrainerState,
    disk_full_in_run,
    params_finite,
    reset_metrics_log,
    restore_checkpoint,
    save_checkpoint,
)
from .layout import OutputDirInUse, OutputDirTaken, RunLayout
from .signals import RunStopped, StopRequests

logger = get_logger(__name__)


def seeded_generator(*key: int) -> torch.Generator:
    """A CPU generator whose seed is a hash of the integers in `key` (e.g. seed, epoch, example index)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0] >> 1))


class UpdateBatchSampler(Sampler[list[int]]):
    """One process's micro-batches of one epoch, in an order fixed by `seed` and `epoch`.

    The epoch's permutation of the examples is cut into global micro-batches of `batch_size * num_processes`;
    process `p` takes the p-th slice of each. So 2 processes x batch B see the same examples per update as
    1 process x 2B, and accumulating 4 micro-batches of B sees those of one batch of 4B. Examples that do not
    fill a whole update are dropped. `start` skips micro-batches already consumed (resume).
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int, epoch: int, num_processes: int = 1,
                 process_index: int = 0, accumulation_steps: int = 1, start: int = 0):
        self.num_examples, self.batch_size, self.seed, self.epoch = num_examples, batch_size, seed, epoch
        self.num_processes, self.process_index, self.start = num_processes, process_index, start
        per_update = batch_size * num_processes * accumulation_steps
        self.micro_batches = (num_examples // per_update) * accumulation_steps
        if self.micro_batches == 0:
            raise SettingsError(
                f"{num_examples} training examples are fewer than one update needs ({per_update} = batch size "
                f"{batch_size} x {num_processes} processes x {accumulation_steps} accumulation steps)"
            )

    def __len__(self) -> int:
        return self.micro_batches - self.start

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.num_examples, generator=seeded_generator(self.seed, self.epoch)).tolist()
        global_size = self.batch_size * self.num_processes
        for micro in range(self.start, self.micro_batches):
            first = micro * global_size + self.process_index * self.batch_size
            yield order[first : first + self.batch_size]


@dataclass
class UpdateResult:
    """What one optimizer update did: whether it was skipped, and the metrics it logs."""

    skipped: bool
    loss: float
    metrics: dict = field(default_factory=dict)


def step_if_finite(accelerator, optimizer, loss: float, grad_norm: float) -> bool:
    """Take the optimizer step unless the loss or gradient norm is non-finite; clear gradients; True if skipped.

    Under fp16 the GradScaler decides (it skips steps whose gradients overflowed).
    """
    if accelerator.scaler is not None:
        optimizer.step()
        skipped = accelerator.optimizer_step_was_skipped or not math.isfinite(loss)
    else:
        skipped = not (math.isfinite(loss) and math.isfinite(grad_norm))
        if not skipped:
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return skipped


def no_sync_unless_last(accelerator, model, index: int, count: int):
    """Gradients synchronise across processes only on the last micro-batch of an update."""
    return nullcontext() if index == count - 1 else accelerator.no_sync(model)


class TrainingDiverged(RuntimeError):
    """Raised after too many consecutive updates with a non-finite loss or gradient."""


class NonFiniteGuard:
    """Counts skipped updates and gives up after `max_consecutive` in a row."""

    def __init__(self, max_consecutive: int, total: int = 0):
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total = total

    def update(self, skipped: bool, step: int) -> None:
        if not skipped:
            self.consecutive = 0
            return
        self.consecutive += 1
        self.total += 1
        logger.warning(f"non-finite loss or gradient before update {step + 1}: update skipped "
                       f"({self.consecutive} in a row, {self.total} in all)")
        if self.consecutive >= self.max_consecutive:
            raise TrainingDiverged(
                f"{self.consecutive} consecutive updates had a non-finite loss or gradient norm; stopping at update "
                f"{step}. The last checkpoint was written before this and is intact. Lower --learning_rate, raise "
                f"--warmup_steps or use bf16 instead of fp16, then resume with --resume_from_checkpoint latest."
            )


def check_launch(accelerator) -> None:
    """Refuse to run when the launcher started more processes than accelerate joined into one job.

    On a CPU-only machine a multi-process accelerate config that goes through torchrun (MULTI_GPU) without
    ACCELERATE_USE_CPU=true leaves every process alone in a job of one: each would train on all the data and
    write the same output folder, racing the others.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise SystemExit(
            f"error: the launcher started {launched} processes but accelerate set up a job of "
            f"{accelerator.num_processes}, so each would train alone and overwrite the others' output. On a "
            "machine without GPUs set ACCELERATE_USE_CPU=true for a multi-process launch (README, 'Training').")


def resolve_mixed_precision(requested: str, use_cpu: bool) -> str:
    """`--mixed_precision auto`: the launcher's fp16, bf16 or fp8 if it set one, else bf16 where native, else no.

    The launcher's "no" does not count (it is accelerate's default, and what `hf-music-w2v pretrain` passes);
    `--mixed_precision no` asks for fp32.
    """
    if requested != "auto":
        return requested
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if launcher in ("fp16", "bf16", "fp8"):
        return launcher
    device = torch.device("cuda" if torch.cuda.is_available() and not use_cpu else "cpu")
    return "bf16" if bf16_is_native(device) else "no"


def build_optimizer(parameter_groups: list[dict], run: RunArguments) -> torch.optim.AdamW:
    """AdamW with the run's settings and kernel (`--adamw_implementation`)."""
    kernel = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}
    return torch.optim.AdamW(parameter_groups, lr=run.learning_rate, betas=(run.adam_beta1, run.adam_beta2),
                             eps=run.adam_epsilon, weight_decay=run.weight_decay, **kernel[run.adamw_implementation])


def run_summary(state: TrainerState) -> dict:
    """The results every run reports, whatever it trained (`extensions`: when a resume raised its length)."""
    return {"steps": state.step, "epochs": state.epoch, "skipped_updates": state.skipped_updates,
            "train_seconds": state.train_seconds, "extensions": state.extensions}


def extension_text(extensions: list[dict]) -> str:
    """'extended at update 200 from 200 to 300 updates', joined: how results, cards and logs name extensions."""
    return "; ".join(f"extended at update {e['at_step']} from {e['from_updates']} to {e['to_updates']} updates"
                     for e in extensions)


class TrainingTask:
    """What a training program gives the engine. Subclasses fill in the methods; `train` calls them in order."""

    name = "train"  # the program's name: tracker project, progress bar
    streaming = False  # True when the epoch's length is unknown until the data runs out
    evaluates = False  # True when `evaluate` scores each epoch (and the best epoch is kept)
    widget_heads: tuple[str, ...] = ()  # heads exported to widget/<head>/, each pushed to its own repository

    def __init__(self, args, run: RunArguments, argv: list[str]):
        self.args, self.run, self.argv = args, run, argv

    def settings(self) -> dict:
        raise NotImplementedError

    def build_model(self) -> torch.nn.Module:
        """The model, built right after `torch.manual_seed(seed)` (so its initial weights follow the seed)."""
        raise NotImplementedError

    @property
    def find_unused_parameters(self) -> bool:
        return False

    def load_data(self, accelerator) -> None:
        """Read the datasets; the main process goes first (it fills the caches), so no collectives in here."""
        raise NotImplementedError

    def prepare_data(self, accelerator) -> None:
        """Work on the loaded data that every process does together (e.g. a feature pass that gathers)."""

    def micro_batches_per_epoch(self, accelerator) -> int | None:
        """Micro-batches of one epoch on each process (None when streaming)."""
        raise NotImplementedError

    def micro_batches(self, accelerator, epoch: int, start: int) -> Iterator[dict]:
        """The epoch's model inputs on the device, one dict per micro-batch, from micro-batch `start` on."""
        raise NotImplementedError

    def parameter_groups(self, model) -> list[dict]:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def audio_seconds_per_update(self, accelerator) -> float | None:
        return None

    def compile_model(self, model) -> None:
        """`--torch_compile`: compile the model in place (parameter names, and so checkpoints, stay the same)."""
        model.compile()

    def before_update(self, model, state: TrainerState) -> None:
        """Anything the model needs before update `state.step + 1` (e.g. a temperature schedule)."""

    def update(self, accelerator, model, optimizer, micro_batches: list[dict], state: TrainerState) -> UpdateResult:
        raise NotImplementedError

    def evaluate(self, accelerator, model) -> tuple[dict, float]:
        """(metrics, score) on valid; higher scores are better."""
        raise NotImplementedError

    def save_best(self, accelerator, model) -> None:
        """Keep the current weights as the best so far."""

    def finish(self, accelerator, model, state: TrainerState, layout: RunLayout) -> dict:
        """Write the model and its exports and card; return the results (written after this, last).

        Called on every process (evaluation may gather across them); the main process's results count.
        """
        raise NotImplementedError


def on_main_process(accelerator, action, errors: tuple[type[BaseException], ...]) -> None:
    """Run `action` on the main process alone; if it raises one of `errors`, every process stops with its message."""
    message = None
    if accelerator.is_main_process:
        try:
            action()
        except errors as error:
            message = " ".join(str(error).split())
    message = broadcast_object_list([message])[0] if accelerator.num_processes > 1 else message
    if message:
        raise SystemExit(f"error: {message}" if accelerator.is_main_process else 1)  # one line, not one per process


def claim_output_dir(accelerator, layout: RunLayout, task: TrainingTask) -> bool:
    """Lock the output folder for this run and check it holds no other run; every process stops on failure.
    True on every process when the run is being extended (a resume raised its length)."""
    def claim() -> None:
        previous = layout.lock()
        if previous and "pid" in previous:
            accelerator.print(f"took over the lock of {layout.root} from a run that is gone ({previous})")
        note = layout.claim(task.settings(), resuming=task.run.resume_from_checkpoint is not None,
                            overwrite=task.run.overwrite_output_dir, operational=OPERATIONAL,
                            extendable=EXTENDABLE)
        if note:
            accelerator.print(note)

    on_main_process(accelerator, claim, (OutputDirInUse, OutputDirTaken))
    extending = bool(layout.extending)
    return broadcast_object_list([extending])[0] if accelerator.num_processes > 1 else extending


def check_hub(accelerator, task: TrainingTask) -> None:
    """`--push_to_hub`: the Hub, the token and the repositories are checked before the output folder is claimed
    and any data is read, so an upload that cannot work fails now, not after training."""
    def check() -> None:
        user = check_hub_access(run_repo_ids(task.run.hub_model_id, task.widget_heads), task.run.hub_token)
        accelerator.print(f"the Hub takes the upload: {task.run.hub_model_id} is writable by {user}")

    on_main_process(accelerator, check, (HubError,))


def push(accelerator, layout: RunLayout, run: RunArguments) -> None:
    """Upload the finished run (`--push_to_hub`), as `hf-music-w2v push` would."""
    for url in push_run(layout.root, run.hub_model_id, token=run.hub_token):
        accelerator.print(f"pushed to {url}")


#: The trackers `--report_to` takes, and the package each needs.
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb"}


def check_trackers(report_to: str | list) -> None:
    """`--report_to`: a known tracker whose package is installed, before any work starts."""
    import importlib.util

    names = list(TRACKERS) if report_to == "all" else [report_to] if isinstance(report_to, str) else report_to
    for name in names:
        if name not in TRACKERS:
            raise SettingsError(f"--report_to {name}: not a tracker this package logs to (one of "
                                f"{', '.join(TRACKERS)}, all or none)")
        if report_to != "all" and importlib.util.find_spec(TRACKERS[name]) is None:
            raise SettingsError(f"--report_to {name}: the {TRACKERS[name]} package is not installed (pip install "
                                f"{TRACKERS[name]}, or --report_to none)")


def train(task: TrainingTask) -> int:
    """Run `task` from start (or its checkpoint) to its results; returns the exit status."""
    layout = RunLayout(task.run.output_dir)
    try:
        with StopRequests() as stops:
            return train_in(task, layout, stops)
    except HubError:
        raise  # its own line says how to retry the upload
    except Exception as error:  # a full disk under any writer (trackers too): one line naming the newest checkpoint
        full = disk_full_in_run(error, layout.root)
        if full is None:
            raise
        raise full from None
    finally:
        # Released cleanly, the lock names no holder, so only a run that died holding it is reported as gone.
        layout.unlock()


def train_in(task: TrainingTask, layout: RunLayout, stops: StopRequests) -> int:
    """`train`, with the output folder's layout (whose lock `train` releases however this ends) and the run's
    signal handlers (armed during the loop)."""
    run = task.run
    keep_freed_memory()  # audio buffers and activations are reused, not page-faulted in afresh (allocator.py)

    # Model first, right after the seed: the initial weights are the same on every process and every resume.
    torch.manual_seed(run.seed)
    model = task.build_model()
    report_to = [] if run.report_to == "none" else run.report_to
    check_trackers(report_to)
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes")
    # Recorded resolved in run_settings.json, so a resume where "auto" means something else is refused, not mixed.
    run.mixed_precision = resolve_mixed_precision(run.mixed_precision, use_cpu)
    accelerator = Accelerator(
        mixed_precision=run.mixed_precision,
        log_with=report_to or None,
        project_config=ProjectConfiguration(project_dir=str(layout.root), logging_dir=str(layout.logs)),
        # layerdrop skips whole layers, whose parameters then get no gradient; DDP must be told to expect that.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=task.find_unused_parameters)],
    )
    check_launch(accelerator)
    if run.push_to_hub:
        check_hub(accelerator, task)
    extending = claim_output_dir(accelerator, layout, task)
    if layout.is_finished() and run.resume_from_checkpoint is not None and not extending:
        if not run.push_to_hub:
            accelerator.print(f"{layout.root} holds a finished run ({layout.RESULTS}); nothing to do")
            return 0
        # A run whose upload failed is finished: resuming it with --push_to_hub uploads it.
        accelerator.print(f"{layout.root} holds a finished run ({layout.RESULTS}); nothing to train, uploading it")
        if accelerator.is_main_process:
            push(accelerator, layout, run)
        return 0
    accelerator.print(f"{task.name} on {accelerator.num_processes} process(es), device {accelerator.device}, "
                      f"mixed precision {accelerator.mixed_precision}")

    with accelerator.main_process_first():
        task.load_data(accelerator)
    task.prepare_data(accelerator)
    accumulation = run.gradient_accumulation_steps
    per_epoch = task.micro_batches_per_epoch(accelerator)
    if per_epoch is None and run.max_train_steps is None:
        raise SystemExit("error: --streaming needs --max_train_steps (the number of examples is not known in advance)")
    max_steps = run.max_train_steps or run.num_train_epochs * (per_epoch // accumulation)
    # The updates this run makes at most: the other bound may stop it before max_steps.
    length = min(max_steps, run.num_train_epochs * (per_epoch // accumulation)) if per_epoch else max_steps

    optimizer = build_optimizer(task.parameter_groups(model), run)
    learning_rates = [group["lr"] for group in optimizer.param_groups]
    if run.torch_compile:
        task.compile_model(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)

    state = restore_checkpoint(accelerator, run.resume_from_checkpoint, layout.root, model, optimizer)
    if extending and (state.step == 0 or (state.max_steps is not None and length <= state.max_steps)):
        raise SettingsError(
            f"{layout.root}: " + ("no intact checkpoint to extend the run from" if state.step == 0 else
                                  f"the raised setting does not lengthen the run ({state.max_steps} updates, bounded "
                                  "by the other of --max_train_steps and --num_train_epochs: raise that one too)"))
    extended = state.max_steps is not None and length > state.max_steps
    if extended:
        state.extensions.append({"at_step": state.step, "from_updates": state.max_steps, "to_updates": length})
        if state.micro_batches_in_epoch and state.epoch in state.epochs_evaluated:
            state.epochs_evaluated.remove(state.epoch)  # the run stopped mid-epoch: score the epoch at its new end
    elif state.max_steps is not None and length < state.max_steps and state.step > length:
        raise SettingsError(f"{layout.root} is at update {state.step}, past the {length} updates these settings "
                            "give; a run can be extended, not shortened")
    state.max_steps = length
    # The schedule is a function of the update count, rebuilt at the restored update from this run's learning
    # rates (so a rate given on resume re-bases it). It is stepped here rather than by accelerate, which would
    # step it once per process and so change the schedule with the number of processes.
    for group, rate in zip(optimizer.param_groups, learning_rates):
        group["initial_lr"] = rate
    scheduler = get_linear_schedule_with_warmup(optimizer, run.warmup(max_steps), max_steps,
                                                last_epoch=state.step - 1)
    if extended:
        accelerator.print(f"{extension_text(state.extensions[-1:])}: the learning rate follows the schedule of a "
                          f"{max_steps}-update run from here ({scheduler.get_last_lr()[0]:.6g} at update "
                          f"{state.step + 1})")
    metrics_path = reset_metrics_log(accelerator, layout.metrics, state.step)
    if report_to:
        accelerator.init_trackers(task.name, config={k: v for k, v in task.settings().items()
                                                     if isinstance(v, (int, float, str, bool))})

    def log(metrics: dict) -> None:
        if report_to:
            accelerator.log({k: v for k, v in metrics.items() if k != "step"}, step=metrics["step"])
        if accelerator.is_main_process:
            append_text(metrics_path, json.dumps(metrics) + "\n")

    def evaluate() -> None:
        metrics, score = task.evaluate(accelerator, model)
        state.epochs_evaluated.append(state.epoch)
        log({"step": state.step, "epoch": state.epoch, **metrics})
        if state.best_score is None or score > state.best_score:
            state.best_score, state.best_epoch, state.best_metrics = score, state.epoch, metrics
            task.save_best(accelerator, unwrapped)

    def stop(error: Exception) -> None:
        accelerator.end_training()
        raise SystemExit(f"error: {error}") from None

    guard = NonFiniteGuard(run.max_consecutive_skips, total=state.skipped_updates)
    audio_per_update = task.audio_seconds_per_update(accelerator)
    progress = tqdm(total=max_steps, initial=state.step, desc=task.name, unit="update",
                    disable=not accelerator.is_local_main_process)
    model.train()
    window_start, window_audio = time.perf_counter(), 0.0
    if extending and accelerator.is_main_process:  # from here on the run is the extended one
        kept = layout.start_extension(task.settings())
        if kept:
            accelerator.print(f"the finished run's results are kept in {kept}")
    stops.armed = True
    signum = None
    while state.step < max_steps and state.epoch < run.num_train_epochs:
        batches = task.micro_batches(accelerator, state.epoch, state.micro_batches_in_epoch)
        epoch_done = False
        while not epoch_done and state.step < max_steps:
            group = list(islice(batches, accumulation))
            complete = len(group) == accumulation
            if task.streaming:  # processes may run out of streamed examples at different times: the first ends it
                complete = not accelerator.reduce(torch.tensor(int(not complete), device=accelerator.device),
                                                  reduction="max")
            if not complete:
                if state.micro_batches_in_epoch == 0:
                    stop(ValueError("the training data ran out before one update: fewer examples than "
                                    "--per_device_train_batch_size x processes x --gradient_accumulation_steps"))
                epoch_done = True
            else:
                # Dropout, layerdrop, Gumbel noise and transformers' time masking draw from torch's and numpy's
                # global generators: seeding both per update makes a resumed run draw what the uninterrupted one did.
                update_seed = seeded_generator(run.seed, state.epoch, state.micro_batches_in_epoch,
                                               accelerator.process_index).initial_seed()
                torch.manual_seed(update_seed)
                np.random.seed(update_seed % 2**32)
                task.before_update(unwrapped, state)
                result = task.update(accelerator, model, optimizer, group, state)
                state.micro_batches_in_epoch += accumulation
                try:
                    guard.update(result.skipped, state.step)
                except TrainingDiverged as error:
                    stop(error)
                state.skipped_updates = guard.total
                if not result.skipped and not params_finite(unwrapped):
                    stop(TrainingDiverged(
                        f"update {state.step + 1} made the weights non-finite; the run stops before saving anything "
                        "from it (the last checkpoint is intact). Lower --learning_rate (a rate given on resume "
                        "re-bases the schedule) and resume with --resume_from_checkpoint latest."))
                if not result.skipped:
                    scheduler.step()
                    state.step += 1
                    progress.update(1)
                    if audio_per_update:
                        state.audio_seconds_seen += audio_per_update
                        window_audio += audio_per_update
                    if state.step % run.logging_steps == 0 or state.step == max_steps:
                        elapsed = time.perf_counter() - window_start
                        state.train_seconds += elapsed
                        metrics = {"step": state.step, "epoch": state.epoch, **result.metrics,
                                   "learning_rate": scheduler.get_last_lr()[0],
                                   "skipped_updates": state.skipped_updates}
                        if audio_per_update:
                            metrics["audio_seconds_per_second"] = window_audio / max(elapsed, 1e-9)
                        state.last_metrics = metrics
                        window_start, window_audio = time.perf_counter(), 0.0
                        progress.set_postfix(loss=f"{result.loss:.3f}")
                        log(metrics)
                epoch_done = per_epoch is not None and state.micro_batches_in_epoch >= per_epoch
            # Everything this update ends happens before its checkpoint, so a resume never redoes or skips it.
            final = state.step >= max_steps or (epoch_done and state.epoch + 1 >= run.num_train_epochs)
            if task.evaluates and (epoch_done or final) and state.epoch not in state.epochs_evaluated:
                evaluate()
            if epoch_done:
                state.epoch += 1
                state.micro_batches_in_epoch = 0
            due = (run.checkpoint_every is None and epoch_done) or final or (
                complete and not result.skipped and run.checkpoint_every and state.step % run.checkpoint_every == 0)
            saved = save_checkpoint(accelerator, layout.root, state, run.checkpoints_total_limit, model,
                                    optimizer) if due else None
            signum = stops.agreed(accelerator)  # every process, every update: they stop after the same one
            if signum is not None and not final:
                saved = saved or save_checkpoint(accelerator, layout.root, state, run.checkpoints_total_limit, model,
                                                 optimizer)
                progress.close()
                accelerator.end_training()
                raise RunStopped(signum, stopped_message(signum, state.step, saved)
                                 if accelerator.is_main_process else "")
    stops.armed = False
    progress.close()
    state.train_seconds += time.perf_counter() - window_start
    if signum is not None:  # asked during the last update, whose checkpoint is written: a resume writes the outputs
        accelerator.end_training()
        raise RunStopped(signum, stopped_message(signum, state.step, saved) if accelerator.is_main_process else "")

    accelerator.wait_for_everyone()
    results = task.finish(accelerator, model, state, layout)
    if accelerator.is_main_process:
        layout.write_results(results)
        accelerator.print(f"saved the {task.name} output to {layout.root}")
    accelerator.end_training()
    if run.push_to_hub and accelerator.is_main_process:
        push(accelerator, layout, run)
    return 0


def stopped_message(signum: int, step: int, checkpoint) -> str:
    import signal

    return (f"stopped by {signal.Signals(signum).name} after update {step}, {checkpoint} written; the same command "
            "with --resume_from_checkpoint latest continues the run")


__all__ = ["NonFiniteGuard", "TrainingDiverged", "TrainingTask", "UpdateBatchSampler", "UpdateResult", "extension_text",
           "build_optimizer", "check_launch", "no_sync_unless_last", "resolve_mixed_precision",
           "run_summary", "seeded_generator", "step_if_finite", "train"]
