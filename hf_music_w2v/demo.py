"""The paper's comparison end to end: pretrain on music and on speech, fine-tune and probe on NSynth, report.

    hf-music-w2v demo --output_dir demo_output                      # miniature datasets rendered here, CPU
    hf-music-w2v demo --musicnet_dir M --nsynth_dir N --recipe paper --accelerate_config C   # the real thing

Stages, each training run a real `accelerate launch` of the package's programs (the recipe `--recipe` names,
`recipes/{pretrain,finetune}-<recipe>.json`) with its log in OUT/logs/:
 1. data: render mini-MusicNet, mini-speech and mini-NSynth (skipped for datasets given by path);
 2. pretrain: `hf-music-w2v pretrain` of the same architecture and budget on MusicNet and on speech
    (`--audio_dir`), once per pretraining seed, so a music and a speech network of one seed differ in their
    data alone;
 3. random init: the network each pretraining seed started from, saved (the random arm);
 4. fine-tune: `hf-music-w2v finetune` from every network (and from a speech checkpoint when one is given,
    `--speech_model`), each with every fine-tuning seed and the same budget;
 5. probes: `hf-music-w2v probe` of every layer of every network;
 6. codebook: NMI between the quantizer's code ids and pitch / family, for every network;
 7. hub: the best-on-valid music-pretrained run packaged for the Hub, with the widget models;
 8. report: OUT/results.json (the figures, compared by `--expect`), OUT/REPORT.md and its figures.
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
from .hub import load_pretrained
from .report import CHECKPOINT, MUSIC, RANDOM, SPEECH
from .training.launch import launch_command, launch_environment
from .training.layout import HEADS, RunLayout

# C and G in every octave of the MIDI piano range: each mini instrument plays some of them, so the NSynth splits
# share their pitches as the real ones do and pitch is learnable from a few notes per instrument.
PITCH_GRID = tuple(p for p in range(21, 109) if p % 12 in (0, 7))
#: The training recipes the demo can run (packaged `recipes/{pretrain,finetune}-<name>.json`).
RECIPES = ("mini", "paper")

RUN_NAMES = {MUSIC: "music", SPEECH: "speech", RANDOM: "random", CHECKPOINT: "checkpoint"}
#: The pretrainings the demo runs itself, and the data flag each gives `hf-music-w2v pretrain`.
PRETRAINED = (MUSIC, SPEECH)
#: The number format of the demo's training runs, whatever the machine (`--mixed_precision` of the programs);
#: probes and the codebook analysis run in fp32.
TRAINING_PRECISION = "bf16"


@dataclass(frozen=True)
class Network:
    """One network an arm fine-tunes and probes: a pretraining run, its starting point, or the user's checkpoint."""

    arm: str
    seed: int | None  # the pretraining seed (random init: the seed its weights were drawn with)

    @property
    def name(self) -> str:
        return RUN_NAMES[self.arm] if self.seed is None else f"{RUN_NAMES[self.arm]}-p{self.seed}"


class DemoError(RuntimeError):
    """A stage failed; the message names it and its log."""


# The flags that change what a finished stage produced: resuming under other values would mix two experiments.
SETTINGS = ("recipe", "musicnet_dir", "nsynth_dir", "speech_dir", "pretrain_steps", "finetune_epochs",
            "pretrain_args", "finetune_args", "pretrain_seeds", "seeds", "data_seed", "notes_per_instrument",
            "test_notes_per_instrument", "musicnet_seconds", "speech_model", "codebook_max_notes")


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
        self.networks = {init: [Network(init, None)] if init == CHECKPOINT else
                         [Network(init, seed) for seed in args.pretrain_seeds] for init in self.inits}
        self.check_inputs()

    def check_inputs(self) -> None:
        """Datasets, models and the recorded results given by the user must be there before minutes of work start."""
        from . import report
        from .data.musicnet import find_root
        from .data.nsynth import find_split_dir
        from .data.validation import DataError

        for flag in ("seeds", "pretrain_seeds"):
            values = getattr(self.args, flag)
            if len(set(values)) != len(values):
                raise DemoError(f"--{flag} {' '.join(map(str, values))}: each seed once, please")
        if self.args.expect:
            try:
                report.load_results(self.args.expect)
            except ValueError as error:
                raise DemoError(f"--expect {error}") from None

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
            from .presets import load_wav2vec2_config

            try:
                load_wav2vec2_config(self.args.speech_model)
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

    @property
    def threads_per_run(self) -> int:
        """CPU threads of each training run: the cores shared out between --jobs runs (a count that can move the
        figures, so results.json records it)."""
        return max(1, torch.get_num_threads() // self.args.jobs)

    def launch(self, program: str, arguments: list[str]) -> list[str]:
        """The `accelerate launch` command of a training run; with --jobs N the CPU's cores are shared out."""
        return launch_command(program, arguments, self.args.accelerate_config, cpu_threads=self.threads_per_run)

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
    def pretrain_dir(self, network: Network) -> Path:
        return self.out / "pretrain" / network.name

    def pretrain_arguments(self, network: Network) -> list[str]:
        """The pretraining program's arguments: the recipe, the demo's, then the user's `--pretrain_args` (which win).

        Music and speech runs of one seed differ in their data flag alone."""
        steps = self.args.pretrain_steps
        data = (["--musicnet_dir", str(self.musicnet_dir)] if network.arm == MUSIC
                else ["--audio_dir", str(self.speech_dir)])
        return ["--recipe", self.args.recipe, *data,
                "--output_dir", str(self.pretrain_dir(network)), "--cache_dir", str(self.out / "cache"),
                "--seed", str(network.seed), "--mixed_precision", TRAINING_PRECISION,
                "--resume_from_checkpoint", "latest",
                *(["--max_train_steps", str(steps)] if steps else []), *shlex.split(self.args.pretrain_args)]

    def pretrain(self, network: Network) -> None:
        run_logged(self.launch("pretrain", self.pretrain_arguments(network)),
                   self.out / "logs" / f"pretrain-{network.name}.log", f"pretrain {network.name}", self.echo)

    # Stage 3: the random arm.
    def random_dir(self, network: Network) -> Path:
        """The network a pretraining seed started from (same seed and config), for fine-tuning, probes, codebook."""
        return self.out / "random-init" / network.name

    def save_random_networks(self) -> None:
        from transformers import Wav2Vec2ForPreTraining

        for network in self.networks[RANDOM]:
            if (self.random_dir(network) / "config.json").is_file():
                continue
            config = Wav2Vec2ForPreTraining.config_class.from_pretrained(self.pretrain_dir(Network(MUSIC, network.seed)))
            # As the training engine builds the model: right after `torch.manual_seed(seed)`.
            torch.manual_seed(network.seed)
            with staged_directory(self.random_dir(network)) as staging:
                Wav2Vec2ForPreTraining(config).save_pretrained(staging)

    def random_ready(self) -> bool:
        return all((self.random_dir(network) / "config.json").is_file() for network in self.networks[RANDOM])

    def network_path(self, network: Network) -> str:
        """Where a network's weights are: a pretraining output, a saved starting point or the user's checkpoint."""
        if network.arm == CHECKPOINT:
            return self.args.speech_model
        return str(self.random_dir(network) if network.arm == RANDOM else self.pretrain_dir(network))

    # Stage 4: fine-tuning.
    def run_dir(self, network: Network, seed: int) -> Path:
        return self.out / "finetune" / f"{network.name}-seed{seed}"

    def finetune_arguments(self, network: Network, seed: int) -> list[str]:
        """The fine-tuning program's arguments for one run: identical for every network but the starting weights."""
        epochs = self.args.finetune_epochs
        return ["--recipe", self.args.recipe, "--model_name_or_path", self.network_path(network), "--nsynth_dir",
                str(self.nsynth_dir), "--output_dir", str(self.run_dir(network, seed)), "--cache_dir",
                str(self.out / "cache"), "--seed", str(seed), "--mixed_precision", TRAINING_PRECISION,
                "--resume_from_checkpoint", "latest", *(["--num_train_epochs", str(epochs)] if epochs else []),
                *shlex.split(self.args.finetune_args)]

    def finetune(self, network: Network, seed: int) -> None:
        name = self.run_dir(network, seed).name
        run_logged(self.launch("finetune", self.finetune_arguments(network, seed)),
                   self.out / "logs" / f"finetune-{name}.log", f"finetune {name}", self.echo)

    def all_networks(self) -> list[Network]:
        return [network for init in self.inits for network in self.networks[init]]

    # Stage 5: layer-wise probes.
    def probe_dir(self, network: Network) -> Path:
        return self.out / "probes" / network.name

    def probes(self) -> None:
        from .probing import ProbeSettings, probe_model

        device = "cuda" if torch.cuda.is_available() else "cpu"
        for network in self.all_networks():
            report = probe_model(self.network_path(network), str(self.nsynth_dir), self.probe_dir(network),
                                 ProbeSettings(), device=device, cache_dir=str(self.out / "cache"))
            self.say(f"probes of {network.name}: " + ", ".join(
                f"{task} {entry['test_accuracy']:.3f} (layer {entry['layer']}, {entry['probe']})"
                for task, entry in best_probes(report).items()))

    # Stage 6: codebook analysis.
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
        scores = {}
        for network in self.all_networks():
            model = load_pretrained(Wav2Vec2ForPreTraining, str(self.network_path(network)))
            scores[network.name] = analyse_codebook(model, notes, device=device).scores()
            self.say(f"codebook of {network.name}: pitch NMI {scores[network.name]['pitch_nmi']:.3f}, "
                     f"family NMI {scores[network.name]['family_nmi']:.3f}")
        write_text_atomic(self.out / "codebook.json", json.dumps(scores, indent=2))

    # Stage 7: the Hub-ready folder.
    def best_music_run(self) -> Path:
        runs = [self.run_dir(network, seed) for network in self.networks[MUSIC] for seed in self.args.seeds]
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
            for network in self.networks[init]:
                stages.append((f"pretrain {network.name}", RunLayout(self.pretrain_dir(network)).is_finished(),
                               lambda network=network: self.pretrain(network)))
        stages.append(("random init", self.random_ready(), self.save_random_networks))
        for network in self.all_networks():
            for seed in self.args.seeds:
                run = self.run_dir(network, seed)
                stages.append((f"finetune {run.name}", RunLayout(run).is_finished(),
                               lambda network=network, seed=seed: self.finetune(network, seed)))
        return stages + [("probes", False, self.probes), ("codebook", False, self.codebook),
                         ("hub", False, self.package), ("report", False, self.report)]

    def run(self) -> Path:
        if self.args.fresh and self.out.exists():
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.state.settings = self.settings
        self.state.write(self.state_path)
        start = self.started = time.perf_counter()
        planned = self.stages()
        stages = [(f"[{number}/{len(planned)}] {name}", done, work, name)
                  for number, (name, done, work) in enumerate(planned, 1)]
        # Training runs of one kind (the pretrainings, the fine-tunings) are independent: --jobs of them at once.
        for _, group in itertools.groupby(stages, key=lambda stage: stage[3].split(" ")[0]):
            self.run_together(list(group))
        with self.lock:
            self.state.seconds["wall"] = self.state.seconds.get("wall", 0.0) + time.perf_counter() - start
            self.state.write(self.state_path)
        self.say(f"finished in {(time.perf_counter() - start) / 60:.1f} min; report: {self.out / 'REPORT.md'}")
        if self.args.expect:
            self.compare_with_expected()
        return self.out / "REPORT.md"

    def compare_with_expected(self) -> None:
        """`--expect`: the run's figures must be the recorded ones; the first that differs is named."""
        from . import report

        recorded = report.load_results(self.args.expect)
        measured = json.loads((self.out / "results.json").read_text())
        difference = report.first_difference(recorded, measured)
        if difference:
            machine = recorded[report.RUN_KEY]["machine"]
            elsewhere = ("" if machine == measured[report.RUN_KEY]["machine"] else
                         f" The recorded run was made on another machine ({machine}); figures are reproducible on "
                         "the machine they were recorded on.")
            raise DemoError(
                f"this run's figures differ from {self.args.expect}; the first difference: {difference}.{elsewhere} "
                f"The run is in "
                f"{self.out / 'results.json'}. If the change was meant to move the figures, record a fresh-clone run: "
                f"cp {self.out / 'results.json'} {self.args.expect} && hf-music-w2v results {self.args.expect} "
                "--readme README.md")
        self.say(f"every figure is the one recorded in {self.args.expect} (recorded at commit "
                 f"{recorded[report.RUN_KEY]['commit']}, {recorded[report.RUN_KEY]['date']})")

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

    # Stage 8: the report.
    def report(self) -> None:
        from . import plotting, report

        figures = self.out / "figures"
        results = self.results()
        for network in results["pretraining"]:
            plotting.plot_pretraining(RunLayout(self.out / "pretrain" / network).read_metrics(),
                                      figures / f"pretrain-{network}.png", results["model"]["codebook_groups"])
        plotting.plot_finetuning({init: [RunLayout(self.run_dir(network, s)).read_metrics()
                                         for network in self.networks[init] for s in self.args.seeds]
                                  for init in self.inits}, figures / "finetuning.png")
        plotting.plot_codebook(results["codebook"], figures / "codebook_nmi.png")
        shutil.copyfile(self.out / "finetune" / results["best_music_run"] / "confusion_matrix.png",
                        figures / "confusion_matrix.png")
        plotting.plot_probe_layers({network.name: json.loads((self.probe_dir(network) / "probe_results.json")
                                                             .read_text()) for network in self.all_networks()},
                                   figures / "probe_layers.png")
        write_text_atomic(self.out / "results.json", json.dumps(results, indent=2))
        write_text_atomic(self.out / "REPORT.md", report.render_report(results))

    def results(self) -> dict:
        """results.json: the run's figures, and under `run` what describes the run rather than its figures."""
        import soundfile as sf

        from . import report
        from .data import load_nsynth

        config = json.loads((self.pretrain_dir(self.networks[MUSIC][0]) / "config.json").read_text())
        finetuned = {init: [[RunLayout(self.run_dir(network, s)).read_results() for s in self.args.seeds]
                            for network in self.networks[init]] for init in self.inits}
        first = finetuned[MUSIC][0][0]
        test = load_nsynth(self.nsynth_dir, "test", cache_dir=self.out / "cache")
        correct = {}
        notes = None
        for init in self.inits:
            per_head = {head: [] for head in HEADS}
            for network in self.networks[init]:
                predictions = [json.loads((self.run_dir(network, s) / "test_predictions.json").read_text())
                               for s in self.args.seeds]
                for head in HEADS:
                    names, answers = report.note_correctness(predictions, head)
                    notes = names if notes is None else notes
                    if names != notes:
                        raise DemoError(f"{self.run_dir(network, self.args.seeds[0])} was scored on other test "
                                        "notes than the other runs; the comparisons pair notes, so they must match")
                    per_head[head].append(answers)
            correct[init] = {head: np.stack(values) for head, values in per_head.items()}
        probes = {}
        for network in self.all_networks():
            probe = json.loads((self.probe_dir(network) / "probe_results.json").read_text())
            probes[network.name] = {task: {"best": probe_summary(entry), "last_linear": probe_summary(
                last_linear_probe(probe, task))} for task, entry in best_probes(probe).items()}
        pretraining = {}
        for init in PRETRAINED:
            for network in self.networks[init]:
                done = RunLayout(self.pretrain_dir(network)).read_results()
                pretraining[network.name] = {key: done[key] for key in (
                    "steps", "audio_hours_seen", "skipped_updates", "final_contrastive_loss",
                    "final_codevector_perplexity")}
        def minutes(folder: Path, pattern: str) -> float:
            return sum(sf.info(path).duration for path in sorted(folder.glob(pattern))) / 60

        rendered = not (self.args.musicnet_dir or self.args.nsynth_dir)
        return {
            "settings": self.settings,
            # How the work was split: the thread counts can change float rounding, so they are compared too.
            "execution": {"jobs": self.args.jobs, "threads_per_training_run": self.threads_per_run,
                          "threads_of_probes_and_codebook": torch.get_num_threads()},
            "precision": {"training": f"{TRAINING_PRECISION} autocast", "analysis": "fp32"},
            "data": {"source": "rendered by the demo in the official layouts" if rendered else "given by path",
                     "train_notes": first["train_notes"], "valid_notes": first["valid_notes"],
                     "test_notes": first["test_notes"], "test_instruments": len(set(test["instrument"])),
                     "musicnet_train_minutes": minutes(self.musicnet_dir, "**/train_data/*.wav"),
                     "speech_minutes": minutes(self.speech_dir, "**/*.flac")},
            "model": {"layers": config["num_hidden_layers"], "hidden_size": config["hidden_size"],
                      "conv_layers": len(config["conv_dim"]), "conv_channels": config["conv_dim"][0],
                      "codebook_groups": config["num_codevector_groups"],
                      "codevectors_per_group": config["num_codevectors_per_group"],
                      "negatives": config["num_negatives"]},
            "networks": {init: [network.name for network in self.networks[init]] for init in self.inits},
            "pretraining": pretraining,
            "finetuning": {"epochs": first["epochs"], "steps": first["steps"],
                           "setup": (f"recipe `{self.args.recipe}` plus `{self.args.finetune_args}`"
                                     if self.args.finetune_args else f"recipe `{self.args.recipe}`")},
            "accuracy": report.accuracy_rows(finetuned),
            "chance": {"pitch": int(max(np.bincount(test["pitch"]))) / len(test),
                       "instrument": int(max(np.bincount(test["instrument_family"]))) / len(test)},
            "comparisons": report.paired_comparisons(correct),
            "probes": probes,
            "codebook": json.loads((self.out / "codebook.json").read_text()),
            "best_music_run": self.best_music_run().name,
            report.RUN_KEY: {"stage_seconds": {**self.state.seconds,
                                                "wall": self.state.seconds.get("wall", 0.0)
                                                + time.perf_counter() - self.started},
                             "machine": machine_description(), "command": self.args.invocation,
                             "commit": source_commit(), "date": time.strftime("%Y-%m-%d"),
                             "output_dir": str(self.out)},
        }


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, with whether it computes bf16 natively (it changes the figures)."""
    from .precision import bf16_is_native

    try:
        text = Path("/proc/cpuinfo").read_text()
        name = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{name} ({'native' if bf16_is_native('cpu') else 'emulated'} bf16)"


def machine_description() -> str:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.system()} {platform.machine()}, {cpu_name()}, {os.cpu_count()} CPU cores, {device}, "
            f"torch {torch.__version__}, Python {platform.python_version()}")


def best_probes(probe_report: dict) -> dict[str, dict]:
    """Per task, the probe entry (layer and kind) best on valid, with its test accuracy."""
    return {task: max((e for e in probe_report["results"] if e["task"] == task), key=lambda e: e["valid_accuracy"])
            for task in ("pitch", "instrument")}


def probe_summary(entry: dict) -> dict:
    """The fields of a probe result that the report shows."""
    return {key: entry[key] for key in ("layer", "probe", "valid_accuracy", "test_accuracy", "test_accuracy_std")}


def last_linear_probe(probe_report: dict, task: str) -> dict:
    last = max(e["layer"] for e in probe_report["results"] if isinstance(e["layer"], int))
    return next(e for e in probe_report["results"] if e["task"] == task and e["layer"] == last and e["probe"] == "linear")


def source_commit() -> str:
    """The git commit the package runs from (with "+changes" when its tree differs), or "unknown"."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if changed else "")


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
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                        help="fine-tuning seeds, each run on every network (default 0 1)")
    parser.add_argument("--pretrain_seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="pretraining seeds: each pretrained arm is one pretraining run per seed, and the random "
                             "arm the networks they started from (default 0 1 2)")
    parser.add_argument("--pretrain_steps", type=int, default=None, help="pretraining updates (default: the recipe's, 800 for mini)")
    parser.add_argument("--finetune_epochs", type=int, default=None,
                        help="epochs per fine-tuning run (default 15 mini, 10 paper)")
    parser.add_argument("--pretrain_args", default="",
                        help="extra `hf-music-w2v pretrain` arguments in one string: --pretrain_args='--max_grad_norm 10'")
    parser.add_argument("--finetune_args", default="",
                        help="extra `hf-music-w2v finetune` arguments in one string: --finetune_args=--freeze_base_model")
    parser.add_argument("--accelerate_config", default=None,
                        help="accelerate config for every training run (default: one local process)")
    parser.add_argument("--data_seed", type=int, default=0, help="seed of the rendered mini datasets")
    parser.add_argument("--notes_per_instrument", type=int, default=6,
                        help="mini-NSynth notes per train and valid instrument (default 6)")
    parser.add_argument("--test_notes_per_instrument", type=int, default=30,
                        help="mini-NSynth notes per test instrument, at most (default 30: 655 test notes of 22 "
                             "instruments; the narrowest instruments have fewer distinct notes)")
    parser.add_argument("--musicnet_seconds", type=float, default=120.0,
                        help="seconds rendered of each mini-MusicNet score (default 120)")
    parser.add_argument("--codebook_max_notes", type=int, default=2000, help="NSynth notes in the codebook analysis")
    parser.add_argument("--jobs", type=int, default=default_jobs(),
                        help="training runs at a time (the pretrainings, then the fine-tunings); on a CPU the "
                             "cores are shared out between them. Default: 1 with a GPU, else up to 4, one per core "
                             f"(here {default_jobs()}); two 1-thread runs beat two 2-thread runs in turn by 1.33x "
                             "on 2 cores (BENCHMARKS.md)")
    parser.add_argument("--fresh", action="store_true", help="delete OUTPUT_DIR first instead of resuming")
    parser.add_argument("--quiet", action="store_true", help="training output to the logs only, not the terminal")
    parser.add_argument("--expect", default=None, metavar="RESULTS_JSON",
                        help="after the run, compare its results.json with this recorded one (e.g. "
                             "docs/demo_results.json; timings, machine and commands aside) and fail naming the first "
                             "figure that differs: `make reproduce`")
