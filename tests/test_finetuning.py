import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hf_music_w2v.data.mini import make_mini_nsynth
from hf_music_w2v.demo import PITCH_GRID
from hf_music_w2v.presets import preset_config
from hf_music_w2v.training.checkpoints import list_checkpoints
from hf_music_w2v.training.finetune import BASE_PRESET, build_classifier, confusion_matrix

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "training" / "finetune.py"
EPOCHS = 60
FAST = ["--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--report_to", "none",
        "--learning_rate", "1e-3", "--head_learning_rate", "3e-3", "--no_freeze_feature_encoder"]


@pytest.fixture(scope="module")
def nsynth_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("nsynth_grid")
    make_mini_nsynth(root, seed=0, notes_per_instrument=4, pitches=PITCH_GRID)
    return root


@pytest.fixture(scope="module")
def small_backbone(tmp_path_factory):
    """The demo's narrow wav2vec2 (64 wide, real 20 ms frames), as a config-only folder for --random_init."""
    folder = tmp_path_factory.mktemp("backbone")
    preset_config("wav2vec2-small", layerdrop=0.0).save_pretrained(folder)
    return folder


def script_env(**extra) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)


def run_script(args, env=None, timeout=600):
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env or script_env(), capture_output=True,
                          text=True, timeout=timeout)


def read_log(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "logs" / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def pushed_run(tmp_path_factory, nsynth_dir, small_backbone):
    """One short full fine-tune from random weights that pushes to a loopback Hub; the tests below read it."""
    from .hub_server import LoopbackHub

    root = tmp_path_factory.mktemp("finetune")
    hub = LoopbackHub(root / "hub").start()
    env = script_env(HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HOME=str(root / "hf_home"), HF_TOKEN="hf_loopback",
                     HF_HUB_DISABLE_TELEMETRY="1")
    output_dir = root / "out"
    # A linear probe on a random backbone's cached features: 60 epochs take seconds and learn both heads.
    result = run_script(["--model_name_or_path", str(small_backbone), "--random_init", "--nsynth_dir",
                         str(nsynth_dir), "--output_dir", str(output_dir), *FAST, "--freeze_base_model",
                         "--head_learning_rate", "1e-2", "--weight_decay", "0", "--num_train_epochs", str(EPOCHS),
                         "--push_to_hub", "--hub_model_id", "me/w2v-nsynth"], env=env)
    try:
        yield {"result": result, "output_dir": output_dir, "hub": hub, "env": env}
    finally:
        hub.stop()


def card_metadata(folder: Path) -> dict:
    from huggingface_hub import ModelCard

    return ModelCard.load(folder / "README.md").data.to_dict()


@pytest.mark.slow
def test_short_finetune_beats_chance_on_both_heads(pushed_run, nsynth_dir):
    assert pushed_run["result"].returncode == 0, pushed_run["result"].stderr[-3000:]
    results = json.loads((pushed_run["output_dir"] / "all_results.json").read_text())
    test_notes = json.loads((nsynth_dir / "nsynth-test" / "examples.json").read_text()).values()
    # Chance: the best constant answer on this test split (its most common pitch or family).
    for head, field in (("pitch", "pitch"), ("instrument", "instrument_family")):
        counts = np.bincount([note[field] for note in test_notes])
        assert results[f"test_{head}_accuracy"] > counts.max() / counts.sum() + 0.05, (head, results)
    matrix = np.asarray(json.loads((pushed_run["output_dir"] / "confusion_matrix.json").read_text())["matrix"])
    assert matrix.sum() == len(test_notes)
    assert np.trace(matrix) / matrix.sum() == pytest.approx(results["test_instrument_accuracy"])
    for split in ("valid", "test"):
        for head in ("pitch", "instrument"):
            for metric in ("accuracy", "top_5_accuracy", "macro_f1"):
                assert 0 <= results[f"{split}_{head}_{metric}"] <= 1
    assert results["epochs"] == EPOCHS and results["best_epoch"] in range(EPOCHS)


@pytest.mark.slow
def test_each_epoch_is_evaluated_and_the_best_one_is_kept(pushed_run):
    log = read_log(pushed_run["output_dir"])
    evaluations = [entry for entry in log if "valid_mean_accuracy" in entry]
    assert [entry["epoch"] for entry in evaluations] == list(range(EPOCHS))
    results = json.loads((pushed_run["output_dir"] / "all_results.json").read_text())
    best = max(evaluations, key=lambda entry: entry["valid_mean_accuracy"])
    assert results["valid_mean_accuracy"] == best["valid_mean_accuracy"]
    final = load_file(pushed_run["output_dir"] / "model.safetensors")
    kept = load_file(pushed_run["output_dir"] / "best_model" / "model.safetensors")
    assert all(torch.equal(final[k], kept[k]) for k in final)
    assert (pushed_run["output_dir"] / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_the_results_file_is_written_last(pushed_run):
    # all_results.json marks a finished run (the demo skips such runs): nothing may be written after it.
    out = pushed_run["output_dir"]
    finished = (out / "all_results.json").stat().st_mtime_ns
    # The lock is no output: a clean release empties it after the results.
    outputs = [p for p in out.rglob("*") if p.is_file() and "checkpoints" not in p.parts
               and p.name not in ("all_results.json", ".run.lock")]
    assert {"README.md", "model.safetensors", "confusion_matrix.png"} <= {p.name for p in outputs}
    assert (out / "widget" / "instrument" / "README.md") in outputs
    assert max(p.stat().st_mtime_ns for p in outputs) <= finished


@pytest.mark.slow
def test_push_uploads_everything_a_user_needs(pushed_run):
    hub = pushed_run["hub"]
    received = {p.relative_to(hub.repo_dir("me/w2v-nsynth")).as_posix()
                for p in hub.repo_dir("me/w2v-nsynth").rglob("*") if p.is_file()}
    assert {"model.safetensors", "config.json", "configuration_music_wav2vec2.py", "modeling_music_wav2vec2.py",
            "preprocessor_config.json", "README.md", "all_results.json", "confusion_matrix.png"} <= received
    assert not any(name.startswith(("checkpoints/", "best_model/", "widget/", "features/")) for name in received)
    config = json.loads((hub.repo_dir("me/w2v-nsynth") / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_music_wav2vec2.Wav2Vec2ForMusicClassification"
    metadata = card_metadata(hub.repo_dir("me/w2v-nsynth"))
    assert metadata["pipeline_tag"] == "audio-classification" and metadata["datasets"] == ["nsynth"]
    index = metadata["model-index"][0]["results"]
    metrics = {m["name"]: m["value"] for result in index for m in result["metrics"]}
    results = json.loads((pushed_run["output_dir"] / "all_results.json").read_text())
    assert metrics == {"Pitch accuracy": round(results["test_pitch_accuracy"], 4),
                       "Instrument family accuracy": round(results["test_instrument_accuracy"], 4)}
    widget_files = [entry["src"].split("/resolve/main/")[1] for entry in metadata["widget"]]
    assert widget_files and set(widget_files) <= received
    card = (hub.repo_dir("me/w2v-nsynth") / "README.md").read_text()
    assert 'AutoModel.from_pretrained("me/w2v-nsynth", trust_remote_code=True)' in card
    assert "hf-music-w2v finetune --model_name_or_path" in card


@pytest.mark.slow
def test_pushed_model_loads_in_a_fresh_process_without_the_package(pushed_run, tmp_path):
    script = (
        "import sys; sys.modules['hf_music_w2v'] = None\n"
        "import torch; from transformers import AutoModel, AutoFeatureExtractor\n"
        "model = AutoModel.from_pretrained('me/w2v-nsynth', trust_remote_code=True).eval()\n"
        "extractor = AutoFeatureExtractor.from_pretrained('me/w2v-nsynth')\n"
        "x = extractor(torch.randn(64000, generator=torch.Generator().manual_seed(0)).numpy(), sampling_rate=16000,"
        " return_tensors='pt')\n"
        "out = model(**x)\n"
        "print(type(model).__name__, tuple(out.pitch_logits.shape), tuple(out.instrument_logits.shape))\n"
    )
    env = dict(pushed_run["env"], HF_HOME=str(tmp_path / "fresh_home"), PYTHONPATH="")
    loaded = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.split() == ["Wav2Vec2ForMusicClassification", "(1,", "128)", "(1,", "11)"]


@pytest.mark.slow
def test_widget_repos_run_in_the_standard_pipeline(pushed_run, tmp_path):
    hub = pushed_run["hub"]
    assert (hub.repo_dir("me/w2v-nsynth-pitch") / "model.safetensors").exists()
    script = (
        "import numpy as np; from transformers import pipeline\n"
        "tone = np.sin(2 * np.pi * 440 * np.arange(32000) / 16000).astype(np.float32)\n"
        "for repo in ('me/w2v-nsynth-pitch', 'me/w2v-nsynth-instrument'):\n"
        "    top = pipeline('audio-classification', model=repo)({'raw': tone, 'sampling_rate': 16000}, top_k=2)\n"
        "    print(repo, len(top), top[0]['label'])\n"
    )
    env = dict(pushed_run["env"], HF_HOME=str(tmp_path / "fresh_home"))
    ran = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    lines = ran.stdout.strip().splitlines()
    assert lines[0].startswith("me/w2v-nsynth-pitch 2 ") and lines[1].startswith("me/w2v-nsynth-instrument 2 ")
    metadata = card_metadata(hub.repo_dir("me/w2v-nsynth-pitch"))
    assert metadata["pipeline_tag"] == "audio-classification" and metadata["widget"]


@pytest.mark.slow
def test_killed_run_resumes_exactly(tmp_path, nsynth_dir, small_backbone):
    common = ["--model_name_or_path", str(small_backbone), "--random_init", "--nsynth_dir", str(nsynth_dir), *FAST,
              "--max_train_samples", "40", "--max_eval_samples", "16", "--num_train_epochs", "3",
              "--checkpointing_steps", "4", "--logging_steps", "1", "--final_dropout", "0.1"]
    straight = run_script(common + ["--output_dir", str(tmp_path / "straight")])
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed_dir = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, str(SCRIPT), *common, "--output_dir", str(killed_dir)],
                               env=script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (killed_dir / "checkpoints" / "step_00000008" / "trainer_state.json").exists():
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed_dir / "all_results.json").exists()

    resumed = run_script(common + ["--output_dir", str(killed_dir), "--resume_from_checkpoint", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    expected, got = read_log(tmp_path / "straight"), read_log(killed_dir)
    assert [m["step"] for m in got if "loss" in m] == list(range(1, 16))  # 5 updates per epoch, 3 epochs
    assert expected == got
    final_a = load_file(tmp_path / "straight" / "model.safetensors")
    final_b = load_file(killed_dir / "model.safetensors")
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    assert [p.name for p in list_checkpoints(killed_dir)] == ["step_00000012", "step_00000015"]


@pytest.mark.slow
def test_cached_linear_probe_matches_the_probe_over_audio(tmp_path, nsynth_dir, small_backbone):
    common = ["--model_name_or_path", str(small_backbone), "--random_init", "--nsynth_dir", str(nsynth_dir), *FAST,
              "--freeze_base_model", "--max_train_samples", "32", "--max_eval_samples", "16",
              "--num_train_epochs", "2"]
    cached = run_script(common + ["--output_dir", str(tmp_path / "cached")])
    assert cached.returncode == 0, cached.stderr[-3000:]
    assert "pooled features of 64 notes ready" in cached.stdout
    assert (tmp_path / "cached" / "features" / "train.safetensors").exists()
    uncached = run_script(common + ["--output_dir", str(tmp_path / "uncached"), "--no_feature_cache"])
    assert uncached.returncode == 0, uncached.stderr[-3000:]
    assert not (tmp_path / "uncached" / "features").exists()
    a, b = load_file(tmp_path / "cached" / "model.safetensors"), load_file(tmp_path / "uncached" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    torch.manual_seed(0)  # the runs' seed: this is the backbone they started from, which the probe must not change
    start = build_classifier(str(small_backbone), random_init=True).state_dict()
    assert all(torch.equal(a[k], start[k]) for k in a if k.startswith("wav2vec2."))
    assert not torch.equal(a["pitch_head.weight"], start["pitch_head.weight"])


def test_preset_builds_the_base_architecture_with_random_weights():
    model = build_classifier(BASE_PRESET)
    assert model.config.hidden_size == 768 and model.config.num_hidden_layers == 12
    assert model.config.mask_time_prob <= 0.05 and model.config.num_pitches == 128


def test_confusion_matrix_counts_true_by_predicted():
    matrix = confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 3)
    assert matrix.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


def test_bad_arguments_are_rejected_with_a_message(tmp_path, nsynth_dir):
    result = run_script(["--model_name_or_path", BASE_PRESET, "--nsynth_dir", str(nsynth_dir), "--output_dir",
                         str(tmp_path), "--no_feature_cache"])
    assert result.returncode == 2 and "--no_feature_cache only applies with --freeze_base_model" in result.stderr


@pytest.mark.slow
def test_two_processes_train_the_probe_as_one_process_with_twice_the_batch(tmp_path, nsynth_dir, small_backbone):
    common = ["--model_name_or_path", str(small_backbone), "--random_init", "--nsynth_dir", str(nsynth_dir),
              "--freeze_base_model", "--max_train_samples", "32", "--max_eval_samples", "12", "--num_train_epochs",
              "2", "--logging_steps", "1", "--report_to", "none", "--head_learning_rate", "1e-2",
              "--mixed_precision", "no"]  # fp32: bf16 rounds the two batchings' sums differently
    single = run_script(common + ["--per_device_train_batch_size", "8", "--output_dir", str(tmp_path / "one")])
    assert single.returncode == 0, single.stderr[-3000:]
    # torchrun of the package's module (the pretraining tests use accelerate launch of the script).
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
              "hf_music_w2v.training.finetune"]
    double = subprocess.run(launch + common + ["--per_device_train_batch_size", "4", "--output_dir",
                                               str(tmp_path / "two")],
                            env=script_env(ACCELERATE_USE_CPU="true"), capture_output=True, text=True, timeout=600)
    assert double.returncode == 0, double.stderr[-3000:]
    assert "fine-tuning on 2 process(es)" in double.stdout
    one, two = read_log(tmp_path / "one"), read_log(tmp_path / "two")
    assert [m["step"] for m in one] == [m["step"] for m in two]
    for a, b in zip(one, two):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
    results_one = json.loads((tmp_path / "one" / "all_results.json").read_text())
    results_two = json.loads((tmp_path / "two" / "all_results.json").read_text())
    assert results_two["test_notes"] == 12  # every test note counted once across the two processes
    assert results_one["test_pitch_accuracy"] == results_two["test_pitch_accuracy"]


def test_feature_fingerprint_follows_content_not_paths(tmp_path, nsynth_dir, small_backbone):
    import shutil

    from hf_music_w2v.data import load_nsynth
    from hf_music_w2v.fingerprints import weights_digest
    from hf_music_w2v.training.finetune import feature_fingerprint

    def fingerprint(seed: int, data: Path) -> dict:
        torch.manual_seed(seed)
        model = build_classifier(str(small_backbone), random_init=True)
        return feature_fingerprint(weights_digest(model.wav2vec2), load_nsynth(data, "valid",
                                                                               cache_dir=tmp_path / "cache"), "no")

    original = fingerprint(0, nsynth_dir)
    moved = tmp_path / "moved"
    shutil.copytree(nsynth_dir, moved)  # copy2 keeps sizes and modification times
    assert fingerprint(0, moved) == original  # another path, the same content
    assert fingerprint(1, moved)["weights"] != original["weights"]  # other weights
    wav = sorted((moved / "nsynth-valid" / "audio").glob("*.wav"))[0]
    os.utime(wav, ns=(wav.stat().st_atime_ns, wav.stat().st_mtime_ns + 1_000_000_000))  # the file was rewritten
    assert fingerprint(0, moved)["notes"] != original["notes"]


@pytest.mark.slow
def test_a_stale_feature_cache_from_other_weights_is_computed_again(tmp_path, nsynth_dir, small_backbone):
    common = ["--model_name_or_path", str(small_backbone), "--random_init", "--nsynth_dir", str(nsynth_dir), *FAST,
              "--freeze_base_model", "--max_train_samples", "16", "--max_eval_samples", "8", "--num_train_epochs", "1"]
    first = run_script(common + ["--output_dir", str(tmp_path / "a"), "--seed", "0"])
    assert first.returncode == 0, first.stderr[-3000:]
    import shutil

    shutil.copytree(tmp_path / "a" / "features", tmp_path / "b" / "features")  # the same folder, other weights
    second = run_script(common + ["--output_dir", str(tmp_path / "b"), "--seed", "1"])
    assert second.returncode == 0, second.stderr[-3000:]
    assert "was made from other weights, notes or settings: computing it again" in second.stdout
    a = load_file(tmp_path / "a" / "features" / "train.safetensors")["features"]
    b = load_file(tmp_path / "b" / "features" / "train.safetensors")["features"]
    assert not torch.equal(a, b)
