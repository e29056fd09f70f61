"""Mini-speech (eSpeak NG in LibriSpeech's layout) and `load_audio_folder`, the speech arm's pretraining data."""

import json

import numpy as np
import pytest
import soundfile as sf

from hf_music_w2v.audio import window_starts
from hf_music_w2v.data import DataError, load_audio_folder
from hf_music_w2v.data.mini_speech import MINI_SPEAKERS, make_mini_speech

from .conftest import PRETRAIN_BASE_ARGS, run_program


def test_mini_speech_is_librispeech_shaped_16khz_speech(mini_speech):
    chapters = sorted(mini_speech.glob("*/*"))
    assert len(chapters) == len(MINI_SPEAKERS)
    for chapter in chapters:
        speaker, number = chapter.parent.name, chapter.name
        lines = (chapter / f"{speaker}-{number}.trans.txt").read_text().splitlines()
        flacs = sorted(chapter.glob("*.flac"))
        assert [line.split(" ", 1)[0] for line in lines] == [f.stem for f in flacs]
        assert all(line.split(" ", 1)[1].isupper() for line in lines)
        seconds = 0.0
        for flac in flacs:
            audio, rate = sf.read(flac, dtype="float32")
            assert rate == 16_000 and audio.ndim == 1
            assert 20 * np.log10(np.sqrt(np.mean(audio**2))) > -35  # speech, not silence
            seconds += len(audio) / rate
        assert seconds >= 6.0


def test_mini_speech_renders_bit_identically_for_a_seed_and_differs_across_seeds(mini_speech, tmp_path):
    """eSpeak NG seeds its noise from the clock and carries state between utterances; neither may leak in."""
    from hf_music_w2v.data.mini_speech import SpeechSynthesizer

    def files(folder):
        return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*.*"))}

    # This process speaking first must not change what the rendering says.
    synthesizer = SpeechSynthesizer.shared()
    synthesizer.speak("Something else first.", MINI_SPEAKERS[1], 150, 50)
    again = make_mini_speech(tmp_path / "again", seed=0, seconds_per_speaker=6.0)
    other = make_mini_speech(tmp_path / "other", seed=1, seconds_per_speaker=6.0)
    assert files(again) == files(mini_speech)
    assert files(other) != files(mini_speech)


def test_every_audio_file_of_a_folder_is_cut_into_windows(mini_speech, tmp_path):
    windows = load_audio_folder(mini_speech, segment_seconds=2, hop_seconds=1, cache_dir=tmp_path)
    expected = sum(len(window_starts(sf.info(f).frames, 32_000, 16_000)) for f in mini_speech.rglob("*.flac"))
    assert len(windows) == expected
    row = windows[3]
    assert row["audio"]["array"].shape == (32_000,) and row["audio"]["sampling_rate"] == 16_000
    first = sorted(mini_speech.rglob("*.flac"))[0]
    audio, _ = sf.read(first, dtype="float32")
    assert windows[0]["file"] == first.relative_to(mini_speech).as_posix()
    assert np.allclose(windows[0]["audio"]["array"], audio[:32_000], atol=1e-6)
    streamed = list(load_audio_folder(mini_speech, segment_seconds=2, hop_seconds=1, streaming=True))
    assert len(streamed) == expected
    assert np.allclose(streamed[3]["audio"]["array"], row["audio"]["array"], atol=1e-6)


def test_any_rate_and_channel_count_is_resampled_and_bad_files_are_named(tmp_path):
    folder = tmp_path / "recordings"
    (folder / "nested").mkdir(parents=True)
    t = np.arange(44_100 * 3) / 44_100
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    sf.write(folder / "nested" / "stereo.wav", np.stack([tone, tone], axis=1), 44_100)
    (folder / ".hidden.wav").write_bytes(b"not audio")  # hidden: ignored
    (folder / "broken.flac").write_bytes(b"not audio at all")
    with pytest.raises(DataError, match="broken.flac"):
        load_audio_folder(folder, segment_seconds=1, hop_seconds=1, cache_dir=tmp_path / "cache")
    windows = load_audio_folder(folder, segment_seconds=1, hop_seconds=1, on_error="skip", cache_dir=tmp_path / "cache")
    assert len(windows) == 3 and set(windows["file"]) == {"nested/stereo.wav"}
    window = windows[1]["audio"]["array"]
    spectrum = np.abs(np.fft.rfft(window))
    assert abs(np.argmax(spectrum) * 16_000 / len(window) - 440) <= 1  # resampled, not sped up
    with pytest.raises(DataError, match="contains no audio files"):
        load_audio_folder(tmp_path / "cache" / "audio_folder" / "resampled", cache_dir=tmp_path / "cache2")


def test_pretraining_reads_a_speech_folder_with_the_same_options(tmp_path, mini_speech, tiny_config_file):
    out = tmp_path / "speech-run"
    result = run_program("pretrain", ["--audio_dir", str(mini_speech), "--config_name", str(tiny_config_file),
                                      *PRETRAIN_BASE_ARGS, "--max_train_steps", "3", "--report_to", "none",
                                      "--output_dir", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "all_results.json").read_text())["steps"] == 3
    card = (out / "README.md").read_text()
    assert "pretrained on the audio under speech/" in card and "MusicNet training recordings" not in card
    both = run_program("pretrain", ["--audio_dir", str(mini_speech), "--musicnet_dir", str(mini_speech),
                                    "--output_dir", str(tmp_path / "both")])
    assert both.returncode != 0 and "--musicnet_dir or --audio_dir (exactly one)" in both.stderr
