"""Probes on task folders: MARBLE- and HEAR-format tasks, their kinds and metrics, long clips, errors."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from hf_music_w2v import probe_metrics as metrics
from hf_music_w2v.probing import ProbeError, ProbeSettings, clip_features, load_encoder, probe_tasks
from hf_music_w2v.task_folders import load_task

from .conftest import program_env, tiny_pretraining_config

# Few clips: a high learning rate, so a few dozen updates learn what the features hold.
QUICK = ProbeSettings(probes=("linear",), seeds=(0,), learning_rate=0.05, max_epochs=30, patience=10)
TONES = {"low": 220.0, "mid": 660.0, "high": 1980.0}


def tone(frequencies, seconds: float = 0.5, rate: int = 16_000, phase: float = 0.0) -> np.ndarray:
    time = np.arange(round(seconds * rate)) / rate
    return sum(0.3 * np.sin(2 * np.pi * f * time + phase) for f in frequencies).astype(np.float32)


def write_marble(folder: Path, rows: dict[str, list[tuple[np.ndarray, object]]], rate: int = 16_000) -> Path:
    """A MARBLE task folder: audio/<split>_<i>.wav and {split}.jsonl rows with relative paths."""
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    for split, clips in rows.items():
        lines = []
        for index, (audio, label) in enumerate(clips):
            name = f"audio/{split}_{index}.wav"
            sf.write(folder / name, audio, rate)
            lines.append(json.dumps({"audio_path": name, "label": label, "duration": len(audio) / rate,
                                     "sample_rate": rate, "num_samples": len(audio), "bit_depth": 16, "channels": 1}))
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def tone_rows(label_of, counts=(("train", 12), ("valid", 6), ("test", 6))):
    """Clips cycling through the tones; `label_of(name, frequency)` is a clip's label."""
    rows = {}
    for offset, (split, count) in enumerate(counts):
        rows[split] = []
        for index in range(count):
            name = list(TONES)[index % 3]
            rows[split].append((tone([TONES[name]], phase=index + 0.3 * offset), label_of(name, TONES[name])))
    return rows


def write_hear(folder: Path, rate: int = 22_050, split_mode: str = "trainvaltest", prediction: str = "multilabel",
               **metadata) -> Path:
    """A HEAR scene task: tags are the tones a clip holds (one or two), audio at `rate` under {rate}/{split}/."""
    folder.mkdir(parents=True)
    names = list(TONES)
    (folder / "labelvocabulary.csv").write_text("idx,label\n" + "".join(f"{i},{n}\n" for i, n in enumerate(names)))
    splits = ("train", "valid", "test") if split_mode == "trainvaltest" else ("fold00", "fold01", "fold02")
    for offset, (split, count) in enumerate(zip(splits, (12, 6, 6))):
        (folder / str(rate) / split).mkdir(parents=True)
        labels = {}
        for index in range(count):
            tags = [names[index % 3]] if prediction == "multiclass" or index % 2 else names[index % 3:][:2] or names[:1]
            audio = tone([TONES[t] for t in tags], rate=rate, phase=index + 0.3 * offset)
            sf.write(folder / str(rate) / split / f"{index}.wav", audio, rate)
            labels[f"{index}.wav"] = tags
        (folder / f"{split}.json").write_text(json.dumps(labels))
    (folder / "task_metadata.json").write_text(json.dumps({
        "task_name": folder.name, "version": "test", "embedding_type": "scene", "prediction_type": prediction,
        "split_mode": split_mode, "sample_duration": 0.5, "evaluation": ["mAP", "d_prime", "aucroc"],
        "label_vocab_size": 3, **metadata}))
    return folder


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    from transformers import Wav2Vec2ForPreTraining

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("encoder") / "tiny"
    Wav2Vec2ForPreTraining(tiny_pretraining_config()).save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------------------------ metrics


def test_single_label_metrics_match_hand_computed_values():
    scores = np.array([[3.0, 1, 0, 0, 0, 0], [0, 2, 1, 0, 0, 0], [1, 0, 0, 2, 0, 0], [0, 0, 0, 0, 0, 1]])
    labels = np.array([0, 2, 0, 5])
    assert metrics.accuracy(scores, labels) == 0.5
    # class 0: tp 1, predicted 1, actual 2 -> 2/3; class 1: 0; class 2: 0; class 3: 0; class 5: 1 -> mean 1.6667/5
    assert metrics.macro_f1(scores.argmax(axis=1), labels) == pytest.approx((2 / 3 + 1) / 5)
    # Example 2 (label 0, score 1) has one class above it: in the top 2, not the top 1.
    assert metrics.top_k_accuracy(scores, labels, 1) == 0.5
    assert metrics.top_k_accuracy(scores, labels, 2) == 1.0


def test_multilabel_metrics_match_hand_computed_values():
    scores = np.array([0.9, 0.8, 0.8, 0.3, 0.1])
    truth = np.array([1, 0, 1, 0, 1])
    # Pairs (positive, negative): (0.9>0.8), (0.9>0.3), (0.8=0.8 half), (0.8>0.3), (0.1<0.8), (0.1<0.3) -> 3.5/6
    assert metrics.roc_auc(scores, truth) == pytest.approx(3.5 / 6)
    # Thresholds 0.9: P 1/1, R 1/3; 0.8: P 2/3, R 2/3; 0.3: no recall gained; 0.1: P 3/5, R 1.
    assert metrics.average_precision(scores, truth) == pytest.approx(1 / 3 + 2 / 3 / 3 + 3 / 5 / 3)
    assert math.isnan(metrics.roc_auc(scores, np.ones(5))) and math.isnan(metrics.average_precision(scores, np.zeros(5)))
    assert metrics.d_prime(0.5) == pytest.approx(0.0)
    assert metrics.d_prime(0.76025) == pytest.approx(math.sqrt(2) * 0.7066, abs=1e-3)  # Phi(0.7066) = 0.76
    found = metrics.task_scores("multilabel", np.stack([scores, scores], 1), np.stack([truth, np.ones(5)], 1))
    assert found["roc_auc"] == pytest.approx(3.5 / 6) and math.isnan(found["roc_auc_per_tag"][1])


def test_regression_metrics_match_hand_computed_values():
    truth = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    predicted = np.array([[1.0, 0.0], [2.0, 0.0], [2.0, 1.0]])
    # Target 0: residual 1, total 2 -> 0.5; target 1 is constant and mispredicted -> 0.
    assert metrics.r2_per_target(predicted, truth).tolist() == [0.5, 0.0]
    found = metrics.task_scores("regression", predicted, truth)
    assert found["r2"] == 0.25 and found["mse"] == pytest.approx(2 / 6)


# ----------------------------------------------------------------------------------------------- folders


def test_marble_task_kinds_come_from_the_labels_or_are_given(tmp_path):
    single = load_task(write_marble(tmp_path / "names", tone_rows(lambda name, f: name)))
    assert single.kind == "single" and single.names == ["high", "low", "mid"] and single.source == "marble"
    assert single.labels["test"].tolist() == [1, 2, 0, 1, 2, 0] and single.files["train"][0].is_absolute()
    integers = load_task(write_marble(tmp_path / "ints", tone_rows(lambda name, f: int(f) // 220 - 1)))
    assert integers.kind == "single" and integers.names == ["0", "2", "8"]
    tags = load_task(write_marble(tmp_path / "tags", tone_rows(lambda name, f: [name, "tone"])))
    assert tags.kind == "multilabel" and tags.labels["train"].shape == (12, 4)
    hot = load_task(write_marble(tmp_path / "hot", tone_rows(lambda name, f: [int(name == "low"), 1])))
    assert hot.kind == "multilabel" and hot.names == ["tag 0", "tag 1"]
    targets = load_task(write_marble(tmp_path / "floats", tone_rows(lambda name, f: [f / 1000, 0.5])))
    assert targets.kind == "regression" and targets.labels["valid"].shape == (6, 2)
    assert load_task(tmp_path / "ints", kind="regression").labels["train"][:3, 0].tolist() == [0, 2, 8]


def test_hear_tasks_read_the_metadata_and_any_sample_rate(tmp_path):
    task = load_task(write_hear(tmp_path / "tags"), sample_rate=16_000)
    assert task.kind == "multilabel" and task.source == "hear" and task.names == ["low", "mid", "high"]
    assert task.metadata["audio_sample_rate"] == 22_050 and task.counts() == {"train": 12, "valid": 6, "test": 6}
    folds = load_task(write_hear(tmp_path / "folds", split_mode="new_split_kfold", prediction="multiclass"))
    assert folds.kind == "single" and folds.counts() == {"test": 12, "valid": 6, "train": 6}
    assert folds.files["test"][0].parent.name == "fold00"
    rotated = load_task(tmp_path / "folds", test_fold=2)
    assert rotated.metadata["folds"] == {"test": ["fold02"], "valid": ["fold00"], "train": ["fold01"]}
    with pytest.raises(ProbeError, match="--hear_test_fold must be 0-2"):
        load_task(tmp_path / "folds", test_fold=3)


def break_split(folder: Path, split: str, rows: list[dict]) -> Path:
    (folder / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


@pytest.mark.parametrize("case, message", [
    ("missing audio", r"valid.jsonl line 1: .*missing.wav: file not found \(--on_error skip"),
    ("wrong label", r"test.jsonl line 1 has label \['low'\]; a single task needs one class"),
    ("unseen class", r"test.jsonl line 1 has class 'top', which no train clip has"),
    ("empty split", "the valid split has no clips"),
    ("event task", "HEAR event task .* only scene tasks are supported yet"),
    ("unknown metadata", "prediction_type must be one of multiclass, multilabel, got 'ranking'"),
    ("unknown metric", r"evaluation lists unknown metrics \['f1000'\]"),
])
def test_bad_task_folders_are_refused_saying_what_is_wrong(tmp_path, case, message):
    if case.startswith(("event", "unknown m")):
        extra = {"event task": {"embedding_type": "event"}, "unknown metadata": {"prediction_type": "ranking"},
                 "unknown metric": {"evaluation": ["mAP", "f1000"]}}[case]
        folder = write_hear(tmp_path / "task", **extra)
    else:
        folder = write_marble(tmp_path / "task", tone_rows(lambda name, f: name))
        row = {"audio_path": "audio/train_0.wav", "label": "low"}
        if case == "missing audio":
            break_split(folder, "valid", [{**row, "audio_path": "missing.wav"}])
        elif case == "wrong label":
            break_split(folder, "test", [{**row, "label": ["low"]}])
        elif case == "unseen class":
            break_split(folder, "test", [{**row, "label": "top"}])
        else:
            break_split(folder, "valid", [])
    with pytest.raises(ProbeError, match=message):
        load_task(folder)


def test_unreadable_files_can_be_skipped_and_are_counted(tmp_path):
    folder = write_marble(tmp_path / "task", tone_rows(lambda name, f: name))
    (folder / "audio" / "test_0.wav").write_bytes(b"not audio")
    (folder / "audio" / "train_1.wav").unlink()
    sf.write(folder / "audio" / "valid_0.wav", np.zeros(0, dtype=np.float32), 16_000)
    task = load_task(folder, on_error="skip")
    assert task.counts() == {"train": 11, "valid": 5, "test": 5}
    assert [len(v) for v in task.skipped.values()] == [1, 1, 1] and "train.jsonl line 2" in task.skipped["train"][0]
    assert "contains no samples" in task.skipped["valid"][0]


# ------------------------------------------------------------------------------------------------ probing


def test_a_long_clip_is_the_mean_of_its_windows(encoder_dir, tmp_path):
    from hf_music_w2v.probing import pooled_layers

    encoder, extractor = load_encoder(str(encoder_dir))
    long_clip = np.random.default_rng(0).standard_normal(40_000).astype(np.float32) * 0.1
    sf.write(tmp_path / "long.wav", long_clip, 16_000, subtype="FLOAT")
    sf.write(tmp_path / "short.wav", long_clip[:50], 16_000, subtype="FLOAT")  # shorter than the receptive field (85 samples)
    found = clip_features(encoder, extractor, {"long": tmp_path / "long.wav", "short": tmp_path / "short.wav"},
                          [0, 2], 4, 1.0, tmp_path / "cache", "weights")
    # Windows of 1 s: 0-16000, 16000-32000 and the last one ending with the clip, 24000-40000.
    windows = [long_clip[0:16_000], long_clip[16_000:32_000], long_clip[24_000:40_000]]
    expected = pooled_layers(encoder, extractor, windows, [0, 2]).mean(axis=0)
    assert np.allclose(found["long"], expected, atol=1e-4)
    padded = np.pad(long_clip[:50], (0, 35))
    assert np.allclose(found["short"], pooled_layers(encoder, extractor, [padded], [0, 2])[0], atol=1e-4)


def test_tasks_given_together_share_one_pass_and_each_gets_its_results(encoder_dir, tmp_path):
    pitch = write_marble(tmp_path / "tones", tone_rows(lambda name, f: name))
    # The same clips again, labelled by frequency in kHz: the clip list is shared, so is the pass.
    same_audio = tmp_path / "frequency"
    same_audio.mkdir()
    for split in ("train", "valid", "test"):
        rows = [json.loads(line) for line in (pitch / f"{split}.jsonl").read_text().splitlines()]
        (same_audio / f"{split}.jsonl").write_text("".join(
            json.dumps({"audio_path": str(pitch / row["audio_path"]), "label": TONES[row["label"]] / 1000}) + "\n"
            for row in rows))
    tags = write_hear(tmp_path / "tags")
    features = tmp_path / "features"
    # A task may be given as a folder or as a loaded `ProbeTask`.
    summary = probe_tasks(str(encoder_dir), [str(pitch), str(same_audio), load_task(tags)], tmp_path / "out", QUICK,
                          feature_cache_dir=features)
    fingerprints = [json.loads(path.read_text()) for path in features.glob("*.json")]
    assert len(fingerprints) == 1 and fingerprints[0]["count"] == 24 + 24  # the tones once, the HEAR clips once
    assert {name: task["kind"] for name, task in summary["tasks"].items()} == {
        "tones": "single", "frequency": "regression", "tags": "multilabel"}
    assert summary["tasks"]["tones"]["best"]["test_accuracy"] >= 0.8  # three well-apart tones
    for name in ("tones", "frequency", "tags"):
        report = json.loads((tmp_path / "out" / name / "probe_results.json").read_text())
        assert {e["layer"] for e in report["results"]} == {0, 1, 2, "weighted"}
        assert (tmp_path / "out" / name / "probe_layers.png").stat().st_size > 5_000
        assert "| layer | linear |" in (tmp_path / "out" / name / "probe_results.md").read_text()
    regression = json.loads((tmp_path / "out" / "frequency" / "probe_results.json").read_text())["results"][0]
    assert {"valid_r2", "test_r2", "test_r2_per_target", "test_mse", "test_r2_std"} <= set(regression)
    multilabel = json.loads((tmp_path / "out" / "tags" / "probe_results.json").read_text())["results"][0]
    assert {"valid_map", "test_map", "test_roc_auc", "test_d_prime", "test_ap_per_tag"} <= set(multilabel)
    assert len(multilabel["test_roc_auc_per_tag"]) == 3
    assert "| [tags](tags/probe_results.json) | multilabel |" in (tmp_path / "out" / "probe_summary.md").read_text()

    stamp = next(features.glob("*.npy")).stat().st_mtime_ns
    probe_tasks(str(encoder_dir), [str(pitch)], tmp_path / "again", QUICK, feature_cache_dir=features)
    assert len(list(features.glob("*.npy"))) == 2  # another clip list: another entry; the first kept
    assert min(path.stat().st_mtime_ns for path in features.glob("*.npy")) == stamp


def test_the_probe_command_runs_task_folders_end_to_end(encoder_dir, tmp_path):
    tones = write_marble(tmp_path / "tones", tone_rows(lambda name, f: name))
    folds = write_hear(tmp_path / "folds", rate=48_000, split_mode="presplit_kfold", prediction="multiclass")
    (tones / "audio" / "valid_2.wav").unlink()
    done = subprocess.run(
        [sys.executable, "-m", "hf_music_w2v.cli", "probe", str(encoder_dir), "--tasks", str(tones), str(folds),
         "--output_dir", str(tmp_path / "out"), "--probe", "linear", "mlp", "--seeds", "0", "1", "--max_epochs", "6",
         "--patience", "2", "--on_error", "skip", "--feature_cache_dir", str(tmp_path / "features")],
        capture_output=True, text=True, timeout=600, env=program_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tones: single, best valid accuracy at layer" in done.stdout
    assert "tones: 1 unreadable audio files left out" in done.stdout
    summary = json.loads((tmp_path / "out" / "probe_summary.json").read_text())
    assert summary["tasks"]["tones"]["clips"] == {"train": 12, "valid": 5, "test": 6}
    report = json.loads((tmp_path / "out" / "folds" / "probe_results.json").read_text())
    assert report["protocol"]["task_metadata"]["audio_sample_rate"] == 48_000
    entry = next(e for e in report["results"] if e["probe"] == "mlp" and e["layer"] == 1)
    assert len(entry["test_accuracy_per_seed"]) == 2 and {"test_macro_f1", "test_top5_accuracy"} <= set(entry)


def test_the_command_line_gives_one_error_line_for_a_bad_task(encoder_dir, tmp_path, capsys):
    from hf_music_w2v.cli import main

    folder = write_hear(tmp_path / "events", embedding_type="event")
    with pytest.raises(SystemExit) as stopped:
        main(["probe", str(encoder_dir), "--tasks", str(folder), "--output_dir", str(tmp_path / "out")])
    assert str(stopped.value).startswith("error: ") and "only scene tasks are supported yet" in str(stopped.value)
    assert "\n" not in str(stopped.value)
    with pytest.raises(SystemExit, match="neither a built-in task"):
        main(["probe", str(encoder_dir), "--tasks", "pich", str(folder), "--output_dir", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="--nsynth_dir is needed"):
        main(["probe", str(encoder_dir), "--tasks", "pitch", "--output_dir", str(tmp_path / "out")])


def test_built_in_and_folder_tasks_run_together_each_in_its_folder(encoder_dir, mini_root, tmp_path):
    tones = write_marble(tmp_path / "tones", tone_rows(lambda name, f: name))
    from dataclasses import replace

    summary = probe_tasks(str(encoder_dir), ["instrument", str(tones)], tmp_path / "out", replace(QUICK, max_notes=30),
                          nsynth_dir=str(mini_root / "nsynth"), feature_cache_dir=tmp_path / "features")
    assert list(summary["tasks"]) == ["instrument", "tones"]
    nsynth = json.loads((tmp_path / "out" / "instrument" / "probe_results.json").read_text())
    assert {e["task"] for e in nsynth["results"]} == {"instrument"} and "notes" in nsynth["protocol"]
    assert summary["tasks"]["instrument"]["metric"] == "accuracy"
    assert "| [instrument](instrument/probe_results.json) | single |" in (tmp_path / "out" / "probe_summary.md").read_text()


def test_a_clip_of_minutes_is_read_window_by_window_in_bounded_memory(encoder_dir, tmp_path, monkeypatch):
    import tracemalloc

    from hf_music_w2v import inference

    monkeypatch.setattr(inference, "READ_BLOCK_FRAMES", 1 << 16)  # small reads: a short clip shows the bound
    encoder, extractor = load_encoder(str(encoder_dir))
    rate, seconds = 32_000, 120
    with sf.SoundFile(tmp_path / "long.wav", "w", rate, 1, subtype="PCM_16") as file:
        for start in range(0, seconds, 10):  # written 10 s at a time
            file.write(tone([440.0], seconds=10, rate=rate, phase=start))
    tracemalloc.start()
    try:
        found = clip_features(encoder, extractor, {"long": tmp_path / "long.wav"}, [2], 2, 1.0, tmp_path / "cache",
                              "weights")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    decoded = seconds * rate * 4  # the whole clip as float32: 15.4 MB
    assert peak < decoded / 6, f"peak {peak / 1e6:.1f} MB"
    assert found["long"].shape == (1, 16) and np.isfinite(found["long"]).all()


def test_two_tasks_of_one_name_and_unknown_task_kind_names_are_refused(encoder_dir, tmp_path):
    first = write_marble(tmp_path / "a" / "tones", tone_rows(lambda name, f: name))
    second = write_marble(tmp_path / "b" / "tones", tone_rows(lambda name, f: name))
    with pytest.raises(ProbeError, match="two tasks share a name"):
        probe_tasks(str(encoder_dir), [str(first), str(second)], tmp_path / "out", QUICK)
    with pytest.raises(ProbeError, match="--task_kind names tonez, which is not among the task folders"):
        probe_tasks(str(encoder_dir), [str(first)], tmp_path / "out", QUICK, kinds={"tonez": "single"})


# ------------------------------------------------------------------------------------------ mini tasks


@pytest.fixture(scope="module")
def mini_tasks(mini_root, tmp_path_factory) -> dict[str, Path]:
    """The package's mini tasks from a mini-NSynth whose notes are at MIDI 36, 60 and 84 only (registers far
    apart, so a random encoder carries them) and the session's mini-MusicNet."""
    from hf_music_w2v.data.mini import make_mini_nsynth
    from hf_music_w2v.data.mini_tasks import write_mini_tasks

    root = tmp_path_factory.mktemp("mini_tasks")
    make_mini_nsynth(root / "nsynth", seed=0, notes_per_instrument=4, pitches=(36, 60, 84))
    (root / "musicnet").symlink_to(mini_root / "musicnet")
    return write_mini_tasks(root, root / "tasks", seed=0)


def test_mini_tasks_are_written_in_marble_and_hear_layouts(mini_tasks):
    assert sorted(mini_tasks) == sorted(f"{form}/{name}{control}" for form, name in [
        ("marble", "nsynth_register"), ("marble", "nsynth_pitch"), ("marble", "musicnet_instruments"),
        ("hear", "nsynth_register"), ("hear", "musicnet_instruments")] for control in ("", "_shuffled"))
    kinds = {name: load_task(folder).kind for name, folder in mini_tasks.items()}
    assert kinds["marble/nsynth_register"] == kinds["hear/nsynth_register"] == "single"
    assert kinds["marble/musicnet_instruments"] == kinds["hear/musicnet_instruments"] == "multilabel"
    assert kinds["marble/nsynth_pitch"] == "regression"
    instruments = load_task(mini_tasks["hear/musicnet_instruments"])
    assert {"violin", "cello", "piano", "harpsichord", "flute"} <= set(instruments.names)
    assert instruments.metadata["audio_sample_rate"] == 16_000 and instruments.files["test"][0].parent.name == "test"
    marble = load_task(mini_tasks["marble/musicnet_instruments"])
    assert marble.counts() == instruments.counts() and (marble.labels["test"] == instruments.labels["test"]).all()
    assert load_task(mini_tasks["marble/nsynth_pitch"]).labels["train"].max() == pytest.approx(84 / 127)
    for name in ("marble/nsynth_register", "marble/musicnet_instruments", "marble/nsynth_pitch"):
        real, control = load_task(mini_tasks[name]), load_task(mini_tasks[f"{name}_shuffled"])
        for split in ("train", "valid", "test"):  # the same clips, the same labels per split, in another order
            assert [path.resolve() for path in real.files[split]] == [path.resolve() for path in control.files[split]]
            assert sorted(map(str, real.labels[split].tolist())) == sorted(map(str, control.labels[split].tolist()))
            assert (real.labels[split] != control.labels[split]).any()


def test_probes_learn_the_mini_tasks_and_stay_at_chance_on_their_shuffled_controls(mini_tasks, tmp_path):
    from transformers import Wav2Vec2ForPreTraining

    # Layer-normed, wider convolutions: random weights whose pooled features keep register, pitch and timbre.
    torch.manual_seed(0)
    Wav2Vec2ForPreTraining(tiny_pretraining_config(conv_dim=(32, 32), feat_extract_norm="layer",
                                                   conv_bias=True)).save_pretrained(tmp_path / "encoder")
    summary = probe_tasks(str(tmp_path / "encoder"), list(mini_tasks.values()), tmp_path / "out", QUICK,
                          feature_cache_dir=tmp_path / "features")

    def test_score(task: str, metric: str) -> float:
        from hf_music_w2v.probing import best_entry

        return best_entry(json.loads((tmp_path / "out" / task / "probe_results.json").read_text()))[metric]

    assert len(summary["tasks"]) == 10
    for task in ("nsynth_register", "nsynth_register-hear"):  # chance: 1/3 (the three registers are as common)
        assert test_score(task, "test_accuracy") >= 0.65
        assert test_score(task.replace("register", "register_shuffled"), "test_accuracy") <= 0.55
    for task in ("musicnet_instruments", "musicnet_instruments-hear"):  # chance: ROC-AUC 0.5
        assert test_score(task, "test_roc_auc") >= 0.75
        assert test_score(task.replace("instruments", "instruments_shuffled"), "test_roc_auc") <= 0.65
    assert test_score("nsynth_pitch", "test_r2") >= 0.45 and test_score("nsynth_pitch_shuffled", "test_r2") <= 0.15
