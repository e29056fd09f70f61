"""The options of a training run, defined once, and recipes: JSON files of options read like the command line.

`RunArguments` holds what every training program shares (batching, optimizer, schedule, checkpoints, logging,
upload); each program adds its own dataclass (data and model) and sets its own defaults for the shared ones.
A recipe (`--recipe mini`, or a path to a JSON file) is turned into command-line flags placed before the
user's, so flags given on the command line override the file.
"""

import json
import shlex
import sys
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from transformers import HfArgumentParser

from ..errors import SettingsError


def option(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class RunArguments:
    """Options every training program shares. Each program sets its own defaults (shown by `--help`)."""

    output_dir: str = field(metadata={"help": "model, model card, logs/ and checkpoints/ go here"})
    recipe: str | None = option(None, "a packaged recipe name (e.g. mini, paper) or a JSON file of options; "
                                      "flags given on the command line override it")
    overwrite_output_dir: bool = option(False, "delete the checkpoints, logs and results of another run in "
                                               "OUTPUT_DIR and start over")
    resume_from_checkpoint: str | None = option(None, "a checkpoint folder, or 'latest' (the newest in OUTPUT_DIR; "
                                                      "starts from scratch if there is none)")
    seed: int = option(0, "seeds the initial weights, the data order, every crop, mask and dropout draw")
    per_device_train_batch_size: int = option(8, "examples per micro-batch on each process")
    gradient_accumulation_steps: int = option(1, "micro-batches per update")
    learning_rate: float = option(5e-4, "peak learning rate")
    weight_decay: float = option(0.01, "AdamW weight decay")
    adam_beta1: float = option(0.9, "AdamW beta1")
    adam_beta2: float = option(0.98, "AdamW beta2")
    adam_epsilon: float = option(1e-6, "AdamW epsilon")
    max_grad_norm: float = option(25.0, "gradient clipping (0: off)")
    warmup_steps: int | None = option(None, "linear warmup updates; unset, --warmup_ratio of all updates")
    warmup_ratio: float = option(0.0, "share of all updates spent warming up, when --warmup_steps is not given")
    num_train_epochs: int = option(100, "epochs at most; raised on --resume_from_checkpoint, extends the run")
    max_train_steps: int | None = option(
        None, "updates in all; unset, the epochs' updates. Raised on --resume_from_checkpoint latest, it extends "
              "the run, finished or not, from its newest checkpoint: the learning rate then follows the schedule of "
              "a run of the new length from the resume on (a finished run's rate rises from 0 to it); lowering is "
              "refused")
    max_consecutive_skips: int = option(20, "stop after this many updates in a row with a non-finite loss or "
                                            "gradient")
    mixed_precision: str = option("auto", "auto, no, fp16 or bf16. auto: the accelerate launcher's fp16 or bf16 if "
                                          "it sets one, else bf16 where the device computes it natively (a GPU "
                                          "with bf16, a CPU with AVX512-BF16 or AMX), else fp32",
                                  choices=["auto", "no", "fp16", "bf16"])
    torch_compile: bool = option(False, "compile the model's static-shape parts with torch.compile")
    gradient_checkpointing: bool = option(False, "keep each layer's input only and recompute the rest in the backward "
                                                 "pass: far less activation memory, about a third more compute, the "
                                                 "same update")
    skip_memory_check: bool = option(False, "start even when the memory estimate says the run does not fit "
                                            "(README, 'Memory')")
    adamw_implementation: str = option("fused", "AdamW kernel: fused (one kernel for all parameters, CPU or GPU), "
                                                "foreach, or for-loop (one parameter at a time)",
                                       choices=["fused", "foreach", "for-loop"])
    dataloader_num_workers: int = option(0, "DataLoader worker processes")
    cache_dir: str | None = option(None, "dataset cache; unset, $HF_MUSIC_W2V_CACHE or ~/.cache/hf_music_w2v")
    checkpointing_steps: str = option("1000", "save a checkpoint every N updates, or 'epoch' after each epoch")
    checkpoints_total_limit: int = option(3, "keep the newest N checkpoints")
    logging_steps: int = option(10, "log training metrics every N updates")
    report_to: str = option("tensorboard", "tensorboard, wandb, all or none")
    push_to_hub: bool = option(False, "upload the output folder to the Hub at the end")
    hub_model_id: str | None = option(None, "repository for --push_to_hub, e.g. user/w2v-musicnet")
    hub_token: str | None = option(None, "Hub token; unset, the logged-in user's")

    @property
    def checkpoint_every(self) -> int | None:
        """N for `--checkpointing_steps N`, None for 'epoch'."""
        return None if self.checkpointing_steps == "epoch" else int(self.checkpointing_steps)

    def warmup(self, max_steps: int) -> int:
        steps = self.warmup_steps if self.warmup_steps is not None else round(self.warmup_ratio * max_steps)
        return min(steps, max_steps)


#: Options that may differ when a run is resumed: they change how it is watched or kept, not what it computes.
OPERATIONAL = frozenset({
    "output_dir", "recipe", "overwrite_output_dir", "resume_from_checkpoint", "dataloader_num_workers", "cache_dir",
    "checkpointing_steps", "checkpoints_total_limit", "logging_steps", "report_to", "push_to_hub", "hub_model_id",
    "hub_token", "max_consecutive_skips",
    # A run stopped for memory resumes with less: checkpointing recomputes, it does not change the update.
    "gradient_checkpointing", "skip_memory_check",
    # A diverged run is resumed with a lower rate: the schedule is rebuilt from the rate given on resume.
    "learning_rate", "head_learning_rate",
})


#: Options a resume may raise (never lower): the run is extended from its newest checkpoint (engine.py).
EXTENDABLE = frozenset({"max_train_steps", "num_train_epochs"})


def recipe_file(task: str, recipe: str) -> Path:
    """A packaged recipe `recipes/<task>-<name>.json`, or `recipe` itself when it is a path to a file."""
    if recipe.endswith(".json") or Path(recipe).is_file():
        path = Path(recipe)
        if not path.is_file():
            raise FileNotFoundError(f"--recipe {recipe}: no such file")
        return path
    packaged = resources.files("hf_music_w2v") / "recipes" / f"{task}-{recipe}.json"
    if not packaged.is_file():
        names = sorted(p.name[len(task) + 1 : -5] for p in (resources.files("hf_music_w2v") / "recipes").iterdir()
                       if p.name.startswith(f"{task}-") and p.name.endswith(".json"))
        raise FileNotFoundError(f"--recipe {recipe}: no packaged {task} recipe of that name (there are: "
                                f"{', '.join(names)}) and no such file")
    return Path(str(packaged))


def recipe_flags(path: Path) -> list[str]:
    """A recipe's options as command-line flags: {"learning_rate": 0.001, "streaming": true} -> [--learning_rate ...]."""
    try:
        options = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise SettingsError(f"recipe {path}: not valid JSON ({error})") from None
    if not isinstance(options, dict):
        raise SettingsError(f"recipe {path}: expected a JSON object of option names and values")
    flags = []
    for name, value in options.items():
        if name.startswith("_"):  # "_comment" keys explain the recipe
            continue
        if value is None:
            continue
        flags.append(f"--{name}")
        if isinstance(value, bool):
            flags.append(str(value).lower())
        elif isinstance(value, list):
            flags.extend(str(v) for v in value)
        else:
            flags.append(str(value))
    return flags


def find_recipe(argv: list[str]) -> str | None:
    for index, arg in enumerate(argv):
        if arg == "--recipe" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--recipe="):
            return arg.split("=", 1)[1]
    return None


def build_parser(task: str, task_arguments: type, defaults: dict, description: str) -> HfArgumentParser:
    parser = HfArgumentParser((task_arguments, RunArguments), description=description, prog=f"hf-music-w2v {task}")
    parser.set_defaults(**defaults)
    return parser


def parse_arguments(task: str, task_arguments: type, defaults: dict, description: str,
                    argv: list[str] | None = None):
    """(task options, run options) from `argv`, a recipe's flags placed first; argparse-style errors (exit 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(task, task_arguments, defaults, description)
    recipe = find_recipe(argv)
    if recipe:
        try:
            argv = recipe_flags(recipe_file(task, recipe)) + argv
        except (OSError, ValueError) as error:
            parser.error(str(error))
    task_args, run_args = parser.parse_args_into_dataclasses(argv)
    problems = check_run_arguments(run_args) + task_args.problems(run_args)
    if problems:
        parser.error("; ".join(problems))
    return task_args, run_args


def check_run_arguments(args: RunArguments) -> list[str]:
    problems = []
    if args.push_to_hub and not args.hub_model_id:
        problems.append("--push_to_hub needs --hub_model_id")
    if args.per_device_train_batch_size < 1 or args.gradient_accumulation_steps < 1:
        problems.append("--per_device_train_batch_size and --gradient_accumulation_steps must be >= 1")
    if args.checkpointing_steps != "epoch" and not (args.checkpointing_steps.isdigit()
                                                     and int(args.checkpointing_steps) > 0):
        problems.append(f"--checkpointing_steps must be 'epoch' or a positive number of updates, got "
                        f"{args.checkpointing_steps!r}")
    if args.logging_steps < 1:
        problems.append("--logging_steps must be >= 1")
    if args.max_train_steps is not None and args.max_train_steps < 1:
        problems.append("--max_train_steps must be >= 1")
    if args.num_train_epochs < 1:
        problems.append("--num_train_epochs must be >= 1")
    return problems


#: Options whose values are secrets: kept out of every file a run writes, since the run folder is uploaded.
SECRET_OPTIONS = ("hub_token",)


def settings_of(*arguments) -> dict:
    """Every option of a run but the secrets, as one flat dict (what `run_settings.json` holds)."""
    settings = {}
    for args in arguments:
        settings.update(asdict(args))
    return {name: value for name, value in settings.items() if name not in SECRET_OPTIONS}


def command_line(program: str, argv: list[str]) -> str:
    """`hf-music-w2v PROGRAM ARGV` as one shell line for the model card, secret options and their values left out."""
    secret_flags = [f"--{name}" for name in SECRET_OPTIONS]
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in secret_flags:
            skip = True
        elif not arg.startswith(tuple(f"{flag}=" for flag in secret_flags)):
            kept.append(arg)
    return shlex.join(["hf-music-w2v", program, *kept])


__all__ = ["EXTENDABLE", "OPERATIONAL", "RunArguments", "SECRET_OPTIONS", "build_parser", "command_line", "option",
           "parse_arguments", "recipe_file", "recipe_flags", "settings_of"]
