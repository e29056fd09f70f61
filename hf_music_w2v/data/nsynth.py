"""NSynth (json/wav release, or a Hub/parquet copy) as a `datasets.Dataset` of 4 s notes at 16 kHz."""

import json
import os
from pathlib import Path

from datasets import ClassLabel, Dataset, Features, Sequence, Value, load_dataset, load_from_disk
from tqdm.auto import tqdm

from ..audio import NOTE_SAMPLES, SAMPLING_RATE, fixed_length, normalize_audio
from ..configuration_music_wav2vec2 import NSYNTH_INSTRUMENT_FAMILIES
from .audio_column import SoundfileAudio
from .cache import cache_key, publish_dataset, resolve_cache_dir
from .validation import DataError, SkipLog, check_on_error, read_audio

NSYNTH_SOURCES = ("acoustic", "electronic", "synthetic")
NSYNTH_QUALITIES = (
    "bright",
    "dark",
    "distortion",
    "fast_decay",
    "long_release",
    "multiphonic",
    "nonlinear_env",
    "percussive",
    "reverb",
    "tempo-synced",
)
_SPLIT_FOLDERS = {"train": "train", "valid": "valid", "validation": "valid", "test": "test"}
_INT_FIELDS = ("note", "pitch", "velocity", "instrument", "instrument_family", "instrument_source", "sample_rate")
_STR_FIELDS = ("note_str", "instrument_str", "instrument_family_str", "instrument_source_str")

FEATURES = Features(
    {
        "note": Value("int64"),
        "note_str": Value("string"),
        "instrument": Value("int64"),
        "instrument_str": Value("string"),
        "pitch": Value("int64"),
        "velocity": Value("int64"),
        "sample_rate": Value("int64"),
        "qualities": Sequence(Value("int64")),
        "qualities_str": Sequence(Value("string")),
        "instrument_family": ClassLabel(names=list(NSYNTH_INSTRUMENT_FAMILIES)),
        "instrument_family_str": Value("string"),
        "instrument_source": ClassLabel(names=list(NSYNTH_SOURCES)),
        "instrument_source_str": Value("string"),
        # Indexed as a plain struct of datasets' audio layout: `save_to_disk` would copy every file's bytes into
        # an audio feature's column. `load_nsynth` makes the column a `SoundfileAudio` on the way out.
        "audio": {"bytes": Value("binary"), "path": Value("string")},
    }
)


def split_folder_name(split: str) -> str:
    if split not in _SPLIT_FOLDERS:
        raise ValueError(f"split must be one of {sorted(_SPLIT_FOLDERS)}, got {split!r}")
    return f"nsynth-{_SPLIT_FOLDERS[split]}"


def find_split_dir(path: Path, split: str) -> Path | None:
    """The folder holding `examples.json` for `split`, or None if `path` is not a json/wav NSynth folder."""
    folder = split_folder_name(split)
    if (path / folder / "examples.json").is_file():
        return path / folder
    if (path / "examples.json").is_file():
        if path.name.startswith("nsynth-") and path.name != folder:
            raise DataError(path, f"this folder holds the {path.name} split, but split={split!r} was asked for")
        return path
    return None


def validate_entry(key: str, entry: object, examples_path: Path) -> dict:
    """Check one examples.json entry's fields; return the row without audio."""
    where = f"{examples_path} entry {key!r}"
    if not isinstance(entry, dict):
        raise DataError(where, f"expected an object of note fields, found {type(entry).__name__}")
    missing = [name for name in (*_INT_FIELDS, *_STR_FIELDS, "qualities") if name not in entry]
    if missing:
        raise DataError(where, f"missing field(s) {', '.join(missing)}")
    for name in _INT_FIELDS:
        if not isinstance(entry[name], int) or isinstance(entry[name], bool):
            raise DataError(where, f"field {name!r} must be an integer, found {entry[name]!r}")
        if not 0 <= entry[name] < 2**31:
            raise DataError(where, f"field {name!r} must be a non-negative integer below 2**31, found {entry[name]}")
    for name in _STR_FIELDS:
        if not isinstance(entry[name], str):
            raise DataError(where, f"field {name!r} must be a string, found {entry[name]!r}")
    if entry["note_str"] != key:
        raise DataError(where, f"note_str {entry['note_str']!r} differs from its key")
    if not is_plain_file_name(key):
        raise DataError(where, "note_str names the file audio/<note_str>.wav, so it must be a plain file name "
                               "(no path separator, no '..', not absolute)")
    if not 1 <= entry["velocity"] <= 127:
        raise DataError(where, f"velocity must be a MIDI velocity in [1, 127], found {entry['velocity']}")
    if not 0 <= entry["pitch"] <= 127:
        raise DataError(where, f"pitch must be a MIDI number in [0, 127], found {entry['pitch']}")
    family = entry["instrument_family"]
    if not 0 <= family < len(NSYNTH_INSTRUMENT_FAMILIES):
        raise DataError(where, f"instrument_family must be in [0, 10], found {family}")
    if entry["instrument_family_str"] != NSYNTH_INSTRUMENT_FAMILIES[family]:
        raise DataError(
            where,
            f"instrument_family {family} is {NSYNTH_INSTRUMENT_FAMILIES[family]!r} but instrument_family_str "
            f"says {entry['instrument_family_str']!r}",
        )
    source = entry["instrument_source"]
    if not 0 <= source < len(NSYNTH_SOURCES) or entry["instrument_source_str"] != NSYNTH_SOURCES[source]:
        raise DataError(
            where, f"instrument_source {source} / {entry['instrument_source_str']!r} is not one of {NSYNTH_SOURCES}"
        )
    qualities = entry["qualities"]
    if not (isinstance(qualities, list) and len(qualities) == len(NSYNTH_QUALITIES)
            and all(type(flag) is int and flag in (0, 1) for flag in qualities)):
        raise DataError(where, f"qualities must be a list of {len(NSYNTH_QUALITIES)} 0/1 flags, found {qualities!r}")
    row = {name: entry[name] for name in (*_INT_FIELDS, *_STR_FIELDS, "qualities")}
    row["qualities_str"] = [name for name, flag in zip(NSYNTH_QUALITIES, qualities) if flag]
    return row


def is_plain_file_name(name: str) -> bool:
    """True for a name that stays inside its folder: no separator, no '..', not absolute, no NUL."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in ("/", "\\", "\0")) \
        and not Path(name).is_absolute()


class DuplicateKeys(dict):
    """examples.json as a dict, remembering keys that appear more than once (json keeps only the last)."""

    def __init__(self, pairs):
        super().__init__()
        self.duplicates: dict[str, int] = {}
        for key, value in pairs:
            if key in self:
                self.duplicates[key] = self.duplicates.get(key, 1) + 1
            self[key] = value


def read_examples_json(examples_path: Path) -> dict:
    try:
        examples = json.loads(examples_path.read_text(encoding="utf-8"), object_pairs_hook=DuplicateKeys)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(examples_path, f"not valid JSON ({error})") from error
    if not isinstance(examples, dict):
        raise DataError(examples_path, "expected a JSON object keyed by note_str")
    return examples


def build_index(split_dir: Path, on_error: str) -> Dataset:
    """Validate every entry and its wav once (full decode) and return the metadata table."""
    examples_path = split_dir / "examples.json"
    examples = read_examples_json(examples_path)
    skips = SkipLog("NSynth notes")
    rows = []
    for key, entry in tqdm(examples.items(), desc=f"checking {split_dir.name}", unit="note"):
        try:
            if key in getattr(examples, "duplicates", {}):
                raise DataError(f"{examples_path} entry {key!r}",
                                f"the key appears {examples.duplicates[key]} times; which one is meant is unclear")
            row = validate_entry(key, entry, examples_path)
            wav = split_dir / "audio" / f"{key}.wav"
            if row["sample_rate"] != SAMPLING_RATE:
                raise DataError(f"{examples_path} entry {key!r}", f"sample_rate must be 16000, found {row['sample_rate']}")
            read_audio(wav, expected_sampling_rate=SAMPLING_RATE, expected_samples=NOTE_SAMPLES)
        except DataError as error:
            skips.handle(error, on_error)
            continue
        row["audio"] = {"bytes": None, "path": str(wav.resolve())}
        rows.append(row)
    skips.report()
    if not rows:
        raise DataError(examples_path, "no valid notes")
    return Dataset.from_list(rows, features=FEATURES)


def load_nsynth(
    path_or_hub_id: str | os.PathLike,
    split: str = "train",
    pitch_range: tuple[int, int] | None = None,
    on_error: str = "raise",
    cache_dir: str | os.PathLike | None = None,
    decode: bool = True,
) -> Dataset:
    """Load one NSynth split with NSynth's own field names plus `audio` (16 kHz mono float32).

    Args:
        path_or_hub_id: the folder holding nsynth-train/, nsynth-valid/, nsynth-test/ as extracted from the
            json/wav tarballs, one such split folder alone, a local folder of parquet files, or a Hub dataset id
            (parquet with an `audio` column and the same fields).
        split: "train", "valid" (or "validation") or "test".
        pitch_range: keep notes with `lo <= pitch <= hi` only, e.g. (21, 108) as HEAR does.
        on_error: "raise" stops at the first invalid note with an error naming the file; "skip" leaves such
            notes out and reports how many, once.
        cache_dir: where the validated index is kept (default `$HF_MUSIC_W2V_CACHE` or
            ~/.cache/hf_music_w2v); the second call with the same inputs reads it instead of re-checking.
        decode: `audio` comes out as {"array", "sampling_rate"} (a `SoundfileAudio` column, decoded by
            soundfile wherever `datasets` decodes features); with False it stays {"bytes", "path"}.
    """
    check_on_error(on_error)
    split_folder_name(split)
    path = Path(path_or_hub_id)
    split_dir = find_split_dir(path, split) if path.is_dir() else None
    if split_dir is not None:
        examples_path = split_dir / "examples.json"
        key = cache_key("nsynth", examples_path, split_dir / "audio", on_error)
        cached = resolve_cache_dir(cache_dir) / "nsynth" / key
        if not cached.exists():
            publish_dataset(build_index(split_dir, on_error), cached)
        dataset = load_from_disk(str(cached))
    elif path.is_dir() and not any(path.rglob("*.parquet")):
        raise DataError(path, f"not an NSynth folder: expected {split_folder_name(split)}/examples.json, "
                              "examples.json with audio/, or parquet files")
    else:
        dataset = load_hub_copy(str(path_or_hub_id), split)
    if pitch_range is not None:
        low, high = pitch_range
        dataset = dataset.filter(lambda pitch: low <= pitch <= high, input_columns=["pitch"])
    return dataset.cast_column("audio", SoundfileAudio(decode=decode))


def load_hub_copy(path_or_hub_id: str, split: str) -> Dataset:
    """A parquet copy (Hub id or local folder) with an `audio` column and NSynth's fields."""
    candidates = ["validation", "valid"] if _SPLIT_FOLDERS[split] == "valid" else [split]
    for hub_split in candidates:
        try:
            dataset = load_dataset(path_or_hub_id, split=hub_split)
            break
        except ValueError as error:  # datasets raises ValueError for an unknown split name
            last_error = error
    else:
        raise DataError(path_or_hub_id, f"no split named {' or '.join(candidates)} ({last_error})")
    missing = [name for name in ("audio", "pitch", "instrument_family", "note_str") if name not in dataset.column_names]
    if missing:
        raise DataError(path_or_hub_id, f"expected NSynth's columns; missing {', '.join(missing)}")
    return dataset


#: The columns `collate_notes` reads: select them before batching and the other metadata is never converted.
COLLATED_COLUMNS = ("audio", "pitch", "instrument_family")


def collate_notes(rows: list[dict]) -> dict:
    """NSynth rows (decoded audio) -> model inputs: normalised 4 s waveforms and both label kinds.

    The data collator of fine-tuning, usable as `Trainer(data_collator=collate_notes, ...)` (with
    `remove_unused_columns=False`, so the rows keep their audio, and `label_names=["pitch_labels",
    "instrument_labels"]`).
    """
    import torch

    audio = torch.empty(len(rows), NOTE_SAMPLES)  # filled row by row: np.stack's copy cost as much as the reads
    for target, row in zip(audio, rows):
        target.copy_(torch.from_numpy(fixed_length(row["audio"]["array"])))
    return {
        "input_values": normalize_audio(audio, in_place=True),
        "pitch_labels": torch.tensor([row["pitch"] for row in rows]),
        "instrument_labels": torch.tensor([row["instrument_family"] for row in rows]),
    }
