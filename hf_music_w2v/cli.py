"""`hf-music-w2v`: the package's command line.

    hf-music-w2v demo --output_dir demo_output
    hf-music-w2v pretrain --musicnet_dir DIR --output_dir OUT [--recipe mini] [--num_processes N] [...]
    hf-music-w2v finetune --model_name_or_path MODEL --nsynth_dir DIR --output_dir OUT [...]
    hf-music-w2v results docs/demo_results.json [--readme README.md [--check]]
    hf-music-w2v make-mini-datasets data/mini --seed 0 [--tasks]
    hf-music-w2v predict MODEL note.wav song.flac [--top_k 3] [--json]
    hf-music-w2v embed MODEL *.wav --layer 6 --output embeddings.npz
    hf-music-w2v export-onnx MODEL model.onnx
    hf-music-w2v probe MODEL --nsynth_dir DIR --output_dir OUT [--layers 0 6 12] [--pitch_classes 88]
    hf-music-w2v probe MODEL --tasks pitch tasks/gtzan tasks/hear/beijing_opera --nsynth_dir DIR --output_dir OUT
    hf-music-w2v convert-fairseq CHECKPOINT.pt OUTPUT_DIR
    hf-music-w2v push RUN_DIR --hub_model_id USER/NAME [--hub_token TOKEN]
"""

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoFeatureExtractor, AutoModel
from transformers.utils import logging

from . import demo as demo_module
from . import probing as probing_module
from .demo import Demo, add_demo_arguments
from .errors import report_user_errors
from .modeling_music_wav2vec2 import Wav2Vec2ForMusicClassification
from .precision import PRECISIONS, resolve_precision
from .training.launch import PROGRAMS, launch

logger = logging.get_logger(__name__)

def run_demo(args: argparse.Namespace) -> int:
    Demo(args).run()
    return 0


#: What Ctrl-C in a command prints, by command (`{...}`: its options).
INTERRUPTED = {
    "demo": "interrupted: run the same command again to resume (finished stages are kept, training runs continue "
            "from their latest checkpoint in {output_dir})",
}


def run_results(args: argparse.Namespace) -> int:
    from . import report
    from .atomic import write_text_atomic

    if args.check and not args.readme:
        print("error: --check compares a README with the results: give --readme README.md too", file=sys.stderr)
        return 2
    try:
        results = report.load_results(args.results)
        if not args.readme:
            print(report.readme_results(results))
            return 0
        readme = Path(args.readme).read_text()
        updated = report.replace_readme_results(readme, results)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.check:
        if updated != readme:
            print(f"error: the Results section of {args.readme} is not the one {args.results} gives; run "
                  f"hf-music-w2v results {args.results} --readme {args.readme}", file=sys.stderr)
            return 1
        print(f"{args.readme}: its Results section is the one {args.results} gives")
        return 0
    if updated != readme:
        write_text_atomic(Path(args.readme), updated)
    print(f"{args.readme}: Results section generated from {args.results}")
    return 0


def run_make_mini_datasets(args: argparse.Namespace) -> int:
    from .data.mini import make_mini_musicnet, make_mini_nsynth
    from .data.mini_speech import make_mini_speech

    out_dir = Path(args.out_dir)
    nsynth = make_mini_nsynth(out_dir / "nsynth", seed=args.seed, notes_per_instrument=args.notes_per_instrument,
                              soundfont=args.soundfont, pitches=args.pitches)
    musicnet = make_mini_musicnet(out_dir / "musicnet", seed=args.seed, seconds=args.musicnet_seconds,
                                  soundfont=args.soundfont)
    print(f"mini-NSynth in {out_dir / 'nsynth'}: " + ", ".join(f"{k} {v} notes" for k, v in nsynth.items()))
    print(f"mini-MusicNet in {out_dir / 'musicnet'}: " + ", ".join(f"{k} {v} recordings" for k, v in musicnet.items()))
    speech = make_mini_speech(out_dir / "speech", seed=args.seed, seconds_per_speaker=args.speech_seconds)
    print(f"mini-speech in {speech}: {len(list(speech.rglob('*.flac')))} utterances")
    if args.tasks:
        from .data.mini_tasks import write_mini_tasks

        tasks = write_mini_tasks(out_dir, out_dir / "tasks", seed=args.seed)
        print(f"probe tasks in {out_dir / 'tasks'}: "
              + " ".join(str(folder.relative_to(out_dir / "tasks")) for folder in tasks.values()))
    return 0


def default_batch_size(args: argparse.Namespace) -> int:
    """16 windows on a GPU; on a CPU the fastest measured (BENCHMARKS.md): 8 in bf16, 4 in fp32, where larger
    batches' activations overflow the caches and every window runs slower."""
    if args.batch_size:
        return args.batch_size
    if str(args.device).startswith("cuda"):
        return 16
    return 8 if resolve_precision(args.precision, args.device) == "bf16" else 4


#: Model types `predict` and `embed` run: this package's classifier and the wav2vec2 checkpoints it builds on.
INFERENCE_MODEL_TYPES = ("music_wav2vec2", "wav2vec2")


def load_inference_config(name: str):
    """The config of MODEL (a folder or Hub id); errors say what MODEL was expected to be."""
    from transformers import AutoConfig

    from .hub import model_location_problem

    problem = model_location_problem(name)
    if problem:
        raise SystemExit(f"error: {problem}")
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: cannot load a model from {name!r}: {str(error).splitlines()[0]}") from None
    if config.model_type not in INFERENCE_MODEL_TYPES:
        raise SystemExit(f"error: {name} is a {config.model_type} model; expected a wav2vec2 checkpoint or a "
                         "music_wav2vec2 classifier")
    return config


def load_for_inference(name: str, device: str, model_class=AutoModel, config=None):
    """Model and feature extractor from a folder or Hub id (`config`: its config, if already loaded)."""
    from .hub import load_pretrained, music_feature_extractor, quiet_loading

    config = config or load_inference_config(name)
    model = load_pretrained(model_class, name, config=config)
    try:
        with quiet_loading():
            extractor = AutoFeatureExtractor.from_pretrained(name)
    except (OSError, ValueError):
        extractor = music_feature_extractor(model.config)
    return model.to(device), extractor


def widget_head(config) -> str | None:
    """The head an exported widget folder (`Wav2Vec2ForSequenceClassification`) answers, or None."""
    if config.model_type == "wav2vec2" and "Wav2Vec2ForSequenceClassification" in (config.architectures or []):
        return "pitch" if config.num_labels == 128 else "instrument"
    return None


def predict_heads(config) -> dict[str, dict[int, str]]:
    """Head name -> class names of what MODEL answers; SystemExit if it answers nothing."""
    if config.model_type == "music_wav2vec2":
        return {"pitch": config.pitch_id2label, "instrument": config.id2label}
    head = widget_head(config)
    if head is None:
        raise SystemExit(f"error: this model is a {config.model_type} backbone without classification heads; "
                         "predict needs a fine-tuned classifier (hf-music-w2v finetune output, or one of its "
                         "exported widget folders). For backbones use `embed`.")
    return {head: {int(k): v for k, v in config.id2label.items()}}


def run_predict(args: argparse.Namespace) -> int:
    from transformers import AutoModelForAudioClassification

    from .inference import AudioRunner, class_probabilities, top_classes

    config = load_inference_config(args.model)
    heads = predict_heads(config)
    if args.top_k > max(len(labels) for labels in heads.values()):
        raise SystemExit(f"error: --top_k {args.top_k} is more than the model's classes "
                         f"({', '.join(f'{h}: {len(v)}' for h, v in heads.items())})")
    model, extractor = load_for_inference(args.model, args.device, AutoModelForAudioClassification, config)
    if len(heads) == 1:
        (head,) = heads

        def outputs_fn(model, inputs):
            return {head: model(**inputs).logits.softmax(-1)}
    else:
        outputs_fn = class_probabilities
    runner = make_runner(AudioRunner, model, extractor, outputs_fn, args)
    titles = {"pitch": "pitch", "instrument": "instrument family"}
    results = []
    for result in runner.run(args.files):
        results.append(result)
        if result.silent:
            # JSON has no -Infinity: an all-zero file's level is null.
            level = result.level_dbfs if np.isfinite(result.level_dbfs) else None
            print(json.dumps({"file": result.path, "silent": True, "level_dbfs": level,
                              "seconds": round(result.seconds, 3)}, allow_nan=False) if args.json
                  else f"{result.error}", flush=True)
            continue
        if result.error:
            print(f"error: {result.error}", file=sys.stderr, flush=True)
            continue
        ranked = {head: top_classes(result.outputs[head], labels, min(args.top_k, len(labels)))
                  for head, labels in heads.items()}
        if args.json:
            row = {"file": result.path, "seconds": round(result.seconds, 3), "windows": result.windows}
            if "pitch" in ranked:
                row["pitch"] = [{"midi": i, "name": name, "probability": p} for i, name, p in ranked["pitch"]]
            if "instrument" in ranked:
                row["instrument"] = [{"name": name, "probability": p} for _, name, p in ranked["instrument"]]
            print(json.dumps(row), flush=True)
        else:
            parts = []
            if "pitch" in ranked:
                parts.append("pitch " + ", ".join(f"{name} (MIDI {i}) {p:.3f}" for i, name, p in ranked["pitch"]))
            if "instrument" in ranked:
                parts.append(f"{titles['instrument']} " + ", ".join(f"{name} {p:.3f}"
                                                                    for _, name, p in ranked["instrument"]))
            print(f"{result.path}: {' | '.join(parts)} [{result.seconds:.1f} s, {result.windows} window(s)]",
                  flush=True)
    return report_failures(results)


def make_runner(runner_class, model, extractor, outputs_fn, args: argparse.Namespace):
    try:
        return runner_class(model, extractor, outputs_fn, batch_size=default_batch_size(args),
                            window_seconds=args.window_seconds, device=args.device, precision=args.precision)
    except ValueError as error:  # a window shorter than the model's receptive field
        raise SystemExit(f"error: --{error}") from None


def report_failures(results) -> int:
    """The closing counts on stderr. Exit status 1 when a file could not be processed; silent files are
    skipped (nothing to classify), counted, and do not change the status."""
    failed = [result for result in results if result.error and not result.silent]
    silent = [result for result in results if result.silent]
    if silent:
        print(f"{len(silent)} of {len(results)} file(s) silent, skipped: " + ", ".join(r.path for r in silent),
              file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(results)} file(s) could not be processed", file=sys.stderr)
        for result in failed:
            print(f"  {result.path}", file=sys.stderr)
    return 1 if failed else 0


def run_embed(args: argparse.Namespace) -> int:
    from .inference import AudioRunner, layer_embedding, save_embeddings

    model, extractor = load_for_inference(args.model, args.device)
    num_layers = model.config.num_hidden_layers
    if not -(num_layers + 1) <= args.layer <= num_layers:
        raise SystemExit(f"error: --layer must be in [0, {num_layers}] (0: Transformer input, {num_layers}: last "
                         f"layer) or negative from the end, got {args.layer}")
    runner = make_runner(AudioRunner, model, extractor, layer_embedding(args.layer), args)
    results = list(runner.run(args.files))
    done = [result for result in results if not result.error]
    for result in results:
        if result.error:
            print(f"error: {result.error}", file=sys.stderr)
    if done:
        import numpy as np

        embeddings = np.stack([result.outputs["embedding"] for result in done])
        path = save_embeddings(args.output, [result.path for result in done], embeddings, args.layer)
        print(f"wrote {embeddings.shape[0]} embedding(s) of size {embeddings.shape[1]} (layer {args.layer}) to {path}")
    return report_failures(results)


def check_inference_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Argument errors before any model or audio is loaded (exit status 2, as argparse)."""
    if not args.window_seconds > 0:
        parser.error(f"--window_seconds must be positive, got {args.window_seconds}")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
    if getattr(args, "top_k", 1) < 1:
        parser.error(f"--top_k must be >= 1, got {args.top_k}")
    output = getattr(args, "output", None)
    if output is not None:
        output = Path(output)
        if output.suffix != ".npz":
            parser.error(f"--output must end in .npz (embeddings, file names and layer in one file), got {output}")
        folder = next((p for p in [output.parent, *output.parent.parents] if p.exists()), Path("."))
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            parser.error(f"--output {output}: cannot write in {folder}")


def run_export_onnx(args: argparse.Namespace) -> int:
    from .audio import harmonic_note
    from .onnx_export import export_onnx, onnx_difference, require_onnx

    try:
        require_onnx()
    except ImportError as error:
        raise SystemExit(f"error: {error}") from None
    if Path(args.output).suffix != ".onnx":
        raise SystemExit(f"error: OUTPUT must end in .onnx, got {args.output}")
    config = load_inference_config(args.model)
    if config.model_type != "music_wav2vec2":
        raise SystemExit(f"error: {args.model} is a {config.model_type} model; export-onnx exports the two-head "
                         "music_wav2vec2 classifier (hf-music-w2v finetune output)")
    model = Wav2Vec2ForMusicClassification.from_pretrained(args.model).eval()
    path = export_onnx(model, args.output, opset=args.opset)
    # Check the graph on two test notes of different lengths, normalised as the feature extractor does.
    notes = np.stack([harmonic_note(60, seconds=4.0), harmonic_note(69, seconds=4.0)])
    notes = (notes - notes.mean(axis=1, keepdims=True)) / np.sqrt(notes.var(axis=1, keepdims=True) + 1e-7)
    difference = max(onnx_difference(model, path, notes), onnx_difference(model, path, notes[:1, :24_000]))
    print(f"wrote {path} (outputs {', '.join(('pitch_logits', 'instrument_logits'))}); onnxruntime agrees with "
          f"PyTorch within {difference:.2e}")
    return 0 if difference < 1e-4 else 1


def task_kinds(values: list[str] | None) -> str | dict[str, str] | None:
    """--task_kind's values: one KIND for every folder task, or NAME=KIND entries."""
    from .probing import ProbeError
    from .task_folders import KINDS

    if not values:
        return None
    if len(values) == 1 and "=" not in values[0]:
        kinds = values[0]
    else:
        pairs = [value.partition("=") for value in values]
        if any(not sep or not name for name, sep, _ in pairs):
            raise ProbeError(f"--task_kind takes one KIND or NAME=KIND entries, got {' '.join(values)}")
        kinds = {name: kind for name, _, kind in pairs}
    for kind in [kinds] if isinstance(kinds, str) else kinds.values():
        if kind not in KINDS:
            raise ProbeError(f"--task_kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return kinds


def run_probe(args: argparse.Namespace) -> int:
    from .probing import TASKS, ProbeError, ProbeSettings, probe_model, probe_tasks

    settings = ProbeSettings(tasks=args.tasks, layers=args.layers, probes=args.probe,
                             weighted_sum=not args.no_weighted_sum, pitch_classes=args.pitch_classes, seeds=args.seeds,
                             batch_size=args.batch_size, probe_batch_size=args.probe_batch_size,
                             learning_rate=args.learning_rate, max_epochs=args.max_epochs, patience=args.patience,
                             max_notes=args.max_notes, window_seconds=args.window_seconds)
    try:
        if set(args.tasks) <= set(TASKS):
            if args.nsynth_dir is None:
                raise ProbeError(f"--nsynth_dir is needed for the built-in tasks {' '.join(args.tasks)}")
            report = probe_model(args.model, args.nsynth_dir, args.output_dir, settings,
                                 trust_remote_code=args.trust_remote_code, device=args.device,
                                 cache_dir=args.cache_dir, feature_cache_dir=args.feature_cache_dir)
        else:
            summary = probe_tasks(args.model, args.tasks, args.output_dir, settings,
                                  trust_remote_code=args.trust_remote_code, device=args.device,
                                  nsynth_dir=args.nsynth_dir, cache_dir=args.cache_dir,
                                  feature_cache_dir=args.feature_cache_dir, kinds=task_kinds(args.task_kind),
                                  on_error=args.on_error, test_fold=args.hear_test_fold)
    except ProbeError as error:
        raise SystemExit(f"error: {' '.join(str(error).split())}") from None
    if set(args.tasks) <= set(TASKS):
        for entry in report["results"]:
            chroma = f", chroma {entry['test_chroma_accuracy']:.3f}" if "test_chroma_accuracy" in entry else ""
            print(f"{entry['task']:>10} layer {entry['layer']!s:>8} {entry['probe']:>6}: test "
                  f"{entry['test_accuracy']:.3f} ± {entry['test_accuracy_std']:.3f}{chroma}")
        print(f"wrote {Path(args.output_dir) / 'probe_results.json'}, probe_results.md and probe_layers.png")
        return 0
    for name, task in summary["tasks"].items():
        best, metric = task["best"], task["metric"]
        test = best[f"test_{metric}"]
        print(f"{name}: {task['kind']}, best valid {metric} at layer {best['layer']} ({best['probe']}): test "
              f"{metric} {'-' if test is None else f'{test:.3f}'}")
        skipped = summary["tasks"][name].get("skipped", 0)
        if skipped:
            print(f"{name}: {skipped} unreadable audio files left out (on_error skip)")
    print(f"wrote {Path(args.output_dir) / 'probe_summary.json'}, probe_summary.md and, per task, "
          "TASK/probe_results.json, .md and probe_layers.png")
    return 0


def run_convert_fairseq(args: argparse.Namespace) -> int:
    from .convert_fairseq import convert_fairseq_checkpoint

    conversion = convert_fairseq_checkpoint(args.checkpoint, args.output_dir)
    print(f"{conversion.source} (sha256 {conversion.sha256}, settings saved as {conversion.form}): "
          f"{conversion.num_tensors} tensors, {conversion.num_parameters:,} parameters")
    for check in conversion.checks:
        print(f"checked: {check}")
    if conversion.head:
        print(f"left out: the fine-tuned model's head ({len(conversion.head)} tensors: {', '.join(conversion.head)}); "
              "the folder holds its wav2vec 2.0 encoder")
    print(f"wrote {conversion.output_dir} ({conversion.model_class}, feature extractor, README.md)")
    return 0


def run_push(args: argparse.Namespace) -> int:
    from .hub import check_hub_access, finished_run_problem, push_run, run_repo_ids, run_widget_heads

    problem = finished_run_problem(args.run_dir)
    if problem:
        raise FileNotFoundError(problem)
    user = check_hub_access(run_repo_ids(args.hub_model_id, run_widget_heads(args.run_dir)), args.hub_token)
    print(f"uploading {args.run_dir} to {args.hub_model_id} as {user}")
    for url in push_run(args.run_dir, args.hub_model_id, token=args.hub_token):
        print(f"pushed to {url}")
    return 0


def add_probe_arguments(parser: argparse.ArgumentParser) -> None:
    from .probing import PROBES, TASKS, ProbeSettings
    from .task_folders import KINDS, ON_ERROR

    defaults = ProbeSettings()
    parser.add_argument("model", help="an audio encoder that returns hidden states: a folder or Hub id")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), metavar="TASK",
                        help="built-in tasks (pitch, instrument: NSynth from --nsynth_dir) and task folders (MARBLE "
                             "train/valid/test.jsonl, or HEAR scene tasks); default: pitch instrument")
    parser.add_argument("--nsynth_dir", default=None,
                        help="NSynth (json/wav folders or a parquet copy), for the built-in tasks")
    parser.add_argument("--output_dir", required=True,
                        help="writes probe_results.json, .md and probe_layers.png (built-in tasks alone), or one "
                             "folder of them per task and probe_summary.json and .md")
    parser.add_argument("--task_kind", nargs="+", default=None, metavar="KIND",
                        help=f"the kind of every task folder ({', '.join(KINDS)}), or NAME=KIND per task; default: "
                             "from the labels (HEAR: from task_metadata.json)")
    parser.add_argument("--window_seconds", type=float, default=defaults.window_seconds,
                        help="task folders: clips longer than this are read and encoded in windows of it, whose "
                             f"means are averaged (default {defaults.window_seconds:g})")
    parser.add_argument("--on_error", choices=ON_ERROR, default="raise",
                        help="a missing or unreadable audio file in a task folder: stop with an error (default), or "
                             "leave it out and count it")
    parser.add_argument("--hear_test_fold", type=int, default=0,
                        help="HEAR k-fold tasks: the test fold; the next is valid, the others train (default 0)")
    parser.add_argument("--layers", nargs="+", type=int, default=None,
                        help="layer numbers (0: Transformer input, N: output of layer N); default: all")
    parser.add_argument("--probe", nargs="+", choices=PROBES, default=list(PROBES),
                        help="linear, MARBLE's MLP (512 hidden, dropout 0.2), or both (default)")
    parser.add_argument("--no_weighted_sum", action="store_true",
                        help="skip the probe on a learnable softmax-weighted sum of the layers")
    parser.add_argument("--pitch_classes", type=int, choices=(128, 88), default=defaults.pitch_classes,
                        help="128 MIDI pitches (the paper, MARBLE; default) or 88 = MIDI 21-108 with chroma "
                             "accuracy (HEAR; other notes are left out)")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(defaults.seeds),
                        help="one probe training per seed; results are means (default 0 1 2)")
    parser.add_argument("--batch_size", type=int, default=defaults.batch_size,
                        help=f"notes or windows per forward pass of the encoder (default {defaults.batch_size})")
    parser.add_argument("--probe_batch_size", type=int, default=defaults.probe_batch_size,
                        help=f"default {defaults.probe_batch_size}")
    parser.add_argument("--learning_rate", type=float, default=defaults.learning_rate,
                        help=f"Adam's (default {defaults.learning_rate})")
    parser.add_argument("--max_epochs", type=int, default=defaults.max_epochs, help=f"default {defaults.max_epochs}")
    parser.add_argument("--patience", type=int, default=defaults.patience,
                        help="epochs without a better valid score (accuracy, mAP or R²) before stopping "
                             f"(default {defaults.patience})")
    parser.add_argument("--max_notes", type=int, default=None,
                        help="built-in tasks: use at most this many notes per split (a seeded random subset; "
                             "default all)")
    parser.add_argument("--trust_remote_code", action="store_true",
                        help="allow MODEL's own code (e.g. MERT); never implied")
    parser.add_argument("--cache_dir", default=None, help="NSynth index cache (default $HF_MUSIC_W2V_CACHE)")
    parser.add_argument("--feature_cache_dir", default=None,
                        help="where layer features are cached (default CACHE_DIR/probe_features)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the model runs: cpu, cuda or cuda:N (default: cuda when a GPU is visible, else cpu)")


def add_inference_arguments(parser: argparse.ArgumentParser, precision: str) -> None:
    parser.add_argument("model", help="a folder or Hub id")
    parser.add_argument("files", nargs="+", help="audio files (any sample rate, channel count or length)")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="windows per forward pass (default 16 on a GPU; on a CPU 8 in bf16 and 4 in fp32, "
                             "the fastest measured: larger batches overflow the caches; see BENCHMARKS.md)")
    parser.add_argument("--window_seconds", type=float, default=4.0,
                        help="longer files are cut into windows of this length and averaged (default 4, as NSynth)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the model runs: cpu, cuda or cuda:N (default: cuda when a GPU is visible, else cpu)")
    parser.add_argument("--precision", choices=PRECISIONS, default=precision,
                        help=f"fp32, bf16 autocast (about 2x faster where the device computes bf16 natively; "
                             f"values within about 1%% of fp32), or auto: bf16 on such a device (a GPU with bf16, "
                             f"a CPU with AVX512-BF16 or AMX), else fp32 (default {precision})")


def build_parser() -> argparse.ArgumentParser:
    from hf_music_w2v_command import COMMANDS, top_level_parser

    parser, commands = top_level_parser()
    for program in PROGRAMS:
        commands.add_parser(program, help=COMMANDS[program], add_help=False)
    demo = commands.add_parser("demo", help=COMMANDS["demo"], description=demo_module.__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    add_demo_arguments(demo)
    demo.set_defaults(handler=run_demo)

    results = commands.add_parser(
        "results", help=COMMANDS["results"],
        description="Print the Results section that a demo's results.json gives, write it into a README between "
                    "its generated-section markers, or check that the README holds it.")
    results.add_argument("results", help="a demo's results.json, e.g. docs/demo_results.json")
    results.add_argument("--readme", default=None, help="write the section into this README (e.g. README.md)")
    results.add_argument("--check", action="store_true",
                         help="with --readme: change nothing, exit 1 when the README's section differs")
    results.set_defaults(handler=run_results)

    mini = commands.add_parser(
        "make-mini-datasets",
        help=COMMANDS["make-mini-datasets"],
    )
    mini.add_argument("out_dir", help="writes OUT_DIR/nsynth/nsynth-{train,valid,test}, OUT_DIR/musicnet and "
                                      "OUT_DIR/speech")
    mini.add_argument("--seed", type=int, default=0, help="chooses pitches and velocities (default 0)")
    mini.add_argument("--notes_per_instrument", type=int, default=8,
                      help="NSynth notes per instrument, 55 instruments in all (default 8)")
    mini.add_argument("--pitches", type=int, nargs="+", default=None,
                      help="MIDI pitches the NSynth notes are drawn from, within each instrument's range (default: "
                           "the whole range); e.g. 36 60 84 gives the tasks of --tasks three registers far apart")
    mini.add_argument("--musicnet_seconds", type=float, default=30.0,
                      help="seconds of each of the 8 scores rendered for MusicNet (default 30)")
    mini.add_argument("--speech_seconds", type=float, default=30.0,
                      help="seconds read by each of the 8 mini-speech speakers (default 30, as much as MusicNet)")
    mini.add_argument("--soundfont", default=None, help="a General MIDI .sf2 (default: pretty_midi's TimGM6mb)")
    mini.add_argument("--tasks", action="store_true",
                      help="also write probe task folders from them into OUT_DIR/tasks: MARBLE forms in marble/, "
                           "HEAR forms in hear/, each with a shuffled-label control (README 'Probing any labelled "
                           "task')")
    mini.set_defaults(handler=run_make_mini_datasets)

    predict = commands.add_parser(
        "predict", help=COMMANDS["predict"],
        description="Pitch and instrument family of each file. Exit status: 0 when every file was answered or "
                    "skipped as silent (counted on stderr), 1 when a file could not be processed (named on stderr), "
                    "2 for a usage error.")
    add_inference_arguments(predict, precision="auto")  # an answer, not digits
    predict.add_argument("--top_k", type=int, default=1, help="classes listed per head (default 1)")
    predict.add_argument("--json", action="store_true", help="one JSON object per file instead of text")
    predict.set_defaults(handler=run_predict)

    embed = commands.add_parser("embed", help=COMMANDS["embed"])
    add_inference_arguments(embed, precision="fp32")  # features for further work: full precision
    embed.add_argument("--layer", type=int, default=-1,
                       help="0: Transformer input, N: output of layer N, -1: last layer (default)")
    embed.add_argument("--output", required=True, help="the .npz to write (embeddings, files, layer)")
    embed.set_defaults(handler=run_embed)

    probe = commands.add_parser(
        "probe", help=COMMANDS["probe"],
        description=probing_module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_probe_arguments(probe)
    probe.set_defaults(handler=run_probe)

    convert = commands.add_parser(
        "convert-fairseq", help=COMMANDS["convert-fairseq"],
        description="Convert a fairseq wav2vec 2.0 pretraining checkpoint into a save_pretrained folder of "
                    "Wav2Vec2ForPreTraining with its feature extractor and a model card; of a fine-tuned one (CTC or "
                    "classification, encoder under w2v_args or w2v_path), its encoder as Wav2Vec2Model, the head "
                    "left out. The file is read "
                    "weights-only: no code in it runs, and fairseq is not needed. The folder is a "
                    "--model_name_or_path for finetune, a MODEL for probe and an --init_from for pretrain.")
    convert.add_argument("checkpoint", help="the fairseq .pt file (e.g. w2v_music_checkpoint.pt)")
    convert.add_argument("output_dir", help="the folder to write; an existing one is replaced only if it is empty or "
                                             "an earlier model folder")
    convert.set_defaults(handler=run_convert_fairseq)

    onnx = commands.add_parser("export-onnx", help=COMMANDS["export-onnx"])
    onnx.add_argument("model", help="a fine-tuned music_wav2vec2 folder or Hub id")
    onnx.add_argument("output", help="the .onnx file to write")
    onnx.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    onnx.set_defaults(handler=run_export_onnx)

    push = commands.add_parser(
        "push", help=COMMANDS["push"],
        description="Upload the output folder of a finished run (its model, card and results, no checkpoints) to "
                    "USER/NAME, and for a fine-tuned classifier each head's widget model to USER/NAME-pitch and "
                    "USER/NAME-instrument. The Hub, the token and the repositories are checked first.")
    push.add_argument("run_dir", help="the --output_dir of a finished hf-music-w2v pretrain or finetune run")
    push.add_argument("--hub_model_id", required=True, help="the repository to upload to, e.g. user/w2v-nsynth")
    push.add_argument("--hub_token", default=None, help="Hub token with write access (default: HF_TOKEN or the "
                                                        "logged-in user's)")
    push.set_defaults(handler=run_push)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in PROGRAMS:
        # The training programs parse their own (many) options; the launcher takes --accelerate_config and
        # --num_processes first.
        return launch(argv[0], argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("predict", "embed"):
        check_inference_arguments(parser, args)
    args.invocation = shlex.join(["hf-music-w2v", *argv])
    return report_user_errors(lambda: args.handler(args),
                              INTERRUPTED.get(args.command, "interrupted").format(**vars(args)))


if __name__ == "__main__":
    sys.exit(main())
