"""`hf-music-w2v demo` end to end at a tiny scale: real renders, real `accelerate launch` runs, real report."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import Wav2Vec2ForPreTraining

from hf_music_w2v.presets import preset_config

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: The fixture's networks: two pretraining seeds per pretrained arm, their starting points, the user's checkpoint.
NETWORKS = {"music-pretrained": ["music-p0", "music-p1"], "speech-pretrained": ["speech-p0", "speech-p1"],
            "random init": ["random-p0", "random-p1"], "speech checkpoint": ["checkpoint"]}
RUNS = [f"{network}-seed0" for networks in NETWORKS.values() for network in networks]
TEST_NOTES = 44  # 22 test instruments x 2


def demo_command(output_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hf_music_w2v.cli", "demo", "--output_dir", str(output_dir), "--quiet",
            "--pretrain_steps", "12", "--finetune_epochs", "2", "--seeds", "0", "--pretrain_seeds", "0", "1",
            "--notes_per_instrument", "2", "--test_notes_per_instrument", "2", "--musicnet_seconds", "12",
            "--finetune_args", "--report_to none", *extra]


def run_demo(output_dir: Path, *extra: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(demo_command(output_dir, *extra), capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))


@pytest.fixture(scope="module")
def speech_model(tmp_path_factory) -> Path:
    """Stands in for facebook/wav2vec2-base: a Wav2Vec2ForPreTraining folder that is not the demo's own."""
    import torch

    folder = tmp_path_factory.mktemp("speech")
    torch.manual_seed(123)
    Wav2Vec2ForPreTraining(preset_config("wav2vec2-small")).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def demo(tmp_path_factory, speech_model) -> Path:
    output_dir = tmp_path_factory.mktemp("demo") / "demo_output"
    result = run_demo(output_dir, "--speech_model", str(speech_model))
    assert result.returncode == 0, result.stderr[-4000:]
    return output_dir


def test_demo_runs_every_stage_and_every_seed(demo):
    for run in RUNS:
        results = json.loads((demo / "finetune" / run / "all_results.json").read_text())
        assert results["epochs"] == 2 and 0.0 <= results["test_pitch_accuracy"] <= 1.0
    for network in ("music-p0", "music-p1", "speech-p0", "speech-p1"):
        assert json.loads((demo / "pretrain" / network / "all_results.json").read_text())["steps"] == 12
    state = json.loads((demo / "demo_state.json").read_text())["seconds"]
    assert {"data", "pretrain music-p0", "pretrain speech-p1", "random init", "probes", "codebook", "hub", "report",
            *(f"finetune {run}" for run in RUNS)} <= set(state)


def test_the_music_and_speech_pretrainings_of_a_seed_differ_in_their_data_alone(demo):
    for seed in (0, 1):
        music = json.loads((demo / "pretrain" / f"music-p{seed}" / "run_settings.json").read_text())
        speech = json.loads((demo / "pretrain" / f"speech-p{seed}" / "run_settings.json").read_text())
        differing = {k for k in music.keys() | speech.keys() if music.get(k) != speech.get(k)}
        assert differing == {"musicnet_dir", "audio_dir", "output_dir"}
        assert music["seed"] == seed and music["mixed_precision"] == "bf16"  # fixed by the demo, not the CPU
    assert speech["audio_dir"] == str(demo / "data" / "speech") and (demo / "data" / "speech").is_dir()


def test_the_random_arm_is_the_network_each_pretraining_started_from(demo):
    from safetensors.torch import load_file

    key = "wav2vec2.feature_extractor.conv_layers.0.conv.weight"
    for seed in (0, 1):
        start = load_file(demo / "random-init" / f"random-p{seed}" / "model.safetensors")
        pretrained = load_file(demo / "pretrain" / f"music-p{seed}" / "model.safetensors")
        random_run = load_file(demo / "finetune" / f"random-p{seed}-seed0" / "model.safetensors")
        music_run = load_file(demo / "finetune" / f"music-p{seed}-seed0" / "model.safetensors")
        # The frozen feature encoder keeps the weights fine-tuning started from.
        assert (random_run[key] == start[key]).all() and (music_run[key] == pretrained[key]).all()
        assert not (start[key] == pretrained[key]).all()
        # The same seed and config, built as the training engine builds a model, are pretraining's first weights.
        import torch

        torch.manual_seed(seed)
        config = Wav2Vec2ForPreTraining.config_class.from_pretrained(demo / "pretrain" / f"music-p{seed}")
        assert (Wav2Vec2ForPreTraining(config).state_dict()[key] == start[key]).all()
    p0 = load_file(demo / "random-init" / "random-p0" / "model.safetensors")
    p1 = load_file(demo / "random-init" / "random-p1" / "model.safetensors")
    assert not (p0[key] == p1[key]).all()


def table_row(report: str, label: str) -> list[str]:
    line = next(line for line in report.splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_report_table_is_the_runs_test_accuracy(demo):
    import numpy as np

    report = (demo / "REPORT.md").read_text()
    for label, networks in NETWORKS.items():
        runs = [json.loads((demo / "finetune" / f"{network}-seed0" / "all_results.json").read_text())
                for network in networks]
        cells = table_row(report, label)
        assert cells[1] == f"{len(networks)} x 1"
        pitch = [r["test_pitch_accuracy"] for r in runs]
        family = [r["test_instrument_accuracy"] for r in runs]
        assert cells[2].startswith(f"{np.mean(pitch):.3f} ± ")
        assert cells[3].startswith(f"{np.mean(family):.3f} ± ")
        assert cells[4] == "; ".join(f"{v:.3f}" for v in pitch)
        assert cells[5] == "; ".join(f"{v:.3f}" for v in family)
    assert "most frequent test class" in report
    assert "## The paper's claims against this run" in report
    assert re.search(r"\*Music pretraining beats speech pretraining on pitch\*: music - speech = [+-][0-9.]+ points, "
                     rf"95% interval \[[+-][0-9.]+, [+-][0-9.]+\] over pretraining runs, fine-tuning seeds and "
                     rf"{TEST_NOTES} test notes", report)
    assert re.search(r"- pitch: differences of about [0-9.]+ points or more are resolved \(the half-width", report)


def test_paired_comparisons_are_the_runs_own_predictions_bootstrapped_over_every_level(demo):
    import numpy as np

    from hf_music_w2v.report import paired_comparison

    results = json.loads((demo / "results.json").read_text())
    comparisons = results["comparisons"]
    assert len(comparisons) == 6 * 2  # every pair of the four arms, both heads
    chosen = next(c for c in comparisons if (c["first"], c["second"], c["head"]) ==
                  ("music-pretrained", "speech-pretrained", "instrument"))
    assert chosen["runs"] == [[2, 1], [2, 1]] and chosen["notes"] == TEST_NOTES
    correct = {}
    for arm in ("music", "speech"):
        runs = [json.loads((demo / "finetune" / f"{arm}-p{p}-seed0" / "test_predictions.json").read_text())
                for p in (0, 1)]
        assert len(runs[0]["note_str"]) == TEST_NOTES and runs[0]["note_str"] == runs[1]["note_str"]
        correct[arm] = np.array([[np.equal(r["instrument"]["predicted"], r["instrument"]["label"])] for r in runs],
                                dtype=float)
        accuracy = json.loads((demo / "finetune" / f"{arm}-p0-seed0" / "all_results.json").read_text())
        assert correct[arm][0, 0].mean() == pytest.approx(accuracy["test_instrument_accuracy"])
    expected = paired_comparison(correct["music"], correct["speech"])
    assert chosen["level_std"]["finetuning"] == pytest.approx(0.0, abs=1e-12)  # one fine-tuning seed: nothing to resample at that level
    for key in ("difference", "low", "high", "half_width"):
        assert chosen[key] == pytest.approx(expected[key])
    assert chosen["verdict"].endswith("is ahead") == (chosen["low"] > 0 or chosen["high"] < 0)


def test_every_network_is_probed_layer_by_layer(demo):
    results = json.loads((demo / "results.json").read_text())
    for networks in NETWORKS.values():
        for network in networks:
            report = json.loads((demo / "probes" / network / "probe_results.json").read_text())
            assert {e["layer"] for e in report["results"]} == {0, 1, 2, "weighted"}
            assert set(results["probes"][network]) == {"pitch", "instrument"}
    assert "## Layer-wise probes of the frozen networks" in (demo / "REPORT.md").read_text()


def test_report_figures_exist_and_are_png(demo):
    report = (demo / "REPORT.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert {"figures/pretrain-music-p0.png", "figures/pretrain-speech-p1.png", "figures/finetuning.png",
            "figures/confusion_matrix.png", "figures/codebook_nmi.png", "figures/probe_layers.png"} <= set(images)
    for image in images:
        assert (demo / image).read_bytes()[:8] == PNG_MAGIC, image


def test_codebook_analysis_covers_every_network(demo):
    scores = json.loads((demo / "codebook.json").read_text())
    assert set(scores) == {network for networks in NETWORKS.values() for network in networks}
    for values in scores.values():
        for key in ("pitch_nmi", "family_nmi", "pitch_nmi_shuffled", "family_nmi_shuffled"):
            assert 0.0 <= values[key] <= 1.0
        assert values["notes"] == 22 * 2 + 11 * 2 + TEST_NOTES and values["codebook_size"] == 32 * 32
    # The speech checkpoint stand-in and the demo's random starts are different networks, so their codes differ.
    assert scores["checkpoint"]["pitch_nmi"] != scores["random-p0"]["pitch_nmi"]
    assert scores["music-p0"] != scores["music-p1"]


def test_hub_folder_is_the_best_music_run_on_valid_and_loads_without_the_package(demo):
    runs = {p: json.loads((demo / "finetune" / f"music-p{p}-seed0" / "all_results.json").read_text()) for p in (0, 1)}
    best = max(runs, key=lambda p: runs[p]["valid_mean_accuracy"])
    hub = demo / "hub"
    assert (hub / "model" / "all_results.json").read_text() == \
        (demo / "finetune" / f"music-p{best}-seed0" / "all_results.json").read_text()
    assert not any((hub / "model" / name).exists() for name in ("checkpoints", "features", "best_model", "widget"))
    for head in ("widget-pitch", "widget-instrument"):
        assert json.loads((hub / head / "config.json").read_text())["architectures"] == \
            ["Wav2Vec2ForSequenceClassification"]
    code = (
        "import sys, numpy as np, soundfile as sf, torch\n"
        "sys.modules['hf_music_w2v'] = None\n"
        "from transformers import AutoFeatureExtractor, AutoModel\n"
        f"folder = {str(hub / 'model')!r}\n"
        "model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()\n"
        "extractor = AutoFeatureExtractor.from_pretrained(folder)\n"
        "import glob\n"
        "audio, rate = sf.read(sorted(glob.glob(folder + '/widget_samples/*.wav'))[0])\n"
        "import torchaudio.functional as F\n"
        "audio = F.resample(torch.tensor(audio, dtype=torch.float32), rate, 16000).numpy()\n"
        "inputs = extractor(audio, sampling_rate=16000, return_tensors='pt')\n"
        "out = model(inputs.input_values)\n"
        "import json\n"
        "print(json.dumps([type(model).__module__, list(out.pitch_logits.shape), list(out.instrument_logits.shape)]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    module, pitch_shape, family_shape = json.loads(result.stdout.strip().splitlines()[-1])
    assert not module.startswith("hf_music_w2v")
    assert pitch_shape == [1, 128] and family_shape == [1, 11]


def test_rerun_skips_finished_stages_redoes_a_missing_one_and_gives_the_same_figures(demo, speech_model, tmp_path):
    recorded = tmp_path / "recorded_results.json"
    shutil.copyfile(demo / "results.json", recorded)
    (demo / "finetune" / "random-p1-seed0" / "all_results.json").unlink()
    kept = (demo / "finetune" / "music-p0-seed0" / "all_results.json").stat().st_mtime_ns
    result = run_demo(demo, "--speech_model", str(speech_model), "--expect", str(recorded))
    assert result.returncode == 0, result.stderr[-4000:]
    assert "[1/17] data: already done, skipped" in result.stderr
    assert "[2/17] pretrain music-p0: already done, skipped" in result.stderr
    assert "[5/17] pretrain speech-p1: already done, skipped" in result.stderr
    assert "[6/17] random init: already done, skipped" in result.stderr
    assert "[7/17] finetune music-p0-seed0: already done, skipped" in result.stderr
    assert "[12/17] finetune random-p1-seed0 ..." in result.stderr
    assert "[12/17] finetune random-p1-seed0: done" in result.stderr
    assert (demo / "finetune" / "random-p1-seed0" / "all_results.json").is_file()
    assert (demo / "finetune" / "music-p0-seed0" / "all_results.json").stat().st_mtime_ns == kept
    # The run redone from its last checkpoint, the probes and the codebook again: every figure as recorded.
    assert f"every figure is the one recorded in {recorded}" in result.stderr


def test_expect_names_the_first_figure_that_differs(demo, speech_model, tmp_path):
    recorded = json.loads((demo / "results.json").read_text())
    recorded["accuracy"][1]["instrument"]["values"][0][0] += 0.01
    recorded["run"]["commit"] = "abc1234"
    path = tmp_path / "demo_results.json"
    path.write_text(json.dumps(recorded))
    result = run_demo(demo, "--speech_model", str(speech_model), "--expect", str(path))
    assert result.returncode == 1
    assert "the first difference: results.accuracy[1].instrument.values[0][0]: recorded " in result.stderr
    assert f"cp {demo / 'results.json'} {path}" in result.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    result = run_demo(demo, "--speech_model", str(speech_model), "--expect", str(bad))
    assert result.returncode == 1 and f"--expect {bad}: not a demo results.json" in result.stderr


def test_the_readme_section_is_generated_from_a_results_file(demo, tmp_path):
    from hf_music_w2v.report import README_BEGIN, README_END, readme_results

    results = json.loads((demo / "results.json").read_text())
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nkept\n\n{README_BEGIN}\nold figures\n{README_END}\n\n## Next\n")
    command = [sys.executable, "-m", "hf_music_w2v.cli", "results", str(demo / "results.json"), "--readme", str(readme)]
    check = subprocess.run([*command, "--check"], capture_output=True, text=True)
    assert check.returncode == 1 and "is not the one" in check.stderr
    assert subprocess.run(command, capture_output=True, text=True).returncode == 0
    text = readme.read_text()
    assert text.startswith("# Title\n\nkept\n\n") and text.endswith("\n\n## Next\n")
    assert readme_results(results) in text and "old figures" not in text
    assert subprocess.run([*command, "--check"], capture_output=True, text=True).returncode == 0


def test_a_failing_stage_names_itself_and_its_log(demo, tmp_path):
    output_dir = tmp_path / "demo_output"
    for part in ("data", "pretrain", "random-init"):
        shutil.copytree(demo / part, output_dir / part)
    result = run_demo(output_dir, "--finetune_args=--no_such_flag")
    assert result.returncode == 1
    log = output_dir / "logs" / "finetune-music-p0-seed0.log"
    assert "stage 'finetune music-p0-seed0' failed with exit code" in result.stderr
    assert str(log) in result.stderr and "--no_such_flag" in result.stderr
    assert "--no_such_flag" in log.read_text()


def test_resuming_with_other_settings_is_refused(demo):
    before = (demo / "demo_state.json").read_text()
    result = run_demo(demo, "--pretrain_steps", "13")
    assert result.returncode == 1
    assert "other settings" in result.stderr and "pretrain_steps 12 -> 13" in result.stderr
    assert "--fresh" in result.stderr
    assert (demo / "demo_state.json").read_text() == before


@pytest.mark.parametrize("flag", ["--nsynth_dir", "--musicnet_dir", "--speech_dir", "--speech_model"])
def test_missing_inputs_are_clear_errors_before_any_work(tmp_path, flag):
    result = run_demo(tmp_path / "out", flag, str(tmp_path / "nowhere"))
    assert result.returncode == 1
    assert flag in result.stderr and "nowhere" in result.stderr
    assert not (tmp_path / "out").exists()


def test_readme_demo_commands_parse():
    from hf_music_w2v.cli import build_parser

    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.DOTALL)
    lines = [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    commands = []
    for line in lines:
        code = line.partition("# ")[0]
        if "hf-music-w2v demo" in code:
            commands.append(code.split("hf-music-w2v demo", 1)[1])
        if 'DEMO_ARGS="' in line:
            commands.append(line.split('DEMO_ARGS="', 1)[1].split('"', 1)[0].replace("...", ""))
    assert len(commands) >= 2
    for command in commands:
        args = build_parser().parse_args(["demo", *shlex.split(command)])
        assert args.recipe in ("mini", "paper")


def program_options(name: str, argv: list[str]):
    """The options a training program parses from `argv` (recipe included), as one namespace."""
    import importlib
    from types import SimpleNamespace

    task_args, run_args = importlib.import_module(f"hf_music_w2v.training.{name}").parse_args(argv)
    return SimpleNamespace(**vars(task_args), **vars(run_args))


def planned_demo(tmp_path, *flags: str):
    from hf_music_w2v.cli import build_parser
    from hf_music_w2v.demo import Demo

    args = build_parser().parse_args(["demo", "--output_dir", str(tmp_path / "out"), *flags])
    return Demo(args)


def test_paper_recipe_runs_the_scripts_with_the_papers_defaults(tmp_path):
    demo = planned_demo(tmp_path, "--recipe", "paper")
    from hf_music_w2v.demo import Network

    music_p1 = Network("music-pretrained", 1)
    pretrain = program_options("pretrain", demo.pretrain_arguments(music_p1))
    assert pretrain.config_name == "preset:wav2vec2-base" and pretrain.seed == 1
    assert (pretrain.segment_seconds, pretrain.hop_seconds, pretrain.learning_rate) == (20.0, 10.0, 5e-4)
    assert (pretrain.mask_time_prob, pretrain.num_negatives, pretrain.warmup_steps) == (0.65, 100, 32_000)
    assert pretrain.resume_from_checkpoint == "latest"
    finetune = program_options("finetune", demo.finetune_arguments(Network("random init", 1), 2))
    assert not finetune.random_init and finetune.seed == 2 and finetune.num_train_epochs == 10
    assert finetune.model_name_or_path == str(demo.out / "random-init" / "random-p1")
    speech = program_options("pretrain", demo.pretrain_arguments(Network("speech-pretrained", 1)))
    assert speech.audio_dir == str(demo.speech_dir) and speech.musicnet_dir is None
    assert {k for k in vars(pretrain) if getattr(pretrain, k) != getattr(speech, k)} == \
        {"musicnet_dir", "audio_dir", "output_dir"}


def test_mini_recipe_and_user_arguments_reach_the_scripts(tmp_path):
    demo = planned_demo(tmp_path, "--pretrain_args=--learning_rate 3e-4", "--finetune_args=--freeze_base_model",
                        "--pretrain_steps", "50")
    from hf_music_w2v.demo import Network

    pretrain = program_options("pretrain", demo.pretrain_arguments(Network("music-pretrained", 0)))
    assert pretrain.config_name == "preset:wav2vec2-small" and pretrain.segment_seconds == 4.0
    assert pretrain.learning_rate == 3e-4 and pretrain.max_train_steps == 50
    music = program_options("finetune", demo.finetune_arguments(Network("music-pretrained", 0), 0))
    random = program_options("finetune", demo.finetune_arguments(Network("random init", 0), 0))
    assert music.freeze_base_model and random.freeze_base_model and music.mixed_precision == "bf16"
    differing = {k for k in vars(music) if getattr(music, k) != getattr(random, k)}
    assert differing == {"model_name_or_path", "output_dir"}


def test_ctrl_c_stops_the_run_and_says_how_to_resume(tmp_path):
    import signal
    import time

    output_dir = tmp_path / "demo_output"
    # A shell's background jobs (CI runners among them) inherit SIGINT ignored, and Python then never raises
    # KeyboardInterrupt: give the demo the disposition a terminal gives it.
    process = subprocess.Popen(demo_command(output_dir, "--pretrain_steps", "400"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                               env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))
    log = output_dir / "logs" / "pretrain-music-p0.log"
    deadline = time.monotonic() + 300
    while not (log.is_file() and "pretraining:" in log.read_text(errors="replace")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "interrupted: run the same command again to resume" in stderr
    assert not (output_dir / "pretrain" / "music-p0" / "all_results.json").exists()
    assert json.loads((output_dir / "demo_state.json").read_text())["settings"]["pretrain_steps"] == 400


def test_training_runs_are_launched_for_this_machine(monkeypatch):
    from hf_music_w2v.training import launch

    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setattr(launch.torch.cuda, "is_available", lambda: False)
    config = str(REPO / "training" / "accelerate_configs" / "cpu_2proc.yaml")
    command = launch.launch_command("pretrain", ["--x"], config)
    assert command[1:5] == ["-m", "hf_music_w2v.training.launch", "--config_file", config]
    assert command[-3:] == ["-m", "hf_music_w2v.training.pretrain", "--x"]
    # A multi-process config goes through torchrun, which joins CPU processes only with ACCELERATE_USE_CPU.
    assert launch.launch_environment()["ACCELERATE_USE_CPU"] == "true"
    single = launch.launch_command("finetune", [], None)
    assert "--cpu" in single and single[single.index("--num_processes") + 1] == "1"
    double = launch.launch_command("finetune", [], None, num_processes=2)
    assert "--multi_gpu" in double and double[double.index("--num_processes") + 1] == "2"


def test_parallel_runs_share_the_cpu_threads_out(tmp_path):
    """--jobs N gives each training run 1/N of the threads (accelerate's flag, which overrides OMP_NUM_THREADS)."""
    import torch

    for jobs in (1, 2):
        demo = planned_demo(tmp_path, "--jobs", str(jobs))
        command = demo.launch("finetune", demo.finetune_arguments(demo.networks["music-pretrained"][0], 0))
        threads = command[command.index("--num_cpu_threads_per_process") + 1]
        assert threads == str(max(1, torch.get_num_threads() // jobs))
