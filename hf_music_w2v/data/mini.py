"""Miniature NSynth and MusicNet copies, in the official layouts, rendered from a General MIDI SoundFont.

Recorded instrument samples come from the TimGM6mb SoundFont shipped in pretty_midi's wheel (or any .sf2
given), played by tinysoundfont; MusicNet's scores come from music21's corpus of real classical works.

    hf-music-w2v make-mini-datasets OUT_DIR [--seed 0] [--notes_per_instrument 8] [--musicnet_seconds 30]
"""

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from ..atomic import write_text_atomic
from ..audio import NOTE_SAMPLES, SAMPLING_RATE
from ..configuration_music_wav2vec2 import NSYNTH_INSTRUMENT_FAMILIES
from .musicnet import LABEL_COLUMNS, METADATA_COLUMNS, MUSICNET_SAMPLING_RATE
from .nsynth import NSYNTH_QUALITIES, NSYNTH_SOURCES

NSYNTH_VELOCITIES = (25, 50, 75, 100, 127)
NOTE_ON_SECONDS = 3.0

# (family, source, GM program 0-based, lowest, highest MIDI pitch). Five instruments per family: the first two
# go to train, the third to valid, the fourth and fifth to test, so the splits share no instrument, as in NSynth,
# and the test split has two unseen instruments per family (the fifth ones come last, so adding them left the
# other instruments' notes as they were).
MINI_NSYNTH_INSTRUMENTS = (
    ("bass", "acoustic", 32, 28, 55), ("bass", "electronic", 33, 28, 55),
    ("bass", "electronic", 34, 28, 55), ("bass", "synthetic", 38, 28, 55),
    ("brass", "acoustic", 56, 55, 82), ("brass", "acoustic", 57, 40, 70),
    ("brass", "acoustic", 60, 41, 72), ("brass", "synthetic", 62, 40, 80),
    ("flute", "acoustic", 73, 60, 96), ("flute", "acoustic", 72, 74, 103),
    ("flute", "acoustic", 74, 60, 91), ("flute", "acoustic", 75, 60, 91),
    ("guitar", "acoustic", 24, 40, 84), ("guitar", "acoustic", 25, 40, 84),
    ("guitar", "electronic", 26, 40, 84), ("guitar", "electronic", 27, 40, 84),
    ("keyboard", "acoustic", 0, 21, 108), ("keyboard", "electronic", 4, 28, 103),
    ("keyboard", "acoustic", 6, 29, 89), ("keyboard", "electronic", 7, 36, 96),
    ("mallet", "acoustic", 12, 45, 96), ("mallet", "acoustic", 11, 53, 89),
    ("mallet", "acoustic", 13, 65, 108), ("mallet", "acoustic", 9, 79, 108),
    ("organ", "electronic", 16, 36, 96), ("organ", "acoustic", 19, 24, 96),
    ("organ", "electronic", 17, 36, 96), ("organ", "acoustic", 20, 36, 96),
    ("reed", "acoustic", 65, 49, 81), ("reed", "acoustic", 68, 58, 91),
    ("reed", "acoustic", 71, 50, 91), ("reed", "acoustic", 70, 34, 75),
    ("string", "acoustic", 40, 55, 100), ("string", "acoustic", 41, 48, 88),
    ("string", "acoustic", 42, 36, 76), ("string", "synthetic", 50, 36, 96),
    ("synth_lead", "synthetic", 80, 36, 96), ("synth_lead", "synthetic", 81, 36, 96),
    ("synth_lead", "synthetic", 82, 48, 96), ("synth_lead", "synthetic", 84, 36, 96),
    ("vocal", "acoustic", 52, 48, 79), ("vocal", "acoustic", 53, 48, 79),
    ("vocal", "synthetic", 54, 48, 79), ("vocal", "synthetic", 85, 48, 79),
    ("bass", "electronic", 35, 28, 67), ("brass", "acoustic", 61, 36, 84), ("flute", "acoustic", 77, 55, 84),
    ("guitar", "electronic", 29, 40, 84), ("keyboard", "acoustic", 1, 21, 108), ("mallet", "acoustic", 8, 60, 108),
    ("organ", "electronic", 18, 36, 96), ("reed", "acoustic", 67, 36, 69), ("string", "acoustic", 48, 36, 96),
    ("synth_lead", "synthetic", 83, 36, 96), ("vocal", "synthetic", 91, 48, 84),
)
_SPLIT_OF_RANK = ("train", "train", "valid", "test", "test")


@dataclass(frozen=True)
class Piece:
    id: int
    split: str
    corpus_name: str
    movement: int | None
    composer: str
    composition: str
    movement_name: str
    ensemble: str
    catalog_name: str
    programs: tuple[int, ...]  # MusicNet's 1-based GM programs, one per score part (the last one repeats)


STRING_QUARTET = (41, 41, 42, 43)
# Real works from music21's corpus; ids 1759 and 1819 are among MusicNet's own test ids.
MINI_MUSICNET_PIECES = (
    Piece(1727, "train", "beethoven/opus18no1", 1, "Beethoven", "String Quartet No 1 in F major",
          "1. Allegro con brio", "String Quartet", "OP18NO1", STRING_QUARTET),
    Piece(1728, "train", "bach/bwv66.6", None, "Bach", "Chorale Christ unser Herr zum Jordan kam",
          "Chorale", "Wind Quartet", "BWV66.6", (74, 69, 72, 71)),
    Piece(1729, "train", "haydn/opus74no1", 1, "Haydn", "String Quartet in C major",
          "1. Allegro moderato", "String Quartet", "OP74NO1", STRING_QUARTET),
    Piece(1730, "train", "bach/bwv1.6", None, "Bach", "Chorale Wie schon leuchtet der Morgenstern",
          "Chorale", "Solo Piano", "BWV1.6", (1,)),
    Piece(1733, "train", "mozart/k155", 1, "Mozart", "String Quartet No 2 in D major",
          "1. Allegro", "String Quartet", "K155", STRING_QUARTET),
    Piece(1734, "train", "bach/bwv10.7", None, "Bach", "Chorale Meine Seel erhebt den Herren",
          "Chorale", "Horn Trio with Contrabass", "BWV10.7", (72, 61, 71, 44)),
    Piece(1759, "test", "beethoven/opus18no1", 2, "Beethoven", "String Quartet No 1 in F major",
          "2. Adagio affettuoso ed appassionato", "String Quartet", "OP18NO1", STRING_QUARTET),
    Piece(1819, "test", "bach/bwv101.7", None, "Bach", "Chorale Nimm von uns, Herr, du treuer Gott",
          "Chorale", "Solo Harpsichord", "BWV101.7", (7,)),
)


def default_soundfont() -> Path:
    try:
        import pretty_midi
    except ImportError as error:
        raise ImportError("rendering needs a SoundFont: `pip install pretty_midi` (ships TimGM6mb.sf2) "
                          "or pass soundfont=PATH") from error
    return Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"


class Renderer:
    """A tinysoundfont synth on one SoundFont, rendering mono float32 at `sampling_rate`."""

    def __init__(self, soundfont: str | os.PathLike | None, sampling_rate: int):
        try:
            import tinysoundfont
        except ImportError as error:
            raise ImportError("rendering needs tinysoundfont: `pip install --no-deps tinysoundfont` "
                              "(its pyaudio dependency is only for live playback)") from error
        self.sampling_rate = sampling_rate
        self.synth = tinysoundfont.Synth(samplerate=sampling_rate)
        self.soundfont = self.synth.sfload(str(soundfont or default_soundfont()))

    def set_program(self, channel: int, program: int) -> None:
        """`program` is 0-based, as in the SoundFont."""
        self.synth.program_select(channel, self.soundfont, 0, program)

    def generate(self, samples: int) -> np.ndarray:
        if samples <= 0:
            return np.zeros(0, dtype=np.float32)
        stereo = np.frombuffer(self.synth.generate(samples), dtype=np.float32)
        return stereo.reshape(-1, 2).mean(axis=1)

    def render_events(self, events: list[tuple[int, int, int, int, int]], total: int) -> np.ndarray:
        """Play (sample, on=1/off=0, channel, key, velocity) events and return `total` samples."""
        self.synth.sounds_off()
        self.generate(self.sampling_rate // 10)  # let any previous voice die out
        chunks, now = [], 0
        for sample, on, channel, key, velocity in sorted(events):
            chunks.append(self.generate(min(sample, total) - now))
            now = max(now, min(sample, total))
            if on:
                self.synth.noteon(channel, key, velocity)
            else:
                self.synth.noteoff(channel, key)
        chunks.append(self.generate(total - now))
        return np.concatenate(chunks).astype(np.float32)


def note_qualities(audio: np.ndarray, sampling_rate: int, family: str) -> list[int]:
    """NSynth's 10 quality flags, estimated from the signal (the real ones were annotated by listeners)."""
    def rms(start: float, end: float) -> float:
        segment = audio[int(start * sampling_rate) : int(end * sampling_rate)]
        return float(np.sqrt(np.mean(segment**2))) if segment.size else 0.0

    spectrum = np.abs(np.fft.rfft(audio[: sampling_rate]))
    frequencies = np.fft.rfftfreq(min(audio.size, sampling_rate), 1 / sampling_rate)
    centroid = float((spectrum * frequencies).sum() / max(spectrum.sum(), 1e-12))
    attack = rms(0, 0.5)
    flags = {
        "bright": centroid > 2000,
        "dark": centroid < 500,
        "fast_decay": rms(1.5, NOTE_ON_SECONDS) < 0.1 * attack,
        "long_release": rms(NOTE_ON_SECONDS + 0.25, 4.0) > 0.1 * attack,
        "percussive": family in ("mallet", "guitar", "keyboard") and rms(0.5, 1.0) < 0.5 * attack,
    }
    return [int(flags.get(name, False)) for name in NSYNTH_QUALITIES]


def make_mini_nsynth(out_dir: str | os.PathLike, seed: int = 0, notes_per_instrument: int = 8,
                     soundfont: str | os.PathLike | None = None, pitches: Sequence[int] | None = None,
                     test_notes_per_instrument: int | None = None) -> dict[str, int]:
    """Render nsynth-{train,valid,test}/ (examples.json + audio/*.wav). Returns the note count per split.

    Each instrument plays `notes_per_instrument` notes (`test_notes_per_instrument` for the test split's
    instruments, default the same): distinct (pitch, velocity) pairs, as NSynth's instruments play every pitch
    at five velocities, with pitches drawn from its range, or from `pitches` within its range when given. A
    short list shared by all instruments makes every split cover the same pitches, as the full NSynth does (each
    of its instruments plays its whole range), so pitch is learnable from a few notes. Each instrument draws
    from its own generator (seeded by `seed` and its number), so one split's size leaves the others' notes be.
    """
    out_dir = Path(out_dir)
    renderer = Renderer(soundfont, SAMPLING_RATE)
    examples = {split: {} for split in ("train", "valid", "test")}
    family_rank: dict[str, int] = {}
    source_counter: dict[tuple[str, str], int] = {}
    note_id = 0
    for instrument_id, (family, source, program, low, high) in enumerate(tqdm(MINI_NSYNTH_INSTRUMENTS,
                                                                               desc="mini-NSynth", unit="instrument")):
        split = _SPLIT_OF_RANK[family_rank.get(family, 0)]
        family_rank[family] = family_rank.get(family, 0) + 1
        number = source_counter.get((family, source), 0)
        source_counter[(family, source)] = number + 1
        instrument_str = f"{family}_{source}_{number:03d}"
        renderer.set_program(0, program)
        split_dir = out_dir / f"nsynth-{split}"
        (split_dir / "audio").mkdir(parents=True, exist_ok=True)
        rendered = {}
        rng = np.random.default_rng([seed, instrument_id])
        count = test_notes_per_instrument if split == "test" and test_notes_per_instrument else notes_per_instrument
        # Random (pitch, velocity) pairs across the range; a SoundFont may have gaps in an instrument's keys
        # (TimGM6mb's alto sax is silent at E4), so silent notes are passed over for the next candidate.
        candidates = [p for p in pitches if low <= p <= high] if pitches is not None else range(low, high + 1)
        if not candidates:
            raise ValueError(f"none of pitches {list(pitches)} is in the range {low}-{high} of GM program {program}")
        pairs = [(pitch, velocity) for pitch in candidates for velocity in NSYNTH_VELOCITIES]
        for index in rng.permutation(len(pairs)).tolist():
            if len(rendered) == count:
                break
            pitch, velocity = pairs[index]
            note_on = int(NOTE_ON_SECONDS * SAMPLING_RATE)
            audio = renderer.render_events([(0, 1, 0, pitch, velocity), (note_on, 0, 0, pitch, 0)], NOTE_SAMPLES)
            if np.abs(audio).max() >= 1e-4:
                rendered[pitch, velocity] = np.clip(audio, -1.0, 1.0)
        if not rendered:
            raise RuntimeError(f"the SoundFont rendered only silence for GM program {program}")
        for (pitch, velocity), audio in sorted(rendered.items()):
            note_str = f"{instrument_str}-{pitch:03d}-{velocity:03d}"
            sf.write(split_dir / "audio" / f"{note_str}.wav", audio, SAMPLING_RATE, subtype="PCM_16")
            qualities = note_qualities(audio, SAMPLING_RATE, family)
            examples[split][note_str] = {
                "note": note_id,
                "note_str": note_str,
                "instrument": instrument_id,
                "instrument_str": instrument_str,
                "pitch": pitch,
                "velocity": velocity,
                "sample_rate": SAMPLING_RATE,
                "qualities": qualities,
                "qualities_str": [name for name, flag in zip(NSYNTH_QUALITIES, qualities) if flag],
                "instrument_family": NSYNTH_INSTRUMENT_FAMILIES.index(family),
                "instrument_family_str": family,
                "instrument_source": NSYNTH_SOURCES.index(source),
                "instrument_source_str": source,
            }
            note_id += 1
    for split, split_examples in examples.items():
        write_text_atomic(out_dir / f"nsynth-{split}" / "examples.json", json.dumps(split_examples, indent=2))
    return {split: len(split_examples) for split, split_examples in examples.items()}


def score_notes(piece: Piece, max_seconds: float) -> list[dict]:
    """Notes of `piece`'s score (ties merged) with times in seconds at its first tempo, cut at `max_seconds`."""
    try:
        from music21 import corpus, tempo
    except ImportError as error:
        raise ImportError("mini-MusicNet renders scores from music21's corpus: `pip install music21`") from error
    score = corpus.parse(piece.corpus_name, piece.movement) if piece.movement else corpus.parse(piece.corpus_name)
    marks = list(score.flatten().getElementsByClass(tempo.MetronomeMark))
    bpm = float(marks[0].getQuarterBPM()) if marks and marks[0].getQuarterBPM() else 100.0
    seconds_per_beat = 60.0 / bpm
    notes = []
    for part_index, part in enumerate(score.parts):
        program = piece.programs[min(part_index, len(piece.programs) - 1)]
        for element in part.stripTies().flatten().notes:
            if element.quarterLength <= 0:
                continue  # grace notes have no duration of their own
            onset = float(element.offset) * seconds_per_beat
            if onset >= max_seconds:
                continue
            offset = min(onset + float(element.quarterLength) * seconds_per_beat, max_seconds)
            for pitch in element.pitches:
                notes.append({
                    "part": part_index, "program": program, "note": int(pitch.midi),
                    "onset": onset, "offset": offset, "start_beat": float(element.offset),
                    "end_beat": float(element.quarterLength), "note_value": element.duration.fullName,
                })
    return sorted(notes, key=lambda n: (n["onset"], n["part"], n["note"]))


def make_mini_musicnet(out_dir: str | os.PathLike, seed: int = 0, seconds: float = 30.0,
                       pieces: tuple[Piece, ...] = MINI_MUSICNET_PIECES,
                       soundfont: str | os.PathLike | None = None) -> dict[str, int]:
    """Render train_data/, train_labels/, test_data/, test_labels/ and musicnet_metadata.csv.

    Each recording is the first `seconds` of a real score, 44.1 kHz float32 mono; the label CSVs list exactly
    the notes that were played. `seed` varies the velocities. Returns the recording count per split.
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    renderer = Renderer(soundfont, MUSICNET_SAMPLING_RATE)
    metadata_rows, counts = [], {"train": 0, "test": 0}
    for piece in tqdm(pieces, desc="mini-MusicNet", unit="recording"):
        notes = score_notes(piece, seconds)
        if not notes:
            raise RuntimeError(f"{piece.corpus_name} has no notes in its first {seconds} s")
        events = []
        for part in sorted({n["part"] for n in notes}):
            program = next(n["program"] for n in notes if n["part"] == part)
            renderer.set_program(part, program - 1)
        for note in notes:
            note["start_time"] = int(round(note["onset"] * MUSICNET_SAMPLING_RATE))
            note["end_time"] = max(int(round(note["offset"] * MUSICNET_SAMPLING_RATE)), note["start_time"] + 1)
            velocity = int(rng.integers(60, 110))
            events.append((note["start_time"], 1, note["part"], note["note"], velocity))
            events.append((note["end_time"], 0, note["part"], note["note"], 0))
        total = max(n["end_time"] for n in notes) + MUSICNET_SAMPLING_RATE // 2  # let the last notes ring
        audio = np.clip(renderer.render_events(events, total), -1.0, 1.0)
        for kind in ("data", "labels"):
            (out_dir / f"{piece.split}_{kind}").mkdir(parents=True, exist_ok=True)
        sf.write(out_dir / f"{piece.split}_data" / f"{piece.id}.wav", audio, MUSICNET_SAMPLING_RATE, subtype="FLOAT")
        with open(out_dir / f"{piece.split}_labels" / f"{piece.id}.csv", "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(LABEL_COLUMNS)
            for n in notes:
                writer.writerow([n["start_time"], n["end_time"], n["program"], n["note"], n["start_beat"],
                                 n["end_beat"], n["note_value"]])
        metadata_rows.append([piece.id, piece.composer, piece.composition, piece.movement_name, piece.ensemble,
                              "music21 corpus, rendered with a GM SoundFont", "hf_music_w2v mini renderer",
                              piece.catalog_name, round(audio.size / MUSICNET_SAMPLING_RATE)])
        counts[piece.split] += 1
    with open(out_dir / "musicnet_metadata.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(METADATA_COLUMNS)
        writer.writerows(metadata_rows)
    return counts
