"""Probe task folders written from the rendered mini datasets, in MARBLE's and HEAR's layouts.

    hf-music-w2v make-mini-datasets data/mini --tasks     # renders, then writes data/mini/tasks/
    write_mini_tasks("data/mini", "data/mini/tasks")      # from an already rendered data/mini

Tasks, each with a `<name>_shuffled` control (the same clips, labels permuted within each split, so the
audio says nothing about them and a probe should stay at chance):
- `nsynth_register` (single): a mini-NSynth note's register, low (MIDI < 48), mid (48-71) or high (72 and up);
- `nsynth_pitch` (regression): its MIDI pitch / 127;
- `musicnet_instruments` (multilabel): the instruments sounding in a window of a mini-MusicNet recording, from
  its label CSVs (a note sounds from `start_time` to `end_time`, in 44.1 kHz samples).
MARBLE forms go to `OUT/marble/<name>/` ({split}.jsonl, audio paths relative to the folder, into `OUT/audio/`);
HEAR forms of the two classification tasks to `OUT/hear/<name>-hear/` (task_metadata.json, labelvocabulary.csv,
{split}.json, audio under 16000/{split}/; named apart from the MARBLE forms, so both can run in one probe).
"""

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf

from ..atomic import write_text_atomic
from ..audio import NOTE_SAMPLES, SAMPLING_RATE, resample
from .musicnet import MUSICNET_SAMPLING_RATE

SPLITS = ("train", "valid", "test")
REGISTERS = ("low", "mid", "high")
# General MIDI names (1-based programs) of the instruments mini-MusicNet's scores are played on.
GM_NAMES = {1: "piano", 7: "harpsichord", 41: "violin", 42: "viola", 43: "cello", 44: "contrabass", 61: "horn",
            69: "oboe", 71: "bassoon", 72: "clarinet", 74: "flute"}
# mini-MusicNet windows go to train, train, train, valid, test in turn, so every instrument is in each split.
WINDOW_SPLITS = ("train", "train", "train", "valid", "test")


def register(pitch: int) -> str:
    return REGISTERS[(pitch >= 48) + (pitch >= 72)]


def nsynth_clips(nsynth_dir: Path, audio_dir: Path) -> dict[str, list[tuple[str, dict]]]:
    """(audio file name, NSynth example) per split; the notes are copied into `audio_dir`."""
    clips = {}
    for split in SPLITS:
        examples = json.loads((nsynth_dir / f"nsynth-{split}" / "examples.json").read_text())
        clips[split] = []
        for name, example in sorted(examples.items()):
            file_name = f"nsynth_{name}.wav"
            shutil.copyfile(nsynth_dir / f"nsynth-{split}" / "audio" / f"{name}.wav", audio_dir / file_name)
            clips[split].append((file_name, example))
    return clips


def musicnet_windows(musicnet_dir: Path, audio_dir: Path, seconds: float) -> dict[str, list[tuple[str, list[str]]]]:
    """(audio file name, instruments sounding) per split of `seconds`-long windows of every recording, at 16 kHz."""
    windows = {split: [] for split in SPLITS}
    window = int(seconds * MUSICNET_SAMPLING_RATE)
    for labels_path in sorted(musicnet_dir.glob("*_labels/*.csv")):
        audio, rate = sf.read(musicnet_dir / labels_path.parent.name.replace("_labels", "_data")
                              / f"{labels_path.stem}.wav", dtype="float32")
        if rate != MUSICNET_SAMPLING_RATE:
            raise ValueError(f"{labels_path}: expected {MUSICNET_SAMPLING_RATE} Hz audio, found {rate} Hz")
        with open(labels_path, newline="") as file:
            notes = [(int(row["start_time"]), int(row["end_time"]), int(row["instrument"]))
                     for row in csv.DictReader(file)]
        for index, start in enumerate(range(0, len(audio) - window + 1, window)):
            sounding = {program for onset, offset, program in notes if onset < start + window and offset > start}
            names = sorted(GM_NAMES.get(program, f"program {program}") for program in sounding)
            file_name = f"musicnet_{labels_path.stem}_{index:03d}.wav"
            sf.write(audio_dir / file_name, resample(audio[start:start + window], MUSICNET_SAMPLING_RATE,
                                                     SAMPLING_RATE), SAMPLING_RATE, subtype="PCM_16")
            windows[WINDOW_SPLITS[index % len(WINDOW_SPLITS)]].append((file_name, names))
    if not all(windows.values()):
        raise ValueError(f"{musicnet_dir}: its recordings give no {seconds} s window to valid or test; each split "
                         f"needs recordings of at least {len(WINDOW_SPLITS) * seconds:g} s (--musicnet_seconds)")
    return windows


def shuffled(labels: dict[str, list], rng: np.random.Generator) -> dict[str, list]:
    """The labels permuted within each split: each split keeps its label counts, the clips lose theirs."""
    return {split: [values[i] for i in rng.permutation(len(values))] for split, values in labels.items()}


def write_marble(folder: Path, files: dict[str, list[str]], labels: dict[str, list]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        rows = []
        for file_name, label in zip(files[split], labels[split]):
            info = sf.info(folder.parent.parent / "audio" / file_name)
            rows.append(json.dumps({"audio_path": f"../../audio/{file_name}", "label": label,
                                    "duration": info.frames / info.samplerate, "sample_rate": info.samplerate,
                                    "num_samples": info.frames, "bit_depth": 16, "channels": info.channels}))
        write_text_atomic(folder / f"{split}.jsonl", "".join(row + "\n" for row in rows))
    return folder


def write_hear(folder: Path, audio_dir: Path, files: dict[str, list[str]], labels: dict[str, list],
               prediction_type: str, vocabulary: list[str], seconds: float) -> Path:
    """A HEAR scene task (trainvaltest); a multiclass label is given as a one-item list, as HEAR does."""
    for split in SPLITS:
        (folder / str(SAMPLING_RATE) / split).mkdir(parents=True, exist_ok=True)
        for file_name in files[split]:
            shutil.copyfile(audio_dir / file_name, folder / str(SAMPLING_RATE) / split / file_name)
        split_labels = {file_name: label if isinstance(label, list) else [label]
                        for file_name, label in zip(files[split], labels[split])}
        write_text_atomic(folder / f"{split}.json", json.dumps(split_labels, indent=1))
    write_text_atomic(folder / "labelvocabulary.csv", "idx,label\n" + "".join(
        f"{index},{label}\n" for index, label in enumerate(vocabulary)))
    evaluation = ["top1_acc"] if prediction_type == "multiclass" else ["mAP", "d_prime", "aucroc"]
    write_text_atomic(folder / "task_metadata.json", json.dumps({
        "task_name": folder.name, "version": "hf_music_w2v-mini", "embedding_type": "scene",
        "prediction_type": prediction_type, "split_mode": "trainvaltest", "sample_duration": seconds,
        "evaluation": evaluation, "label_vocab_size": len(vocabulary), "sample_rate": SAMPLING_RATE,
        "nfolds": 3}, indent=2))
    return folder


def write_mini_tasks(mini_root: str | os.PathLike, out: str | os.PathLike, seed: int = 0,
                     window_seconds: float = 2.0) -> dict[str, Path]:
    """Write the tasks above from MINI_ROOT/nsynth and MINI_ROOT/musicnet into OUT; return name -> folder.

    Names are `marble/<task>` and `hear/<task>`, each also with `_shuffled`; `seed` draws the shuffles. The
    mini-MusicNet windows are `window_seconds` long, without overlap.
    """
    mini_root, out = Path(mini_root), Path(out)
    for needed in ("nsynth", "musicnet"):
        if not (mini_root / needed).is_dir():
            raise FileNotFoundError(f"{mini_root / needed}: missing; render it first (hf-music-w2v "
                                    f"make-mini-datasets {mini_root})")
    audio_dir = out / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    notes = nsynth_clips(mini_root / "nsynth", audio_dir)
    windows = musicnet_windows(mini_root / "musicnet", audio_dir, window_seconds)
    note_files = {split: [name for name, _ in clips] for split, clips in notes.items()}
    window_files = {split: [name for name, _ in clips] for split, clips in windows.items()}
    tasks = {
        "nsynth_register": (note_files, {split: [register(e["pitch"]) for _, e in clips]
                                         for split, clips in notes.items()}),
        "nsynth_pitch": (note_files, {split: [e["pitch"] / 127 for _, e in clips] for split, clips in notes.items()}),
        "musicnet_instruments": (window_files, {split: [tags for _, tags in clips]
                                                for split, clips in windows.items()}),
    }
    rng = np.random.default_rng(seed)
    written = {}
    for name, (files, labels) in tasks.items():
        for variant, variant_labels in ((name, labels), (f"{name}_shuffled", shuffled(labels, rng))):
            written[f"marble/{variant}"] = write_marble(out / "marble" / variant, files, variant_labels)
            if name == "nsynth_pitch":
                continue
            multilabel = name == "musicnet_instruments"
            vocabulary = (sorted({tag for tags in labels["train"] for tag in tags}) if multilabel
                          else list(REGISTERS))
            written[f"hear/{variant}"] = write_hear(
                out / "hear" / f"{variant}-hear", audio_dir, files, variant_labels, "multilabel" if multilabel else "multiclass",
                vocabulary, window_seconds if multilabel else NOTE_SAMPLES / SAMPLING_RATE)
    return written
