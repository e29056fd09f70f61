"""Labelled audio tasks for the layer-wise probe: MARBLE- and HEAR-format task folders.

    task = load_task("tasks/gtzan")                       # MARBLE: train.jsonl, valid.jsonl, test.jsonl
    task = load_task("tasks/hear/nsynth_pitch-v2.2.3-5h")  # HEAR: task_metadata.json, labelvocabulary.csv, ...

A MARBLE folder holds `{train,valid,test}.jsonl`, one clip a line: `{"audio_path", "label", "duration",
"sample_rate", "num_samples", "bit_depth", "channels"}` (only `audio_path` and `label` are read; a relative
path is relative to the folder). A HEAR scene task holds `task_metadata.json`, `labelvocabulary.csv`
(`idx,label`), `{split}.json` mapping a file name to its list of labels, and the audio under
`{sample_rate}/{split}/`; of the rates present, the encoder's own is read, else the highest (and resampled).
HEAR's k-fold tasks (`fold00.json`, ...) are probed on one rotation at a time: fold `test_fold` (0 by default) is
test, the next one valid, the rest train; running each rotation in turn reuses the same cached features.

The task kind comes from the labels, or is given (`kind=`):
- `single`: one class per clip, a name or an integer (MARBLE's NSynth pitch is `pitch - 1`);
- `multilabel`: a list of tag names per clip, or a multi-hot list of 0/1 of one length;
- `regression`: a number, or a list of numbers of one length (several targets), not all integers 0/1.
"""

import csv
import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .probing import TASKS, ProbeError

SPLITS = ("train", "valid", "test")
KINDS = ("single", "multilabel", "regression")
ON_ERROR = ("raise", "skip")
HEAR_SPLIT_MODES = ("trainvaltest", "presplit_kfold", "new_split_kfold")
HEAR_PREDICTION_KINDS = {"multiclass": "single", "multilabel": "multilabel"}
HEAR_METRICS = ("top1_acc", "pitch_acc", "chroma_acc", "mAP", "d_prime", "aucroc", "event_onset_200ms_fms",
                "event_onset_50ms_fms", "segment_1s_er")


@dataclass
class ProbeTask:
    """A labelled task ready to probe: each split's audio files and encoded labels.

    `labels[split]` is `[clip]` class indices (single), `[clip, tag]` 0/1 floats (multilabel) or `[clip, target]`
    floats (regression); `names` are the classes, the tags or the targets.
    """

    name: str
    kind: str
    files: dict[str, list[Path]]
    labels: dict[str, np.ndarray]
    names: list[str]
    source: str
    skipped: dict[str, list[str]] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {split: len(files) for split, files in self.files.items()}


def is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def label_shape(label) -> str:
    """What a raw label looks like: "name", "integer", "number", "names", "numbers" or "other"."""
    if isinstance(label, str):
        return "name"
    if is_number(label):
        return "integer" if float(label).is_integer() else "number"
    if isinstance(label, list) and all(isinstance(item, str) for item in label):
        return "names"
    if isinstance(label, list) and label and all(is_number(item) for item in label):
        return "numbers"
    return "other"


def infer_kind(labels: list) -> str:
    """The kind that every one of `labels` (raw) fits; `ProbeError` when they disagree."""
    shapes = {label_shape(label) for label in labels}
    if shapes <= {"name", "integer"} and not ({"name", "integer"} <= shapes):
        return "single"
    if shapes == {"names"}:
        return "multilabel"
    if shapes == {"numbers"}:
        binary = all(float(v) in (0.0, 1.0) for label in labels for v in label)
        return "multilabel" if binary and len({len(label) for label in labels}) == 1 else "regression"
    if shapes <= {"integer", "number"}:
        return "regression"
    raise ProbeError(f"labels of several kinds ({', '.join(sorted(shapes))}); give the kind with --task_kind")


def encode_labels(task: str, kind: str, raw: dict[str, list], where: dict[str, list[str]],
                  vocabulary: list[str] | None = None) -> tuple[dict[str, np.ndarray], list[str]]:
    """(encoded labels per split, names) of raw labels; `where[split][i]` names row i in messages."""
    def wrong(split: str, index: int, expected: str):
        return ProbeError(f"task {task}: {where[split][index]} has label {raw[split][index]!r}; a {kind} task "
                          f"needs {expected}")

    encoded = {}
    if kind == "single":
        for split, labels in raw.items():
            for index, label in enumerate(labels):
                if label_shape(label) not in ("name", "integer"):
                    raise wrong(split, index, "one class (a name or an integer)")

        def key(label) -> str:
            return label if isinstance(label, str) else str(int(label))

        seen = {key(label) for label in raw["train"]}
        names = vocabulary or sorted(seen, key=lambda name: (1, 0, name) if not name.lstrip("-").isdigit()
                                     else (0, int(name), ""))
        index_of = {name: index for index, name in enumerate(names)}
        for split, labels in raw.items():
            for index, label in enumerate(labels):
                if key(label) not in seen:
                    raise ProbeError(f"task {task}: {where[split][index]} has class {label!r}, which no train clip "
                                     "has; a probe cannot learn it")
            encoded[split] = np.array([index_of[key(label)] for label in labels], dtype=np.int64)
        return encoded, names
    if kind == "multilabel":
        hot = {label_shape(label) for labels in raw.values() for label in labels} == {"numbers"}
        if hot:
            width = len(raw["train"][0])
            names = vocabulary or [f"tag {index}" for index in range(width)]
            for split, labels in raw.items():
                for index, label in enumerate(labels):
                    if label_shape(label) != "numbers" or len(label) != width or not all(v in (0, 1) for v in label):
                        raise wrong(split, index, f"a multi-hot list of {width} zeros and ones")
                encoded[split] = np.array(labels, dtype=np.float32)
        else:
            for split, labels in raw.items():
                for index, label in enumerate(labels):
                    if label_shape(label) != "names":
                        raise wrong(split, index, "a list of tag names")
            names = vocabulary or sorted({tag for label in raw["train"] for tag in label})
            index_of = {name: index for index, name in enumerate(names)}
            for split, labels in raw.items():
                rows = np.zeros((len(labels), len(names)), dtype=np.float32)
                for index, label in enumerate(labels):
                    for tag in label:
                        if tag not in index_of:
                            raise ProbeError(f"task {task}: {where[split][index]} has tag {tag!r}, which is not "
                                             "among the task's tags")
                        rows[index, index_of[tag]] = 1
                encoded[split] = rows
        never = [names[i] for i in np.flatnonzero(encoded["train"].sum(axis=0) == 0)]
        for split in ("valid", "test"):
            for tag in np.flatnonzero(encoded[split].sum(axis=0) > 0):
                if names[tag] in never:
                    row = int(np.flatnonzero(encoded[split][:, tag])[0])
                    raise ProbeError(f"task {task}: {where[split][row]} has tag {names[tag]!r}, which no train "
                                     "clip has; a probe cannot learn it")
        return encoded, names
    if kind == "regression":
        first = raw["train"][0]
        width = len(first) if isinstance(first, list) else None
        for split, labels in raw.items():
            for index, label in enumerate(labels):
                ok = (is_number(label) and width is None) or (
                    isinstance(label, list) and len(label) == width and all(is_number(v) for v in label))
                if not ok:
                    raise wrong(split, index, "a number" if width is None else f"a list of {width} numbers")
            encoded[split] = np.array(labels, dtype=np.float32).reshape(len(labels), -1)
        names = vocabulary or (["target"] if width is None else [f"target {i}" for i in range(width)])
        return encoded, names
    raise ProbeError(f"task kind must be one of {', '.join(KINDS)}, got {kind!r}")


def read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ProbeError(f"{path}: missing; {what}") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ProbeError(f"{path}: not readable JSON ({error})") from None


def marble_rows(folder: Path) -> dict[str, list[tuple[Path, object, str]]]:
    """(audio path, raw label, where) of each row of `{split}.jsonl`."""
    rows = {}
    for split in SPLITS:
        path = folder / f"{split}.jsonl"
        if not path.is_file():
            raise ProbeError(f"{path}: missing; a MARBLE task folder holds train.jsonl, valid.jsonl and test.jsonl")
        rows[split] = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path.name} line {number}"
            try:
                row = json.loads(line)
            except ValueError as error:
                raise ProbeError(f"{path} line {number}: not JSON ({error})") from None
            if not isinstance(row, dict) or not isinstance(row.get("audio_path"), str) or "label" not in row:
                raise ProbeError(f"{path} line {number}: needs the fields audio_path (a path) and label")
            audio = Path(row["audio_path"])
            rows[split].append((audio if audio.is_absolute() else folder / audio, row["label"], where))
    return rows


def hear_rows(folder: Path, sample_rate: int | None, test_fold: int = 0) -> tuple[dict[str, list[tuple[Path, object, str]]], list[str],
                                                               str, dict]:
    """(rows per split, label vocabulary, task kind, metadata) of a HEAR task folder."""
    metadata = read_json(folder / "task_metadata.json", "a HEAR task folder holds task_metadata.json")
    if not isinstance(metadata, dict):
        raise ProbeError(f"{folder / 'task_metadata.json'}: expected a JSON object")

    def field_of(key: str, allowed) -> str:
        value = metadata.get(key)
        if value not in allowed:
            raise ProbeError(f"{folder / 'task_metadata.json'}: {key} must be one of {', '.join(allowed)}, "
                             f"got {value!r}")
        return value

    if metadata.get("embedding_type") == "event":
        raise ProbeError(f"{folder}: a HEAR event task (timestamp embeddings, onset/offset labels); only scene "
                         "tasks are supported yet")
    field_of("embedding_type", ("scene",))
    kind = HEAR_PREDICTION_KINDS[field_of("prediction_type", tuple(HEAR_PREDICTION_KINDS))]
    mode = field_of("split_mode", HEAR_SPLIT_MODES)
    duration = metadata.get("sample_duration")
    if duration is not None and not (is_number(duration) and duration > 0):
        raise ProbeError(f"{folder / 'task_metadata.json'}: sample_duration must be a positive number of seconds or "
                         f"null, got {duration!r}")
    evaluation = metadata.get("evaluation", [])
    unknown = [name for name in evaluation if name not in HEAR_METRICS] if isinstance(evaluation, list) else evaluation
    if unknown:
        raise ProbeError(f"{folder / 'task_metadata.json'}: evaluation lists unknown metrics {unknown!r}; known: "
                         f"{', '.join(HEAR_METRICS)}")

    vocabulary_path = folder / "labelvocabulary.csv"
    try:
        with open(vocabulary_path, newline="") as file:
            entries = list(csv.DictReader(file))
    except FileNotFoundError:
        raise ProbeError(f"{vocabulary_path}: missing; a HEAR task folder holds labelvocabulary.csv") from None
    if not entries or "label" not in entries[0] or "idx" not in entries[0]:
        raise ProbeError(f"{vocabulary_path}: expected the columns idx,label and at least one row")
    if not all(str(entry["idx"]).strip().isdigit() for entry in entries):
        raise ProbeError(f"{vocabulary_path}: idx must be whole numbers 0, 1, ...")
    vocabulary = [entry["label"] for entry in sorted(entries, key=lambda entry: int(entry["idx"]))]

    if mode == "trainvaltest":
        parts = {split: [split] for split in SPLITS}
    else:
        folds = sorted(path.stem for path in folder.glob("fold[0-9][0-9].json"))
        if len(folds) < 3:
            raise ProbeError(f"{folder}: split_mode {mode} needs at least 3 fold files (fold00.json, ...), found "
                             f"{len(folds)}")
        if not 0 <= test_fold < len(folds):
            raise ProbeError(f"{folder}: --hear_test_fold must be 0-{len(folds) - 1} ({len(folds)} folds), got "
                             f"{test_fold}")
        valid_fold = (test_fold + 1) % len(folds)
        parts = {"test": [folds[test_fold]], "valid": [folds[valid_fold]],
                 "train": [fold for index, fold in enumerate(folds) if index not in (test_fold, valid_fold)]}
    rates = sorted(int(path.name) for path in folder.iterdir() if path.is_dir() and path.name.isdigit())
    if not rates:
        raise ProbeError(f"{folder}: no audio folder {{sample_rate}}/ (e.g. 16000/train/)")
    rate = sample_rate if sample_rate in rates else rates[-1]
    rows = {}
    for split, names in parts.items():
        rows[split] = []
        for name in names:
            labels = read_json(folder / f"{name}.json", f"split_mode {mode} needs it")
            if not isinstance(labels, dict):
                raise ProbeError(f"{folder / f'{name}.json'}: expected an object mapping file names to label lists")
            for file_name, label in labels.items():
                if kind == "single":
                    if not (isinstance(label, list) and len(label) == 1):
                        raise ProbeError(f"task {folder.name}: {name}.json {file_name!r} has labels {label!r}; a "
                                         "multiclass task needs exactly one")
                    label = label[0]
                rows[split].append((folder / str(rate) / name / file_name, label, f"{name}.json {file_name!r}"))
    metadata = {**metadata, "audio_sample_rate": rate, "folds": {split: names for split, names in parts.items()}}
    if kind == "single":
        unknown_labels = {str(label) for split_rows in rows.values() for _, label, _ in split_rows} - set(vocabulary)
    else:
        unknown_labels = {str(tag) for split_rows in rows.values() for _, label, _ in split_rows
                          for tag in (label if isinstance(label, list) else [label])} - set(vocabulary)
    if unknown_labels:
        raise ProbeError(f"task {folder.name}: labels not in labelvocabulary.csv: {sorted(unknown_labels)[:5]}")
    return rows, vocabulary, kind, metadata


def load_task(folder, kind: str | None = None, on_error: str = "raise", sample_rate: int | None = None,
              test_fold: int = 0) -> ProbeTask:
    """A MARBLE or HEAR task folder as a `ProbeTask`; `ProbeError` says what is wrong with it.

    `kind` overrides the inferred task kind. A missing or unreadable audio file is an error, or with
    `on_error="skip"` is left out and listed in `skipped`. `sample_rate` picks a HEAR task's audio folder,
    `test_fold` a HEAR k-fold task's rotation.
    """
    from .data.validation import DataError, audio_info

    folder = Path(folder)
    if on_error not in ON_ERROR:
        raise ProbeError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    if kind is not None and kind not in KINDS:
        raise ProbeError(f"--task_kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not folder.is_dir():
        raise ProbeError(f"--tasks {folder}: neither a built-in task ({', '.join(TASKS)}) nor a task folder")
    if (folder / "task_metadata.json").is_file():
        rows, vocabulary, found_kind, metadata = hear_rows(folder, sample_rate, test_fold)
        source = "hear"
        if kind is not None and kind != found_kind:
            raise ProbeError(f"task {folder.name}: its task_metadata.json says {metadata['prediction_type']}; "
                             f"--task_kind {kind} does not fit it")
    elif (folder / "train.jsonl").is_file():
        rows, vocabulary, metadata, source = marble_rows(folder), None, {}, "marble"
        found_kind = None
    else:
        raise ProbeError(f"{folder}: not a task folder: expected train.jsonl, valid.jsonl and test.jsonl (MARBLE) or "
                         "task_metadata.json (HEAR)")
    skipped = {split: [] for split in SPLITS}
    kept = {}
    for split, split_rows in rows.items():
        kept[split] = []
        for path, label, where in split_rows:
            try:
                if audio_info(path)[0] == 0:
                    raise DataError(path, "contains no samples")
            except DataError as error:
                if on_error == "raise":
                    raise ProbeError(f"task {folder.name}, {where}: {error} (--on_error skip leaves such clips "
                                     "out)") from None
                skipped[split].append(f"{where}: {error}")
                continue
            kept[split].append((path, label, where))
        if not kept[split]:
            raise ProbeError(f"task {folder.name}: the {split} split has no clips"
                             + (f" ({len(skipped[split])} skipped)" if skipped[split] else ""))
    raw = {split: [label for _, label, _ in split_rows] for split, split_rows in kept.items()}
    where = {split: [w for _, _, w in split_rows] for split, split_rows in kept.items()}
    if kind is None:
        try:
            kind = found_kind or infer_kind(raw["train"])  # valid and test are then checked against it
        except ProbeError as error:
            raise ProbeError(f"task {folder.name}: train.jsonl's {error}") from None
    labels, names = encode_labels(folder.name, kind, raw, where, vocabulary)
    files = {split: [path for path, _, _ in split_rows] for split, split_rows in kept.items()}
    return ProbeTask(folder.name, kind, files, labels, names, source, {s: v for s, v in skipped.items() if v},
                     metadata)


__all__ = ["KINDS", "ProbeTask", "infer_kind", "load_task"]
