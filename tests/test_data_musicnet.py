import csv

import numpy as np
import pytest
import soundfile as sf

from hf_music_w2v.data import DataError, load_musicnet, read_labels, read_metadata, window_starts
from hf_music_w2v.data.musicnet import LABEL_COLUMNS, METADATA_COLUMNS

SEGMENT, HOP = 10.0, 5.0


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def test_window_starts_arithmetic():
    assert window_starts(100, 40, 20) == [0, 20, 40, 60]  # 60 + 40 == 100: nothing left over
    assert window_starts(110, 40, 20) == [0, 20, 40, 60, 70]  # end-aligned remainder window
    assert window_starts(110, 40, 20, "pad") == [0, 20, 40, 60, 80]
    assert window_starts(110, 40, 20, "drop") == [0, 20, 40, 60]
    assert window_starts(30, 40, 20) == [0] and window_starts(30, 40, 20, "drop") == []
    with pytest.raises(ValueError, match="remainder must be one of"):
        window_starts(100, 40, 20, "wrap")


def test_windows_match_the_arithmetic_and_the_written_labels(mini_root, cache):
    root = mini_root / "musicnet"
    dataset = load_musicnet(root, "train", segment_seconds=SEGMENT, hop_seconds=HOP, cache_dir=cache)
    metadata = read_metadata(root / "musicnet_metadata.csv")
    by_recording = {}
    for row in dataset:
        by_recording.setdefault(row["id"], []).append(row)
    assert sorted(by_recording) == sorted(int(p.stem) for p in (root / "train_data").glob("*.wav"))
    for recording, rows in by_recording.items():
        samples_44k = sf.info(root / "train_data" / f"{recording}.wav").frames
        samples_16k = int(np.ceil(samples_44k * 16000 / 44100))
        starts = window_starts(samples_16k, int(SEGMENT * 16000), int(HOP * 16000))
        assert [row["start_seconds"] for row in rows] == [s / 16000 for s in starts]
        labels = read_labels(root / "train_labels" / f"{recording}.csv")
        for row in rows:
            assert row["audio"]["array"].shape == (160000,) and row["audio"]["sampling_rate"] == 16000
            assert (row["composer"], row["ensemble"]) == (metadata[recording]["composer"], metadata[recording]["ensemble"])
            start, end = row["start_seconds"], row["start_seconds"] + SEGMENT
            sounding = (labels["start"] / 44100 < end) & (labels["end"] / 44100 > start)
            assert row["notes"]["note"] == labels["note"][sounding].tolist()
            assert row["notes"]["instrument"] == labels["instrument"][sounding].tolist()
            assert all(0 <= on < off <= SEGMENT for on, off in zip(row["notes"]["onset"], row["notes"]["offset"]))


def test_label_csv_holds_the_rendered_notes(mini_root):
    root = mini_root / "musicnet"
    labels = read_labels(root / "test_labels" / "1759.csv")
    assert set(labels["instrument"].tolist()) == {41, 42, 43}  # violin, viola, cello
    assert labels["end"].max() <= sf.info(root / "test_data" / "1759.wav").frames
    info = sf.info(root / "test_data" / "1759.wav")
    assert (info.samplerate, info.channels, info.subtype) == (44100, 1, "FLOAT")


def test_streaming_gives_the_same_windows(mini_root, cache):
    kwargs = dict(segment_seconds=SEGMENT, hop_seconds=HOP, cache_dir=cache)
    cached = load_musicnet(mini_root / "musicnet", "test", **kwargs)
    streamed = list(load_musicnet(mini_root / "musicnet", "test", streaming=True, **kwargs))
    assert len(streamed) == len(cached)
    for a, b in zip(cached, streamed):
        assert (a["id"], a["start_seconds"], a["notes"]) == (b["id"], b["start_seconds"], b["notes"])
        np.testing.assert_array_equal(a["audio"]["array"], np.asarray(b["audio"]["array"], dtype=np.float32))


def test_second_call_reuses_the_cache(mini_root, cache):
    load_musicnet(mini_root / "musicnet", "test", cache_dir=cache)
    resampled = sorted((cache / "musicnet" / "resampled").iterdir())
    load_musicnet(mini_root / "musicnet", "test", cache_dir=cache)
    assert sorted((cache / "musicnet" / "resampled").iterdir()) == resampled
    assert len(list((cache / "musicnet").glob("index-*"))) == 1


def write_recording(root, recording=1, audio=None, rate=44100, labels=None, seconds=None, subtype="FLOAT"):
    """A one-recording MusicNet folder written by hand."""
    for folder in ("train_data", "train_labels"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    if audio is None:
        audio = 0.1 * np.sin(2 * np.pi * 440 * np.arange(3 * rate) / rate).astype(np.float32)
    sf.write(root / "train_data" / f"{recording}.wav", audio, rate, subtype=subtype)
    with open(root / "train_labels" / f"{recording}.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(LABEL_COLUMNS)
        writer.writerows(labels or [[0, 44100, 41, 69, 0.0, 1.0, "Quarter"]])
    duration = seconds if seconds is not None else len(audio) / rate
    with open(root / "musicnet_metadata.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(METADATA_COLUMNS)
        writer.writerow([recording, "Test", "Tone", "1", "Solo Violin", "test", "test", "T1", duration])


def test_resampling_keeps_a_tones_frequency(tmp_path, cache):
    write_recording(tmp_path / "mn")
    row = load_musicnet(tmp_path / "mn", "train", segment_seconds=2.0, hop_seconds=1.0, cache_dir=cache)[0]
    audio = row["audio"]["array"]
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    peak_hz = np.fft.rfftfreq(audio.size, 1 / 16000)[spectrum.argmax()]
    assert abs(peak_hz - 440) <= 0.5


def test_nested_mirror_layout_is_found(tmp_path, cache):
    write_recording(tmp_path / "download" / "musicnet" / "musicnet")
    assert len(load_musicnet(tmp_path / "download", "train", segment_seconds=2.0, hop_seconds=1.0, cache_dir=cache)) == 2


def test_not_a_musicnet_folder(tmp_path, cache):
    with pytest.raises(DataError, match="not a MusicNet folder"):
        load_musicnet(tmp_path, "train", cache_dir=cache)


TONE = 0.1 * np.sin(np.arange(3 * 44100) / 10).astype(np.float32)
BAD_RECORDINGS = {
    "stereo": (dict(audio=np.stack([TONE, TONE], axis=1)), "expected mono audio, found 2 channels"),
    "sample_rate": (dict(audio=TONE, rate=22050), "expected a sample rate of 44100 Hz, found 22050 Hz"),
    "nan": (dict(audio=np.where(np.arange(TONE.size) == 5, np.nan, TONE).astype(np.float32)), "NaN or infinite"),
    "truncated": (dict(audio=TONE, seconds=60), "lasts 3.0 s but the metadata says 60.0 s"),
    "label_row": (dict(labels=[[0, "later", 41, 69, 0.0, 1.0, "Quarter"]]), r"1\.csv:2: expected integer"),
    "label_order": (dict(labels=[[500, 100, 41, 69, 0.0, 1.0, "Quarter"]]), r"1\.csv:2: need 0 <= start < end"),
    "label_negative": (dict(labels=[[-5, 100, 41, 69, 0.0, 1.0, "Quarter"]]), r"1\.csv:2: need 0 <= start < end"),
    "label_beats": (dict(labels=[[0, 100, 41, 69, "nan", 1.0, "Quarter"]]), r"1\.csv:2: start_beat and end_beat"),
    "seconds_nan": (dict(seconds="nan"), "seconds must be a positive number, found nan"),
    "seconds_negative": (dict(seconds=-3), "seconds must be a positive number, found -3.0"),
}


@pytest.mark.parametrize("how", sorted(BAD_RECORDINGS))
def test_bad_recording_raises_naming_the_file_or_is_skipped(tmp_path, cache, how, caplog):
    root = tmp_path / "mn"
    write_recording(root, recording=2)  # a good one first, then the bad one
    good_metadata = (root / "musicnet_metadata.csv").read_text()
    kwargs, message = BAD_RECORDINGS[how]
    write_recording(root, recording=1, **kwargs)
    bad_row = (root / "musicnet_metadata.csv").read_text().splitlines()[1]
    (root / "musicnet_metadata.csv").write_text(good_metadata + bad_row + "\n")
    with pytest.raises(DataError, match=message):
        load_musicnet(root, "train", segment_seconds=2.0, hop_seconds=1.0, cache_dir=cache)
    dataset = load_musicnet(root, "train", segment_seconds=2.0, hop_seconds=1.0, cache_dir=cache, on_error="skip")
    assert set(dataset["id"]) == {2}
    assert "skipped 1 invalid MusicNet recordings" in caplog.text


def test_unparsable_metadata(tmp_path, cache):
    write_recording(tmp_path / "mn")
    (tmp_path / "mn" / "musicnet_metadata.csv").write_text("id,composer\n1,Bach\n")
    with pytest.raises(DataError, match="musicnet_metadata.csv: expected columns .* missing composition"):
        load_musicnet(tmp_path / "mn", "train", cache_dir=cache)



def two_recordings(root):
    write_recording(root, recording=2)
    good_metadata = (root / "musicnet_metadata.csv").read_text()
    write_recording(root, recording=1)
    bad_row = (root / "musicnet_metadata.csv").read_text().splitlines()[1]
    (root / "musicnet_metadata.csv").write_text(good_metadata + bad_row + "\n")


def raises_then_skips(root, cache, caplog, message, kept):
    with pytest.raises(DataError, match=message):
        load_musicnet(root, "train", segment_seconds=2.0, hop_seconds=1.0, cache_dir=cache)
    dataset = load_musicnet(root, "train", segment_seconds=2.0, hop_seconds=1.0, cache_dir=cache, on_error="skip")
    assert set(dataset["id"]) == kept
    assert "skipped 1 invalid MusicNet recordings" in caplog.text


def test_a_duplicate_metadata_id_is_an_error_for_that_recording(tmp_path, cache, caplog):
    root = tmp_path / "mn"
    two_recordings(root)
    metadata = root / "musicnet_metadata.csv"
    metadata.write_text(metadata.read_text() + metadata.read_text().splitlines()[2] + "\n")  # id 1 again
    raises_then_skips(root, cache, caplog, r"musicnet_metadata.csv:4: recording id 1 appears more than once", {2})


def test_a_recording_with_an_odd_file_name_is_an_error_for_that_file(tmp_path, cache, caplog):
    root = tmp_path / "mn"
    two_recordings(root)
    (root / "train_data" / "1.wav").rename(root / "train_data" / "1728².wav")
    raises_then_skips(root, cache, caplog, "1728².wav: expected a file named <recording id>.wav", {2})


def test_a_non_utf8_label_file_is_an_error_for_that_recording(tmp_path, cache, caplog):
    root = tmp_path / "mn"
    two_recordings(root)
    labels = root / "train_labels" / "1.csv"
    labels.write_bytes(labels.read_bytes() + "0,10,41,69,0.0,1.0,Viertelé\n".encode("latin-1"))
    raises_then_skips(root, cache, caplog, r"1\.csv: not UTF-8 text", {2})


def test_a_non_utf8_metadata_file_names_the_file(tmp_path, cache):
    root = tmp_path / "mn"
    write_recording(root)
    metadata = root / "musicnet_metadata.csv"
    metadata.write_bytes(metadata.read_text().replace("Test", "Dvořák").encode("cp1250"))
    with pytest.raises(DataError, match="musicnet_metadata.csv: not UTF-8 text"):
        load_musicnet(root, "train", cache_dir=cache)
