import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from datasets import load_from_disk

from hf_music_w2v import NSYNTH_INSTRUMENT_FAMILIES
from hf_music_w2v.data import DataError, load_nsynth

FIELDS = (
    "note", "note_str", "instrument", "instrument_str", "pitch", "velocity", "sample_rate", "qualities",
    "qualities_str", "instrument_family", "instrument_family_str", "instrument_source", "instrument_source_str",
)


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_rows_are_exactly_what_the_generator_wrote(mini_root, cache, split):
    split_dir = mini_root / "nsynth" / f"nsynth-{split}"
    written = json.loads((split_dir / "examples.json").read_text())
    dataset = load_nsynth(mini_root / "nsynth", split, cache_dir=cache)
    assert len(dataset) == len(written) > 0
    for row in dataset:
        entry = written[row["note_str"]]
        assert {name: row[name] for name in FIELDS} == {name: entry[name] for name in FIELDS}
        pcm, rate = sf.read(split_dir / "audio" / f"{row['note_str']}.wav", dtype="float32")
        assert row["audio"]["sampling_rate"] == rate == 16000
        assert row["audio"]["array"].dtype == np.float32 and row["audio"]["array"].shape == (64000,)
        np.testing.assert_array_equal(row["audio"]["array"], pcm)


def test_family_is_a_class_label_and_splits_share_no_instrument(mini_root, cache):
    splits = {split: load_nsynth(mini_root / "nsynth", split, cache_dir=cache) for split in ("train", "valid", "test")}
    assert splits["train"].features["instrument_family"].names == list(NSYNTH_INSTRUMENT_FAMILIES)
    instruments = {split: set(ds["instrument_str"]) for split, ds in splits.items()}
    assert not instruments["train"] & instruments["valid"]
    assert not instruments["train"] & instruments["test"]
    assert not instruments["valid"] & instruments["test"]
    for dataset in splits.values():
        assert set(dataset["instrument_family"]) == set(range(11))
        assert set(dataset["velocity"]) <= {25, 50, 75, 100, 127}


def test_validation_alias_and_single_split_folder(mini_root, cache):
    by_alias = load_nsynth(mini_root / "nsynth", "validation", cache_dir=cache)
    alone = load_nsynth(mini_root / "nsynth" / "nsynth-valid", "valid", cache_dir=cache)
    assert by_alias["note_str"] == alone["note_str"]
    with pytest.raises(DataError, match="holds the nsynth-valid split"):
        load_nsynth(mini_root / "nsynth" / "nsynth-valid", "test", cache_dir=cache)
    with pytest.raises(ValueError, match="split must be one of"):
        load_nsynth(mini_root / "nsynth", "dev", cache_dir=cache)


def test_pitch_range_filter(mini_root, cache):
    full = load_nsynth(mini_root / "nsynth", "train", cache_dir=cache)
    kept = load_nsynth(mini_root / "nsynth", "train", pitch_range=(40, 80), cache_dir=cache)
    assert kept["pitch"] == [p for p in full["pitch"] if 40 <= p <= 80]
    assert 0 < len(kept) < len(full)


def test_second_call_reads_the_cache_and_changes_invalidate_it(tmp_path, mini_root, cache):
    split_dir = tmp_path / "nsynth-test"
    shutil.copytree(mini_root / "nsynth" / "nsynth-test", split_dir)
    load_nsynth(split_dir, "test", cache_dir=cache)
    load_nsynth(split_dir, "test", cache_dir=cache)
    assert len(list((cache / "nsynth").iterdir())) == 1
    examples = json.loads((split_dir / "examples.json").read_text())
    dropped = sorted(examples)[0]
    del examples[dropped]
    (split_dir / "examples.json").write_text(json.dumps(examples))
    reloaded = load_nsynth(split_dir, "test", cache_dir=cache)
    assert dropped not in reloaded["note_str"]
    assert len(list((cache / "nsynth").iterdir())) == 2


def test_hub_parquet_copy_gives_the_same_rows(tmp_path, mini_root, cache):
    split_dir = mini_root / "nsynth" / "nsynth-test"
    written = json.loads((split_dir / "examples.json").read_text())
    rows = []
    for note_str, entry in sorted(written.items()):
        wav = split_dir / "audio" / f"{note_str}.wav"
        rows.append({**entry, "audio": {"bytes": wav.read_bytes(), "path": wav.name}})
    (tmp_path / "hub" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "hub" / "data" / "test-00000-of-00001.parquet")
    from_hub = load_nsynth(tmp_path / "hub", "test", cache_dir=cache)
    from_json = load_nsynth(mini_root / "nsynth", "test", cache_dir=cache)
    assert sorted(from_hub["note_str"]) == sorted(from_json["note_str"])
    reference = {row["note_str"]: row for row in from_json}
    for row in from_hub:
        assert row["pitch"] == reference[row["note_str"]]["pitch"]
        assert row["instrument_family"] == reference[row["note_str"]]["instrument_family"]
        np.testing.assert_array_equal(row["audio"]["array"], reference[row["note_str"]]["audio"]["array"])


def break_one_note(split_dir, how):
    """Damage the first note of a copied split the way `how` says; return its note_str."""
    examples = json.loads((split_dir / "examples.json").read_text())
    note_str = sorted(examples)[0]
    wav = split_dir / "audio" / f"{note_str}.wav"
    audio, rate = sf.read(wav, dtype="float32")
    if how == "missing":
        wav.unlink()
    elif how == "empty":
        wav.write_bytes(b"")
    elif how == "truncated":
        wav.write_bytes(wav.read_bytes()[: wav.stat().st_size // 2])
    elif how == "not_audio":
        wav.write_text("this is not a wav file")
    elif how == "sample_rate":
        sf.write(wav, audio, 22050, subtype="PCM_16")
    elif how == "stereo":
        sf.write(wav, np.stack([audio, audio], axis=1), rate, subtype="PCM_16")
    elif how == "nan":
        audio[100] = np.nan
        sf.write(wav, audio, rate, subtype="FLOAT")
    elif how == "wrong_label":
        examples[note_str]["instrument_family_str"] = "vocal" if examples[note_str]["instrument_family"] != 10 else "bass"
        (split_dir / "examples.json").write_text(json.dumps(examples))
    elif how in ("path_escape", "absolute"):
        # A real wav outside the dataset: the loader must not read it, nor put its path in a row.
        outside = split_dir.parent / "outside"
        outside.mkdir(exist_ok=True)
        sf.write(outside / "evil.wav", audio, rate, subtype="PCM_16")
        escaped = "../../outside/evil" if how == "path_escape" else str(outside / "evil")
        entry = examples.pop(note_str)
        examples[escaped] = {**entry, "note_str": escaped}
        (split_dir / "examples.json").write_text(json.dumps(examples))
        return escaped
    elif how == "duplicate":
        text = json.dumps(examples)
        first = json.dumps({note_str: examples[note_str]})[1:-1]
        (split_dir / "examples.json").write_text("{" + first + ", " + text[1:])  # json keeps the last silently
    elif how in ("unhashable_qualities", "huge_velocity", "string_field"):
        field, value = {"unhashable_qualities": ("qualities", [[0]] * 10), "huge_velocity": ("velocity", 2**70),
                        "string_field": ("instrument_str", 5)}[how]
        examples[note_str][field] = value
        (split_dir / "examples.json").write_text(json.dumps(examples))
    return note_str


BAD_NOTES = {
    "missing": "file not found",
    "empty": "empty",
    "truncated": "expected 64000 samples",
    "not_audio": "not a readable audio file",
    "sample_rate": "expected a sample rate of 16000 Hz, found 22050 Hz",
    "stereo": "expected mono audio, found 2 channels",
    "nan": "NaN or infinite",
    "wrong_label": "instrument_family_str says",
    "path_escape": "must be a plain file name",
    "absolute": "must be a plain file name",
    "duplicate": "the key appears 2 times",
    "unhashable_qualities": "qualities must be a list of 10 0/1 flags",
    "huge_velocity": "must be a non-negative integer below 2\\*\\*31",
    "string_field": "field 'instrument_str' must be a string",
}


@pytest.mark.parametrize("how", sorted(BAD_NOTES))
def test_bad_note_raises_naming_the_file_or_is_skipped_and_counted(tmp_path, mini_root, cache, how, caplog):
    split_dir = tmp_path / "nsynth-test"
    shutil.copytree(mini_root / "nsynth" / "nsynth-test", split_dir)
    total = len(json.loads((split_dir / "examples.json").read_text()))
    note_str = break_one_note(split_dir, how)
    with pytest.raises(DataError, match=BAD_NOTES[how]) as error:
        load_nsynth(split_dir, "test", cache_dir=cache)
    assert note_str in str(error.value)
    skipped = load_nsynth(split_dir, "test", on_error="skip", cache_dir=cache)
    assert len(skipped) == total - 1 and note_str not in skipped["note_str"]
    assert "skipped 1 invalid NSynth notes" in caplog.text
    paths = load_nsynth(split_dir, "test", on_error="skip", cache_dir=cache, decode=False)["audio"]
    assert all(Path(a["path"]).parent == split_dir.resolve() / "audio" for a in paths)


def test_a_wav_rewritten_after_the_first_load_is_checked_again(tmp_path, mini_root, cache):
    split_dir = tmp_path / "nsynth-test"
    shutil.copytree(mini_root / "nsynth" / "nsynth-test", split_dir)
    assert len(load_nsynth(split_dir, "test", cache_dir=cache)) > 0  # cached index
    note_str = break_one_note(split_dir, "truncated")  # rewritten in place: the audio/ folder's own stat may not change
    with pytest.raises(DataError, match="expected 64000 samples") as error:
        load_nsynth(split_dir, "test", cache_dir=cache)
    assert note_str in str(error.value)


def test_unparsable_examples_json(tmp_path, mini_root, cache):
    split_dir = tmp_path / "nsynth-test"
    shutil.copytree(mini_root / "nsynth" / "nsynth-test", split_dir)
    (split_dir / "examples.json").write_text('{"broken": ')
    with pytest.raises(DataError, match="examples.json: not valid JSON"):
        load_nsynth(split_dir, "test", cache_dir=cache)


def test_not_an_nsynth_folder(tmp_path, cache):
    with pytest.raises(DataError, match="not an NSynth folder"):
        load_nsynth(tmp_path, "train", cache_dir=cache)


def test_the_decoded_dataset_survives_datasets_usual_operations(mini_root, cache):
    notes = load_nsynth(mini_root / "nsynth", "valid", cache_dir=cache)
    lengths = notes.map(lambda b: {"samples": [len(a["array"]) for a in b["audio"]]}, batched=True,
                        remove_columns=["audio"])
    assert "audio" not in lengths.column_names and set(lengths["samples"]) == {64_000}
    high = notes.filter(lambda pitch: pitch >= 60, input_columns=["pitch"])
    assert 0 < len(high) < len(notes) and high[0]["audio"]["array"].shape == (64_000,)
    assert notes.select([1])[0]["note_str"] == notes[1]["note_str"]
    halves = notes.train_test_split(test_size=0.5, seed=0)
    assert halves["test"][0]["audio"]["array"].dtype == np.float32
    batch = next(notes.iter(batch_size=4))
    assert len(batch["audio"]) == 4 and batch["audio"][0]["sampling_rate"] == 16_000

    tensors = notes.with_format("torch")
    row = tensors[2]
    assert isinstance(row["audio"]["array"], torch.Tensor) and row["audio"]["array"].dtype == torch.float32
    assert torch.equal(row["audio"]["array"], torch.from_numpy(notes[2]["audio"]["array"]))
    assert int(row["pitch"]) == notes[2]["pitch"]
    assert notes.with_format("numpy")[0]["audio"]["array"].shape == (64_000,)

    streamed = list(notes.to_iterable_dataset())
    assert [r["note_str"] for r in streamed] == notes["note_str"]
    assert np.array_equal(streamed[5]["audio"]["array"], notes[5]["audio"]["array"])
    first = next(iter(notes.with_format("torch").to_iterable_dataset()))
    assert isinstance(first["audio"]["array"], torch.Tensor) and first["audio"]["array"].shape == (64_000,)


def test_a_saved_copy_holds_the_audio_itself(mini_root, cache, tmp_path):
    """`save_to_disk` embeds the files' bytes (as for datasets' own audio feature): the copy outlives them."""
    shutil.copytree(mini_root / "nsynth" / "nsynth-valid", tmp_path / "nsynth-valid")
    notes = load_nsynth(tmp_path / "nsynth-valid", "valid", cache_dir=cache).select(range(3))
    expected = notes[1]["audio"]["array"]
    notes.save_to_disk(str(tmp_path / "copy"))
    shutil.rmtree(tmp_path / "nsynth-valid")
    copy = load_from_disk(str(tmp_path / "copy"))
    assert np.array_equal(copy[1]["audio"]["array"], expected)

    undecoded = load_nsynth(mini_root / "nsynth", "valid", cache_dir=cache, decode=False)
    assert set(undecoded[0]["audio"]) == {"bytes", "path"} and undecoded[0]["audio"]["bytes"] is None


def test_a_cache_entry_another_run_published_meanwhile_is_kept_not_replaced(tmp_path):
    """Two runs sharing a cache build the same entry at once: the second must not pull it from under the first."""
    from datasets import Dataset, load_from_disk

    from hf_music_w2v.data.cache import publish_dataset

    target = tmp_path / "cache" / "nsynth" / "key"
    publish_dataset(Dataset.from_dict({"x": [1, 2, 3]}), target)
    reading = load_from_disk(str(target))  # the first run, reading its memory-mapped entry
    inode = target.stat().st_ino
    publish_dataset(Dataset.from_dict({"x": [1, 2, 3]}), target)  # the second run publishes the same entry
    assert target.stat().st_ino == inode
    assert list(reading["x"]) == [1, 2, 3] and list(load_from_disk(str(target))["x"]) == [1, 2, 3]
    assert [path.name for path in target.parent.iterdir()] == ["key"]  # no staging folder left behind
