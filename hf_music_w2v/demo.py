"""The main job end to end: pretrain on MusicNet, fine-tune on NSynth from that and from random weights, report.

    hf-music-w2v demo --output_dir demo_output                      # miniature datasets rendered here, CPU
    hf-music-w2v demo --musicnet_dir M --nsynth_dir N --recipe paper --accelerate_config C   # the real thing

Stages, each training run a real `accelerate launch` of the package's programs (the recipe `--recipe` names,
`recipes/{pretrain,finetune}-<recipe>.json`) with its log in OUT/logs/:
 1. data: render mini-MusicNet and mini-NSynth (skipped for datasets given by path);
 2. pretrain: `hf-music-w2v pretrain` on MusicNet;
 3. fine-tune: `hf-music-w2v finetune` from the music-pretrained model, from the same architecture with random
    weights, and from a speech checkpoint when one is given, each with every seed and the same budget;
 4. codebook: NMI between the quantizer's code ids and pitch / family, music-pretrained vs random;
 5. hub: the best-on-valid music-pretrained run packaged for the Hub, with the widget models;
 6. report: OUT/REPORT.md with its figures and OUT/results.json.
A finished stage is not run again (the same command resumes an interrupted demo; `--fresh` starts over), a
training stage that was cut off resumes from its latest checkpoint, and a folder made with other settings is
refused rather than mixed into.
"""

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .atomic import staged_directory, write_text_atomic
from .training.launch import launch_command, launch_environment
from .training.layout import HEADS, RunLayout

# C and G in every octave of the MIDI piano range: each mini instrument plays some of them, so the NSynth splits
# share their pitches as the real ones do and pitch is learnable from a few notes per instrument.
PITCH_GRID = tuple(p for p in range(21, 109) if p % 12 in (0, 7))
#: The training recipes the demo can run (packaged `recipes/{pretrain,finetune}-<name>.json`).
RECIPES = ("mini", "paper")

MUSIC, RANDOM, SPEECH = "music-pretrained", "random init", "speech-pretrained"
RUN_NAMES = {MUSIC: "music", RANDOM: "random", SPEECH: "speech"}


class DemoError(RuntimeError):
    """A stage failed; the message names it and its log."""


# The flags that change what a finished stage produced: resuming under other values would mix two experiments.
SETTINGS = ("recipe", "musicnet_dir", "nsynth_dir", "pretrain_steps", "finetune_epochs", "pretrain_args",
            "finetune_args", "pretrain_seed", "data_seed", "notes_per_instrument", "musicnet_seconds")


@dataclass
class DemoState:
    """The settings of an output folder and the seconds spent per finished stage (OUT/demo_state.json)."""

    settings: dict = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> "DemoState":
        return cls(**json.loads(path.read_text())) if path.is_file() else cls()

    def write(self, path: Path) -> None:
        write_text_atomic(path, json.dumps({"settings": self.settings, "seconds": self.seconds}, indent=2))


def run_logged(command: list[str], log_path: Path, stage: str, echo: bool) -> None:
    """Run `command`, appending its output to `log_path` (and to stderr with `echo`); raise DemoError on failure."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"$ {shlex.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=launch_environment())
        try:
            for chunk in iter(lambda: process.stdout.read1(1 << 16), b""):
                log.write(chunk)
                log.flush()
                if echo:
                    sys.stderr.buffer.write(chunk)
                    sys.stderr.flush()
        except KeyboardInterrupt:
            # Ctrl-C reaches the whole process group; give the run the time to leave, then make sure it has.
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            raise
        code = process.wait()
    if code != 0:
        lines = log_path.read_bytes().decode(errors="replace").replace("\r", "\n").splitlines()
        tail = "\n".join(line for line in lines[-60:] if line.strip())[-3000:]
        raise DemoError(f"stage {stage!r} failed with exit code {code}; its log is {log_path}. It ended with:\n{tail}")


class Demo:
    """The stages of `hf-music-w2v demo` over one output folder."""

    def __init__(self, args: argparse.Namespace, stream=None):
        self.args = args
        self.out = Path(args.output_dir).resolve()
        self.stream = stream or sys.stderr
        self.state_path = self.out / "demo_state.json"
        self.state = DemoState() if args.fresh else DemoState.read(self.state_path)
        self.settings = {name: getattr(args, name) for name in SETTINGS}
        changed = [f"{name} {self.state.settings[name]!r} -> {value!r}" for name, value in self.settings.items()
                   if self.state.settings and self.state.settings.get(name) != value]
        if changed:
            raise DemoError(f"{self.out} holds a demo made with other settings ({'; '.join(changed)}); resuming "
                            "would mix the two. Give --fresh to start over, or another --output_dir")
        self.musicnet_dir = Path(args.musicnet_dir) if args.musicnet_dir else self.out / "data" / "musicnet"
        self.nsynth_dir = Path(args.nsynth_dir) if args.nsynth_dir else self.out / "data" / "nsynth"
        self.inits = [MUSIC, RANDOM] + ([SPEECH] if args.speech_model else [])
        self.check_inputs()

    def check_inputs(self) -> None:
        """Datasets and models given by the user must be there before minutes of work start."""
        from .data.musicnet import find_root
        from .data.nsynth import find_split_dir
        from .data.validation import DataError

        if self.args.musicnet_dir:
            try:
                find_root(self.args.musicnet_dir)
            except DataError as error:
                raise DemoError(f"--musicnet_dir {error}") from None
        if self.args.nsynth_dir:
            missing = [split for split in ("train", "valid", "test")
                       if find_split_dir(Path(self.args.nsynth_dir), split) is None]
            if missing:
                raise DemoError(f"--nsynth_dir {self.args.nsynth_dir}: no nsynth-{{train,valid,test}}/examples.json "
                                f"(missing: {', '.join(missing)}); the demo needs NSynth's json/wav layout")
        if self.args.speech_model:
            from transformers import Wav2Vec2Config

            try:
                Wav2Vec2Config.from_pretrained(self.args.speech_model)
            except (OSError, ValueError) as error:
                raise DemoError(f"--speech_model {self.args.speech_model}: cannot load a wav2vec2 config "
                                f"({error})") from None

    def say(self, message: str) -> None:
        self.stream.write(f"==> {message}\n")
        self.stream.flush()

    def stage(self, title: str, done: bool, work, key: str) -> None:
        """Run `work()` unless `done`, timing it into the demo state under `key`."""
        if done:
            self.say(f"{title}: already done, skipped")
            return
        self.say(f"{title} ...")
        start = time.perf_counter()
        work()
        self.state.seconds[key] = time.perf_counter() - start
        self.state.write(self.state_path)
        self.say(f"{title}: done in {self.state.seconds[key] / 60:.1f} min")

    # Stage 1: data.
    def render_data(self) -> None:
        from .data.mini import make_mini_musicnet, make_mini_nsynth

        if not self.musicnet_ready():
            with staged_directory(self.musicnet_dir) as staging:
                make_mini_musicnet(staging, seed=self.args.data_seed, seconds=self.args.musicnet_seconds)
        if not self.nsynth_ready():
            with staged_directory(self.nsynth_dir) as staging:
                make_mini_nsynth(staging, seed=self.args.data_seed, pitches=PITCH_GRID,
                                 notes_per_instrument=self.args.notes_per_instrument)

    # Datasets given by path were checked up front; rendered ones are ready once their folder was published.
    def musicnet_ready(self) -> bool:
        return bool(self.args.musicnet_dir) or (self.musicnet_dir / "musicnet_metadata.csv").is_file()

    def nsynth_ready(self) -> bool:
        return bool(self.args.nsynth_dir) or (self.nsynth_dir / "nsynth-test" / "examples.json").is_file()

    # Stage 2: pretraining.
    @property
    def pretrain_dir(self) -> Path:
        return self.out / "pretrain"

    def pretrain_arguments(self) -> list[str]:
        """The pretraining program's arguments: the recipe, the demo's, then the user's `--pretrain_args` (which win)."""
        steps = self.args.pretrain_steps
        return ["--recipe", self.args.recipe, "--musicnet_dir", str(self.musicnet_dir),
                "--output_dir", str(self.pretrain_dir), "--cache_dir", str(self.out / "cache"),
                "--seed", str(self.args.pretrain_seed), "--resume_from_checkpoint", "latest",
                *(["--max_train_steps", str(steps)] if steps else []), *shlex.split(self.args.pretrain_args)]

    def pretrain(self) -> None:
        run_logged(launch_command("pretrain", self.pretrain_arguments(), self.args.accelerate_config),
                   self.out / "logs" / "pretrain.log", "pretrain", not self.args.quiet)

    # Stage 3: fine-tuning.
    def run_dir(self, init: str, seed: int) -> Path:
        return self.out / "finetune" / f"{RUN_NAMES[init]}-seed{seed}"

    def finetune_arguments(self, init: str, seed: int) -> list[str]:
        """The fine-tuning program's arguments for one run: identical for every init but the starting weights."""
        model = {MUSIC: self.pretrain_dir, RANDOM: self.pretrain_dir, SPEECH: self.args.speech_model}[init]
        epochs = self.args.finetune_epochs
        return ["--recipe", self.args.recipe, "--model_name_or_path", str(model), "--nsynth_dir",
                str(self.nsynth_dir), "--output_dir", str(self.run_dir(init, seed)), "--cache_dir",
                str(self.out / "cache"), "--seed", str(seed), "--resume_from_checkpoint", "latest",
                *(["--num_train_epochs", str(epochs)] if epochs else []), *(["--random_init"] if init == RANDOM else []),
                *shlex.split(self.args.finetune_args)]

    def finetune(self, init: str, seed: int) -> None:
        name = self.run_dir(init, seed).name
        run_logged(launch_command("finetune", self.finetune_arguments(init, seed), self.args.accelerate_config),
                   self.out / "logs" / f"finetune-{name}.log", f"finetune {name}", not self.args.quiet)

    # Stage 4: codebook analysis.
    def codebook(self) -> None:
        from datasets import concatenate_datasets
        from transformers import Wav2Vec2ForPreTraining

        from .codebook import analyse_codebook
        from .data import load_nsynth

        notes = concatenate_datasets([load_nsynth(self.nsynth_dir, split, cache_dir=self.out / "cache")
                                      for split in ("train", "valid", "test")])
        if len(notes) > self.args.codebook_max_notes:
            chosen = np.random.default_rng(0).choice(len(notes), self.args.codebook_max_notes, replace=False)
            notes = notes.select(np.sort(chosen))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        music = Wav2Vec2ForPreTraining.from_pretrained(self.pretrain_dir)
        # The same seed and config as the pretraining run: the very network pretraining started from.
        torch.manual_seed(self.args.pretrain_seed)
        models = {MUSIC: music, RANDOM: Wav2Vec2ForPreTraining(music.config)}
        if self.args.speech_model:
            models[SPEECH] = Wav2Vec2ForPreTraining.from_pretrained(self.args.speech_model)
        scores = {}
        for label, model in models.items():
            scores[label] = analyse_codebook(model, notes, device=device).scores()
            self.say(f"codebook of the {label} model: pitch NMI {scores[label]['pitch_nmi']:.3f}, "
                     f"family NMI {scores[label]['family_nmi']:.3f}")
        write_text_atomic(self.out / "codebook.json", json.dumps(scores, indent=2))

    # Stage 5: the Hub-ready folder.
    def best_music_run(self) -> Path:
        runs = [self.run_dir(MUSIC, seed) for seed in self.args.seeds]
        return max(runs, key=lambda run: RunLayout(run).read_results()["valid_mean_accuracy"])

    def package(self) -> None:
        run = self.best_music_run()
        layout = RunLayout(run)
        skip = shutil.ignore_patterns(*layout.WORKING_DIRS, ".*")
        with staged_directory(self.out / "hub") as staging:
            shutil.copytree(run, staging / "model", ignore=skip)
            for head in HEADS:
                shutil.copytree(layout.widget / head, staging / f"widget-{head}")

    def stages(self) -> list[tuple[str, bool, object]]:
        """(name, already done, work) for every stage, in order."""
        stages = [("data", self.musicnet_ready() and self.nsynth_ready(), self.render_data),
                  ("pretrain", RunLayout(self.pretrain_dir).is_finished(), self.pretrain)]
        for init in self.inits:
            for seed in self.args.seeds:
                run = self.run_dir(init, seed)
                stages.append((f"finetune {run.name}", RunLayout(run).is_finished(),
                               lambda init=init, seed=seed: self.finetune(init, seed)))
        return stages + [("codebook", False, self.codebook), ("hub", False, self.package),
                         ("report", False, self.report)]

    def run(self) -> Path:
        if self.args.fresh and self.out.exists():
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.state.settings = self.settings
        self.state.write(self.state_path)
        start = time.perf_counter()
        stages = self.stages()
        for number, (name, done, work) in enumerate(stages, 1):
            self.stage(f"[{number}/{len(stages)}] {name}", done, work, key=name)
        self.say(f"finished in {(time.perf_counter() - start) / 60:.1f} min; report: {self.out / 'REPORT.md'}")
        return self.out / "REPORT.md"

    # Stage 6: the report.
    def report(self) -> None:
        from . import plotting, report
        from .data import load_nsynth

        figures = self.out / "figures"
        pretrain = RunLayout(self.pretrain_dir)
        pretrain_config = json.loads((pretrain.root / "config.json").read_text())
        plotting.plot_pretraining(pretrain.read_metrics(), figures / "pretraining.png",
                                  pretrain_config["num_codevector_groups"])
        finetune_logs = {init: [RunLayout(self.run_dir(init, s)).read_metrics() for s in self.args.seeds]
                         for init in self.inits}
        plotting.plot_finetuning(finetune_logs, figures / "finetuning.png")
        results = {init: [RunLayout(self.run_dir(init, s)).read_results() for s in self.args.seeds]
                   for init in self.inits}
        codebook = json.loads((self.out / "codebook.json").read_text())
        plotting.plot_codebook(codebook, figures / "codebook_nmi.png")
        best = self.best_music_run()
        shutil.copyfile(best / "confusion_matrix.png", figures / "confusion_matrix.png")

        test = load_nsynth(self.nsynth_dir, "test", cache_dir=self.out / "cache")
        chance = {"pitch": max(np.bincount(test["pitch"])) / len(test),
                  "instrument": max(np.bincount(test["instrument_family"])) / len(test)}
        rows = report.accuracy_rows(results)
        pretrain_results = pretrain.read_results()
        summary = {"accuracy": rows, "chance": chance, "codebook": codebook, "pretraining": pretrain_results,
                   "stage_seconds": self.state.seconds, "machine": machine_description(),
                   "command": self.args.invocation}
        write_text_atomic(self.out / "results.json", json.dumps(summary, indent=2))
        write_text_atomic(self.out / "REPORT.md", render_report(self, summary, results, pretrain_config, best))


def machine_description() -> str:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, {device}, "
            f"torch {torch.__version__}, Python {platform.python_version()}")


def test_set_caveat(rows: list[dict], test_notes: int) -> str:
    """The size of the test set in accuracy points: seeds vary the training, not which notes are tested."""
    p = rows[0]["pitch"]["mean"]
    return (f"The seeds vary training only; all runs are scored on the same {test_notes} test notes, so one note "
            f"is {100 / test_notes:.1f} points, and the binomial standard error of an accuracy near {p:.2f} is "
            f"{np.sqrt(p * (1 - p) / test_notes):.3f}.")


def render_report(demo: Demo, summary: dict, results: dict, pretrain_config: dict, best: Path) -> str:
    from . import report

    args, seconds = demo.args, summary["stage_seconds"]
    rows = summary["accuracy"]
    pretrain = summary["pretraining"]
    first = results[MUSIC][0]
    finetune_minutes = sum(v for k, v in seconds.items() if k.startswith("finetune")) / 60
    total_minutes = sum(seconds.values()) / 60
    finetune_setup = (f"recipe `{args.recipe}` plus `{args.finetune_args}`" if args.finetune_args
                      else "feature encoder frozen")
    comparisons = report.compare(rows, MUSIC, RANDOM) + report.compare(rows, MUSIC, SPEECH)
    data_note = ("rendered by the demo in the official layouts, from a General MIDI SoundFont's recorded "
                 "instrument samples and music21's real scores" if not (args.musicnet_dir or args.nsynth_dir)
                 else "given by path")
    lines = [
        "# hf_music_w2v demo report",
        "",
        f"`{summary['command']}` on {summary['machine']}; {total_minutes:.1f} min of stages in all "
        f"(pretraining {seconds.get('pretrain', 0) / 60:.1f} min, fine-tuning {finetune_minutes:.1f} min).",
        "",
        "Everything below was measured in this run; the figures are in `figures/`, the numbers in "
        "`results.json`, each training run's own output and logs under `pretrain/` and `finetune/`.",
        "",
        "## Setup",
        "",
        f"- **Data** ({data_note}): MusicNet from `{demo.musicnet_dir}`, NSynth from `{demo.nsynth_dir}` "
        f"({first['train_notes']} train / {first['valid_notes']} valid / {first['test_notes']} test notes; the "
        "splits share no instrument, as in NSynth).",
        f"- **Model**: wav2vec2 with {pretrain_config['num_hidden_layers']} Transformer layers of "
        f"{pretrain_config['hidden_size']}, a {len(pretrain_config['conv_dim'])}-layer conv encoder of "
        f"{pretrain_config['conv_dim'][0]} channels, a {pretrain_config['num_codevector_groups']} x "
        f"{pretrain_config['num_codevectors_per_group']} Gumbel codebook (recipe `{args.recipe}`).",
        f"- **Pretraining**: {pretrain['steps']} updates, {pretrain['audio_hours_seen']:.2f} h of audio seen, "
        f"{pretrain['skipped_updates']} skipped; final contrastive loss {pretrain['final_contrastive_loss']:.3f} "
        f"(chance: ln(1 + negatives) = {np.log(1 + pretrain_config['num_negatives']):.3f}), codevector perplexity "
        f"{pretrain['final_codevector_perplexity']:.1f}.",
        f"- **Fine-tuning**: both heads jointly, {finetune_setup}, {first['epochs']} epoch(s) "
        f"({first['steps']} updates) per run, seeds {', '.join(map(str, args.seeds))}; every initialisation gets "
        "the same data, schedule and budget. Each run keeps its best epoch on valid and is scored once on test.",
        "",
        "## Pretraining on MusicNet",
        "",
        "![pretraining curves](figures/pretraining.png)",
        "",
        "## Fine-tuning on NSynth: test accuracy",
        "",
        report.accuracy_table(rows, summary["chance"]),
        "",
        "Mean ± sample standard deviation over seeds." + (
            f" Only {len(args.seeds)} seed(s): too few for the spread to mean much (3 or more are advised)."
            if len(args.seeds) < 3 else ""),
        "",
        test_set_caveat(rows, first["test_notes"]),
        "",
        *comparisons,
        "",
        "![fine-tuning curves](figures/finetuning.png)",
        "",
        f"## Instrument-family confusion (music-pretrained, the run best on valid: `{best.name}`)",
        "",
        "![confusion matrix](figures/confusion_matrix.png)",
        "",
        "## The codebook: what the quantizer's discrete codes say about pitch and instrument",
        "",
        f"Each 20 ms frame of {next(iter(summary['codebook'].values()))['notes']} NSynth notes (sounding frames "
        "only, within 40 dB of the note's peak) gets the quantizer's code id; NMI is the normalised mutual "
        "information between those ids and the note's pitch or family (0: unrelated, 1: determined). The "
        "'labels shuffled' columns give the same figure with the labels shuffled between notes: NMI above it is "
        "information, not an artefact of the number of codes. The random model is the network pretraining "
        "started from.",
        "",
        report.codebook_table(summary["codebook"]),
        "",
        "![codebook NMI](figures/codebook_nmi.png)",
        "",
        "## Hub-ready output",
        "",
        f"`hub/model/` is `{best.name}` ready to upload (weights, config with `auto_map`, the modeling code, "
        "feature extractor, model card with the test results, widget samples, confusion matrix); "
        "`hub/widget-pitch/` and `hub/widget-instrument/` are one standard "
        "`Wav2Vec2ForSequenceClassification` per head for the Hub's audio-classification widget.",
        "",
        "```",
        f"hf upload USER/MODEL {demo.out / 'hub' / 'model'} .",
        f"hf-music-w2v predict {demo.out / 'hub' / 'model'} some_note.wav --top_k 3",
        "```",
        "",
        "## Stage times",
        "",
        "| stage | minutes |",
        "|---|---|",
        *[f"| {name} | {value / 60:.2f} |" for name, value in seconds.items()],
        "",
    ]
    return "\n".join(lines)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output_dir", default="demo_output", help="everything goes here (default demo_output)")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="mini",
                        help="mini (default): a small wav2vec2 for a CPU in minutes; paper: wav2vec2-base and the "
                             "paper's settings, for the real datasets on GPUs")
    parser.add_argument("--musicnet_dir", default=None, help="real MusicNet (default: render mini-MusicNet)")
    parser.add_argument("--nsynth_dir", default=None, help="real NSynth (default: render mini-NSynth)")
    parser.add_argument("--speech_model", default=None,
                        help="a wav2vec2 speech checkpoint (folder or Hub id, e.g. facebook/wav2vec2-base) to "
                             "fine-tune and analyse beside the music-pretrained and random models")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fine-tuning seeds (default 0 1 2)")
    parser.add_argument("--pretrain_steps", type=int, default=None, help="pretraining updates (default: the recipe's, 800 for mini)")
    parser.add_argument("--finetune_epochs", type=int, default=None,
                        help="epochs per fine-tuning run (default 15 mini, 10 paper)")
    parser.add_argument("--pretrain_args", default="",
                        help="extra `hf-music-w2v pretrain` arguments in one string: --pretrain_args='--max_grad_norm 10'")
    parser.add_argument("--finetune_args", default="",
                        help="extra `hf-music-w2v finetune` arguments in one string: --finetune_args=--freeze_base_model")
    parser.add_argument("--accelerate_config", default=None,
                        help="accelerate config for every training run (default: one local process)")
    parser.add_argument("--pretrain_seed", type=int, default=0,
                        help="pretraining seed; it also draws the random network the codebook is compared with")
    parser.add_argument("--data_seed", type=int, default=0, help="seed of the rendered mini datasets")
    parser.add_argument("--notes_per_instrument", type=int, default=6, help="mini-NSynth notes per instrument")
    parser.add_argument("--musicnet_seconds", type=float, default=120.0,
                        help="seconds rendered of each mini-MusicNet score (default 120)")
    parser.add_argument("--codebook_max_notes", type=int, default=2000, help="NSynth notes in the codebook analysis")
    parser.add_argument("--fresh", action="store_true", help="delete OUTPUT_DIR first instead of resuming")
    parser.add_argument("--quiet", action="store_true", help="training output to the logs only, not the terminal")
