"""The paper's comparison end to end: pretrain on music and on speech, fine-tune and probe on NSynth, report.

    hf-music-w2v demo --output_dir demo_output                      # miniature datasets rendered here, CPU
    hf-music-w2v demo --musicnet_dir M --nsynth_dir N --recipe paper --accelerate_config C   # the real thing

Stages, each training run a real `accelerate launch` of the package's programs (the recipe `--recipe` names,
`recipes/{pretrain,finetune}-<recipe>.json`) with its log in OUT/logs/:
 1. data: render mini-MusicNet, mini-speech and mini-NSynth (skipped for datasets given by path);
 2. pretrain: `hf-music-w2v pretrain` of the same architecture, seed and budget on MusicNet and on speech
    (`--audio_dir`), so the two models differ in their data alone;
 3. fine-tune: `hf-music-w2v finetune` from each pretrained model, from the same architecture with random
    weights, and from a speech checkpoint when one is given (`--speech_model`), each with every seed and the
    same budget;
 4. probes: `hf-music-w2v probe` of every layer of each network (the random one is pretraining's start);
 5. codebook: NMI between the quantizer's code ids and pitch / family, for each network;
 6. hub: the best-on-valid music-pretrained run packaged for the Hub, with the widget models;
 7. report: OUT/REPORT.md with its figures, paired bootstrap comparisons and OUT/results.json.
A finished stage is not run again (the same command resumes an interrupted demo; `--fresh` starts over), a
training stage that was cut off resumes from its latest checkpoint, and a folder made with other settings is
refused rather than mixed into.
"""

import argparse
import concurrent.futures
import itertools
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .atomic import staged_directory, write_text_atomic
from .training.launch import launch_command, launch_environment
from .training.layout import HEAD_TITLES, HEADS, RunLayout

# C and G in every octave of the MIDI piano range: each mini instrument plays some of them, so the NSynth splits
# share their pitches as the real ones do and pitch is learnable from a few notes per instrument.
PITCH_GRID = tuple(p for p in range(21, 109) if p % 12 in (0, 7))
#: The training recipes the demo can run (packaged `recipes/{pretrain,finetune}-<name>.json`).
RECIPES = ("mini", "paper")

MUSIC, SPEECH, RANDOM, CHECKPOINT = "music-pretrained", "speech-pretrained", "random init", "speech checkpoint"
RUN_NAMES = {MUSIC: "music", SPEECH: "speech", RANDOM: "random", CHECKPOINT: "checkpoint"}
#: The pretrainings the demo runs itself, and the data flag each gives `hf-music-w2v pretrain`.
PRETRAINED = (MUSIC, SPEECH)


class DemoError(RuntimeError):
    """A stage failed; the message names it and its log."""


# The flags that change what a finished stage produced: resuming under other values would mix two experiments.
SETTINGS = ("recipe", "musicnet_dir", "nsynth_dir", "speech_dir", "pretrain_steps", "finetune_epochs",
            "pretrain_args", "finetune_args", "pretrain_seed", "data_seed", "notes_per_instrument",
            "test_notes_per_instrument", "musicnet_seconds", "speech_model")


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
        self.lock = threading.Lock()
        self.state_path = self.out / "demo_state.json"
        self.state = DemoState() if args.fresh else DemoState.read(self.state_path)
        if args.jobs < 1:
            raise DemoError(f"--jobs must be at least 1, got {args.jobs}")
        self.settings = {name: getattr(args, name) for name in SETTINGS}
        changed = [f"{name} {self.state.settings[name]!r} -> {value!r}" for name, value in self.settings.items()
                   if self.state.settings and self.state.settings.get(name) != value]
        if changed:
            raise DemoError(f"{self.out} holds a demo made with other settings ({'; '.join(changed)}); resuming "
                            "would mix the two. Give --fresh to start over, or another --output_dir")
        self.musicnet_dir = Path(args.musicnet_dir) if args.musicnet_dir else self.out / "data" / "musicnet"
        self.nsynth_dir = Path(args.nsynth_dir) if args.nsynth_dir else self.out / "data" / "nsynth"
        self.speech_dir = Path(args.speech_dir) if args.speech_dir else self.out / "data" / "speech"
        self.inits = [MUSIC, SPEECH, RANDOM] + ([CHECKPOINT] if args.speech_model else [])
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
        if self.args.speech_dir:
            from .data.audio_folder import list_audio_files

            try:
                list_audio_files(Path(self.args.speech_dir))
            except DataError as error:
                raise DemoError(f"--speech_dir {error}") from None
        if self.args.speech_model:
            from transformers import Wav2Vec2Config

            try:
                Wav2Vec2Config.from_pretrained(self.args.speech_model)
            except (OSError, ValueError) as error:
                raise DemoError(f"--speech_model {self.args.speech_model}: cannot load a wav2vec2 config "
                                f"({error})") from None

    def say(self, message: str) -> None:
        with self.lock:
            self.stream.write(f"==> {message}\n")
            self.stream.flush()

    def stage(self, title: str, done: bool, work, key: str) -> None:
        """Run `work()` unless `done`, timing it into the demo state under `key` (safe from several threads)."""
        if done:
            self.say(f"{title}: already done, skipped")
            return
        self.say(f"{title} ...")
        start = time.perf_counter()
        work()
        with self.lock:
            self.state.seconds[key] = time.perf_counter() - start
            self.state.write(self.state_path)
        self.say(f"{title}: done in {(time.perf_counter() - start) / 60:.1f} min")

    @property
    def echo(self) -> bool:
        """Training output to the terminal too: only when one run goes at a time, so that it reads."""
        return not self.args.quiet and self.args.jobs == 1

    def launch(self, program: str, arguments: list[str]) -> list[str]:
        """The `accelerate launch` command of a training run; with --jobs N the CPU's cores are shared out."""
        threads = max(1, torch.get_num_threads() // self.args.jobs)
        return launch_command(program, arguments, self.args.accelerate_config, cpu_threads=threads)

    # Stage 1: data.
    def render_data(self) -> None:
        from .data.mini import make_mini_musicnet, make_mini_nsynth
        from .data.mini_speech import MINI_SPEAKERS, make_mini_speech

        if not self.musicnet_ready():
            with staged_directory(self.musicnet_dir) as staging:
                make_mini_musicnet(staging, seed=self.args.data_seed, seconds=self.args.musicnet_seconds)
        if not self.speech_ready():
            make_mini_speech(self.speech_dir, seed=self.args.data_seed,
                             seconds_per_speaker=self.music_train_seconds() / len(MINI_SPEAKERS))
        if not self.nsynth_ready():
            with staged_directory(self.nsynth_dir) as staging:
                make_mini_nsynth(staging, seed=self.args.data_seed, pitches=PITCH_GRID,
                                 notes_per_instrument=self.args.notes_per_instrument,
                                 test_notes_per_instrument=self.args.test_notes_per_instrument)

    # Datasets given by path were checked up front; rendered ones are ready once their folder was published.
    def musicnet_ready(self) -> bool:
        return bool(self.args.musicnet_dir) or (self.musicnet_dir / "musicnet_metadata.csv").is_file()

    def nsynth_ready(self) -> bool:
        return bool(self.args.nsynth_dir) or (self.nsynth_dir / "nsynth-test" / "examples.json").is_file()

    def music_train_seconds(self) -> float:
        """Seconds of MusicNet's train recordings: mini-speech gets as many (rendered ones; else 8 x --musicnet_seconds)."""
        import soundfile as sf

        if self.args.musicnet_dir:
            return 8 * self.args.musicnet_seconds
        return sum(sf.info(path).duration for path in (self.musicnet_dir / "train_data").glob("*.wav"))

    def speech_ready(self) -> bool:
        return bool(self.args.speech_dir) or self.speech_dir.is_dir()

    # Stage 2: pretraining.
    def pretrain_dir(self, init: str) -> Path:
        return self.out / {MUSIC: "pretrain", SPEECH: "pretrain-speech"}[init]

    def pretrain_arguments(self, init: str) -> list[str]:
        """The pretraining program's arguments: the recipe, the demo's, then the user's `--pretrain_args` (which win).

        Music and speech runs differ in their data flag alone."""
        steps = self.args.pretrain_steps
        data = ["--musicnet_dir", str(self.musicnet_dir)] if init == MUSIC else ["--audio_dir", str(self.speech_dir)]
        return ["--recipe", self.args.recipe, *data,
                "--output_dir", str(self.pretrain_dir(init)), "--cache_dir", str(self.out / "cache"),
                "--seed", str(self.args.pretrain_seed), "--resume_from_checkpoint", "latest",
                *(["--max_train_steps", str(steps)] if steps else []), *shlex.split(self.args.pretrain_args)]

    def pretrain(self, init: str) -> None:
        name = self.pretrain_dir(init).name
        run_logged(self.launch("pretrain", self.pretrain_arguments(init)), self.out / "logs" / f"{name}.log", name,
                   self.echo)

    @property
    def random_dir(self) -> Path:
        """The network pretraining started from (same seed and config), saved for the probes and the codebook."""
        return self.out / "random-init"

    def save_random_network(self) -> None:
        from transformers import Wav2Vec2ForPreTraining

        if (self.random_dir / "config.json").is_file():
            return
        config = Wav2Vec2ForPreTraining.config_class.from_pretrained(self.pretrain_dir(MUSIC))
        torch.manual_seed(self.args.pretrain_seed)
        with staged_directory(self.random_dir) as staging:
            Wav2Vec2ForPreTraining(config).save_pretrained(staging)

    def network(self, init: str) -> str:
        """Where the network an arm starts fine-tuning from is (random init: pretraining's starting point)."""
        return str({MUSIC: self.pretrain_dir(MUSIC), SPEECH: self.pretrain_dir(SPEECH), RANDOM: self.random_dir,
                    CHECKPOINT: self.args.speech_model}[init])

    # Stage 3: fine-tuning.
    def run_dir(self, init: str, seed: int) -> Path:
        return self.out / "finetune" / f"{RUN_NAMES[init]}-seed{seed}"

    def finetune_arguments(self, init: str, seed: int) -> list[str]:
        """The fine-tuning program's arguments for one run: identical for every init but the starting weights."""
        model = self.pretrain_dir(MUSIC) if init == RANDOM else self.network(init)
        epochs = self.args.finetune_epochs
        return ["--recipe", self.args.recipe, "--model_name_or_path", str(model), "--nsynth_dir",
                str(self.nsynth_dir), "--output_dir", str(self.run_dir(init, seed)), "--cache_dir",
                str(self.out / "cache"), "--seed", str(seed), "--resume_from_checkpoint", "latest",
                *(["--num_train_epochs", str(epochs)] if epochs else []), *(["--random_init"] if init == RANDOM else []),
                *shlex.split(self.args.finetune_args)]

    def finetune(self, init: str, seed: int) -> None:
        name = self.run_dir(init, seed).name
        run_logged(self.launch("finetune", self.finetune_arguments(init, seed)),
                   self.out / "logs" / f"finetune-{name}.log", f"finetune {name}", self.echo)

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
        self.save_random_network()
        scores = {}
        for label in self.inits:
            model = Wav2Vec2ForPreTraining.from_pretrained(self.network(label))
            scores[label] = analyse_codebook(model, notes, device=device).scores()
            self.say(f"codebook of the {label} model: pitch NMI {scores[label]['pitch_nmi']:.3f}, "
                     f"family NMI {scores[label]['family_nmi']:.3f}")
        write_text_atomic(self.out / "codebook.json", json.dumps(scores, indent=2))

    # Stage: layer-wise probes.
    def probe_dir(self, init: str) -> Path:
        return self.out / "probes" / RUN_NAMES[init]

    def probes(self) -> None:
        from .probing import ProbeSettings, probe_model

        self.save_random_network()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        for init in self.inits:
            report = probe_model(self.network(init), str(self.nsynth_dir), self.probe_dir(init), ProbeSettings(),
                                 device=device, cache_dir=str(self.out / "cache"))
            best = {task: max((e for e in report["results"] if e["task"] == task), key=lambda e: e["valid_accuracy"])
                    for task in ("pitch", "instrument")}
            self.say(f"probes of the {init} network: " + ", ".join(
                f"{task} {entry['test_accuracy']:.3f} (layer {entry['layer']}, {entry['probe']})"
                for task, entry in best.items()))

    # Stage: the Hub-ready folder.
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
        stages = [("data", self.musicnet_ready() and self.nsynth_ready() and self.speech_ready(), self.render_data)]
        for init in PRETRAINED:
            stages.append((self.pretrain_dir(init).name, RunLayout(self.pretrain_dir(init)).is_finished(),
                           lambda init=init: self.pretrain(init)))
        for init in self.inits:
            for seed in self.args.seeds:
                run = self.run_dir(init, seed)
                stages.append((f"finetune {run.name}", RunLayout(run).is_finished(),
                               lambda init=init, seed=seed: self.finetune(init, seed)))
        return stages + [("probes", False, self.probes), ("codebook", False, self.codebook),
                         ("hub", False, self.package), ("report", False, self.report)]

    def run(self) -> Path:
        if self.args.fresh and self.out.exists():
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.state.settings = self.settings
        self.state.write(self.state_path)
        start = self.started = time.perf_counter()
        stages = [(f"[{number}/{len(self.stages())}] {name}", done, work, name)
                  for number, (name, done, work) in enumerate(self.stages(), 1)]
        # Training runs of one kind (the pretrainings, the fine-tunings) are independent: --jobs of them at once.
        for _, group in itertools.groupby(stages, key=lambda stage: stage[3].split(" ")[0].split("-")[0]):
            self.run_together(list(group))
        with self.lock:
            self.state.seconds["wall"] = self.state.seconds.get("wall", 0.0) + time.perf_counter() - start
            self.state.write(self.state_path)
        self.say(f"finished in {(time.perf_counter() - start) / 60:.1f} min; report: {self.out / 'REPORT.md'}")
        return self.out / "REPORT.md"

    def run_together(self, group: list[tuple]) -> None:
        """Run a group of stages, --jobs at a time when they are training runs; the first failure is raised."""
        parallel = self.args.jobs > 1 and len(group) > 1 and group[0][3].startswith(("pretrain", "finetune"))
        if not parallel:
            for stage in group:
                self.stage(*stage)
            return
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.args.jobs) as pool:
            futures = [pool.submit(self.stage, *stage) for stage in group]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                # Ctrl-C reached the runs too (one process group); a failure leaves the other runs to finish.
                for future in futures:
                    future.cancel()
                raise

    # Stage 6: the report.
    def report(self) -> None:
        from . import plotting, report
        from .data import load_nsynth

        figures = self.out / "figures"
        pretrain = RunLayout(self.pretrain_dir(MUSIC))
        pretrain_config = json.loads((pretrain.root / "config.json").read_text())
        for init in PRETRAINED:
            plotting.plot_pretraining(RunLayout(self.pretrain_dir(init)).read_metrics(),
                                      figures / f"{self.pretrain_dir(init).name}.png",
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
        correct = {}
        for init in self.inits:
            predictions = [json.loads((self.run_dir(init, s) / "test_predictions.json").read_text())
                           for s in self.args.seeds]
            correct[init] = {head: report.note_correctness(predictions, head)[1] for head in HEADS}
        comparisons = report.paired_comparisons(correct, rows)
        probes = {init: json.loads((self.probe_dir(init) / "probe_results.json").read_text()) for init in self.inits}
        plotting.plot_probe_layers(probes, figures / "probe_layers.png")
        summary = {"accuracy": rows, "chance": chance, "comparisons": comparisons, "codebook": codebook,
                   "probes": {init: best_probes(probe) for init, probe in probes.items()},
                   "pretraining": {init: RunLayout(self.pretrain_dir(init)).read_results() for init in PRETRAINED},
                   "stage_seconds": self.state.seconds, "machine": machine_description(),
                   "command": self.args.invocation}
        write_text_atomic(self.out / "results.json", json.dumps(summary, indent=2))
        write_text_atomic(self.out / "REPORT.md", render_report(self, summary, results, pretrain_config, best))


def machine_description() -> str:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, {device}, "
            f"torch {torch.__version__}, Python {platform.python_version()}")


def best_probes(probe_report: dict) -> dict[str, dict]:
    """Per task, the probe entry (layer and kind) best on valid, with its test accuracy."""
    return {task: max((e for e in probe_report["results"] if e["task"] == task), key=lambda e: e["valid_accuracy"])
            for task in ("pitch", "instrument")}


def claim_lines(comparisons: list[dict], codebook: dict) -> list[str]:
    """The paper's two claims against this run's figures, each with the verdict the figures allow."""
    lines = []
    for c in comparisons:
        if {c["first"], c["second"]} != {MUSIC, SPEECH}:
            continue
        sign = 1 if c["first"] == MUSIC else -1
        low, high = sorted((sign * c["low"], sign * c["high"]))
        if low > 0:
            verdict = "agrees: the music-pretrained model is ahead"
        elif high < 0:
            verdict = "disagrees: the speech-pretrained model is ahead"
        else:
            verdict = "cannot tell at this scale: the interval includes 0"
        lines.append(f"- *Music pretraining beats speech pretraining on {HEAD_TITLES[c['head']]}*: music - speech = "
                     f"{100 * sign * c['difference']:+.1f} points, 95% interval [{100 * low:+.1f}, {100 * high:+.1f}] "
                     f"over {c['notes']} test notes; the miniature {verdict}.")
    music = codebook.get(MUSIC)
    if music:
        for kind, title in (("pitch", "pitch"), ("family", "instrument family")):
            value, floor = music[f"{kind}_nmi"], music[f"{kind}_nmi_shuffled"]
            others = ", ".join(f"{label} {codebook[label][f'{kind}_nmi']:.3f}" for label in codebook if label != MUSIC)
            state = ("above" if value > floor else "not above")
            lines.append(f"- *The music model's codes encode {title}*: NMI {value:.3f}, {state} its shuffled-label "
                         f"floor {floor:.3f} (other networks: {others}).")
    return lines


def probe_table_of(demo: "Demo") -> str:
    return probe_table({init: json.loads((demo.probe_dir(init) / "probe_results.json").read_text())
                        for init in demo.inits})


def probe_table(probes: dict[str, dict]) -> str:
    lines = ["| network | task | best probe on valid | its test accuracy | last layer, linear (test) |",
             "|---|---|---|---|---|"]
    for init, probe in probes.items():
        last = max(e["layer"] for e in probe["results"] if isinstance(e["layer"], int))
        for task, entry in best_probes(probe).items():
            final = next(e for e in probe["results"] if e["task"] == task and e["layer"] == last
                         and e["probe"] == "linear")
            lines.append(f"| {init} | {task} | layer {entry['layer']}, {entry['probe']} | "
                         f"{entry['test_accuracy']:.3f} ± {entry['test_accuracy_std']:.3f} | "
                         f"{final['test_accuracy']:.3f} ± {final['test_accuracy_std']:.3f} |")
    return "\n".join(lines)


def test_set_caveat(rows: list[dict], test_notes: int) -> str:
    """The size of the test set in accuracy points: seeds vary the training, not which notes are tested."""
    p = rows[0]["pitch"]["mean"]
    return (f"The seeds vary training only; all runs are scored on the same {test_notes} test notes, so one note "
            f"is {100 / test_notes:.1f} points, and the binomial standard error of an accuracy near {p:.2f} is "
            f"{np.sqrt(p * (1 - p) / test_notes):.3f}.")


def render_report(demo: Demo, summary: dict, results: dict, pretrain_config: dict, best: Path) -> str:
    from . import report

    args = demo.args
    seconds = {name: value for name, value in summary["stage_seconds"].items() if name != "wall"}
    rows = summary["accuracy"]
    first = results[MUSIC][0]
    finetune_minutes = sum(v for k, v in seconds.items() if k.startswith("finetune")) / 60
    # Wall time: stages may have run side by side (--jobs), so their sum can exceed it.
    total_minutes = (summary["stage_seconds"].get("wall", 0.0) + time.perf_counter() - demo.started) / 60
    finetune_setup = (f"recipe `{args.recipe}` plus `{args.finetune_args}`" if args.finetune_args
                      else "feature encoder frozen")
    pretrain_minutes = sum(v for k, v in seconds.items() if k.startswith("pretrain")) / 60
    data_note = ("rendered by the demo in the official layouts, from a General MIDI SoundFont's recorded "
                 "instrument samples and music21's real scores" if not (args.musicnet_dir or args.nsynth_dir)
                 else "given by path")
    lines = [
        "# hf_music_w2v demo report",
        "",
        f"`{summary['command']}` on {summary['machine']}; {total_minutes:.1f} min in all "
        f"(summed over runs, which --jobs {args.jobs} ran that many at a time: pretraining {pretrain_minutes:.1f} "
        f"min, fine-tuning {finetune_minutes:.1f} min).",
        "",
        "Everything below was measured in this run; the figures are in `figures/`, the numbers in "
        "`results.json`, each training run's own output and logs under `pretrain/` and `finetune/`.",
        "",
        "## Setup",
        "",
        f"- **Data** ({data_note}): MusicNet from `{demo.musicnet_dir}`, speech from `{demo.speech_dir}`"
        + ("" if args.speech_dir else " (mini-speech: eSpeak NG voices reading English, as many minutes as "
                                      "mini-MusicNet)")
        + f", NSynth from `{demo.nsynth_dir}` "
        f"({first['train_notes']} train / {first['valid_notes']} valid / {first['test_notes']} test notes; the "
        "splits share no instrument, as in NSynth).",
        f"- **Model**: wav2vec2 with {pretrain_config['num_hidden_layers']} Transformer layers of "
        f"{pretrain_config['hidden_size']}, a {len(pretrain_config['conv_dim'])}-layer conv encoder of "
        f"{pretrain_config['conv_dim'][0]} channels, a {pretrain_config['num_codevector_groups']} x "
        f"{pretrain_config['num_codevectors_per_group']} Gumbel codebook (recipe `{args.recipe}`).",
        *[f"- **Pretraining on {'MusicNet' if init == MUSIC else 'speech'}**: {p['steps']} updates, "
          f"{p['audio_hours_seen']:.2f} h of audio seen, {p['skipped_updates']} skipped; final contrastive loss "
          f"{p['final_contrastive_loss']:.3f} (chance: ln(1 + negatives) = "
          f"{np.log(1 + pretrain_config['num_negatives']):.3f}), codevector perplexity "
          f"{p['final_codevector_perplexity']:.1f}." for init, p in summary["pretraining"].items()],
        "- The two pretrainings share architecture, seed, recipe and budget; they differ in their data alone. "
        "The random network is the one both started from.",
        f"- **Fine-tuning**: both heads jointly, {finetune_setup}, {first['epochs']} epoch(s) "
        f"({first['steps']} updates) per run, seeds {', '.join(map(str, args.seeds))}; every initialisation gets "
        "the same data, schedule and budget. Each run keeps its best epoch on valid and is scored once on test.",
        "",
        "## The paper's claims against this run",
        "",
        *claim_lines(summary["comparisons"], summary["codebook"]),
        "",
        "## Pretraining on MusicNet and on speech",
        "",
        "![pretraining curves, MusicNet](figures/pretrain.png)",
        "",
        "![pretraining curves, speech](figures/pretrain-speech.png)",
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
        "Paired comparisons over the same test notes: each note's accuracy is averaged over an arm's seeds, the "
        "difference is bootstrapped over notes (10,000 resamples), and an arm is called ahead only when the 95% "
        "interval excludes 0. The seeds' standard deviation is given beside it: it measures training noise, "
        "the interval the finite test set.",
        "",
        *report.comparison_lines(summary["comparisons"]),
        "",
        "![fine-tuning curves](figures/finetuning.png)",
        "",
        f"## Instrument-family confusion (music-pretrained, the run best on valid: `{best.name}`)",
        "",
        "![confusion matrix](figures/confusion_matrix.png)",
        "",
        "## Layer-wise probes of the frozen networks",
        "",
        "Every layer of each network before fine-tuning, frozen, probed by `hf-music-w2v probe` (linear and "
        "MARBLE's MLP probe per layer, a learnable weighted sum of layers; 3 seeds; selection on valid). Layer 0 is "
        "the Transformer's input. Full tables: `probes/<network>/probe_results.md`.",
        "",
        probe_table_of(demo),
        "",
        "![probe accuracy per layer](figures/probe_layers.png)",
        "",
        "## The codebook: what the quantizer's discrete codes say about pitch and instrument",
        "",
        f"Each 20 ms frame of {next(iter(summary['codebook'].values()))['notes']} NSynth notes (sounding frames "
        "only, within 40 dB of the note's peak) gets the quantizer's code id; NMI is the normalised mutual "
        "information between those ids and the note's pitch or family (0: unrelated, 1: determined). The "
        "'labels shuffled' columns give the same figure with the labels shuffled between notes: NMI above it is "
        "information, not an artefact of the number of codes. The random model is the network pretraining "
        "started from; the speech checkpoint (if any) is the user's.",
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


def default_jobs() -> int:
    """Small models use a core poorly past one thread, so a CPU runs one training run per core (up to 4)."""
    return 1 if torch.cuda.is_available() else max(1, min(4, os.cpu_count() or 1))


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output_dir", default="demo_output", help="everything goes here (default demo_output)")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="mini",
                        help="mini (default): a small wav2vec2 for a CPU in minutes; paper: wav2vec2-base and the "
                             "paper's settings, for the real datasets on GPUs")
    parser.add_argument("--musicnet_dir", default=None, help="real MusicNet (default: render mini-MusicNet)")
    parser.add_argument("--nsynth_dir", default=None, help="real NSynth (default: render mini-NSynth)")
    parser.add_argument("--speech_dir", default=None,
                        help="a speech corpus to pretrain the speech arm on, any folder of audio such as "
                             "LibriSpeech (default: render mini-speech)")
    parser.add_argument("--speech_model", default=None,
                        help="a fourth arm: a wav2vec2 speech checkpoint (folder or Hub id, e.g. "
                             "facebook/wav2vec2-base) fine-tuned, probed and analysed beside the demo's own")
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
    parser.add_argument("--notes_per_instrument", type=int, default=6,
                        help="mini-NSynth notes per train and valid instrument (default 6)")
    parser.add_argument("--test_notes_per_instrument", type=int, default=20,
                        help="mini-NSynth notes per test instrument (default 20: 220 test notes, one note < 0.5 "
                             "points)")
    parser.add_argument("--musicnet_seconds", type=float, default=120.0,
                        help="seconds rendered of each mini-MusicNet score (default 120)")
    parser.add_argument("--codebook_max_notes", type=int, default=2000, help="NSynth notes in the codebook analysis")
    parser.add_argument("--jobs", type=int, default=default_jobs(),
                        help="training runs at a time (the two pretrainings, then the fine-tunings); on a CPU the "
                             "cores are shared out between them. Default: 1 with a GPU, else up to 4, one per core "
                             f"(here {default_jobs()}); two 1-thread runs beat two 2-thread runs in turn by 1.33x "
                             "on 2 cores (BENCHMARKS.md)")
    parser.add_argument("--fresh", action="store_true", help="delete OUTPUT_DIR first instead of resuming")
    parser.add_argument("--quiet", action="store_true", help="training output to the logs only, not the terminal")
