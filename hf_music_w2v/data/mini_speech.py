"""Mini-speech: spoken English rendered offline with eSpeak NG, the speech counterpart of mini-MusicNet.

    from hf_music_w2v.data.mini_speech import make_mini_speech
    make_mini_speech("data/mini/speech", seed=0, seconds_per_speaker=30)

Eight "speakers" (eSpeak NG voices: accents, male and female variants, their own speaking rate and pitch)
read sentences taken from the Python documentation that ships with every CPython (`pydoc_data.topics`).
The folder follows LibriSpeech's layout: `<speaker>/<chapter>/<speaker>-<chapter>-<utterance>.flac` (16 kHz
mono) with a `<speaker>-<chapter>.trans.txt` transcript per chapter. The synthesizer is libespeak-ng with
its voice data from the `espeakng-loader` wheel (the `mini` extra), driven through ctypes; nothing is
downloaded at run time. The same seed gives the same corpus bit for bit. eSpeak NG varies its output in two
ways, both handled here: it seeds its noise from the clock unless `espeak_ng_SetRandSeed` is called (done
before every utterance), and an utterance depends on what the library spoke before it in the same process
(`espeak_Terminate` does not reset that), so every rendering runs in a fresh process of its own.
"""

import concurrent.futures
import ctypes
import multiprocessing
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from ..atomic import staged_directory
from ..audio import SAMPLING_RATE, resample


@dataclass(frozen=True)
class Speaker:
    voice: str  # eSpeak NG language + variant
    words_per_minute: int
    pitch: int  # eSpeak's 0-100 scale


MINI_SPEAKERS = (
    Speaker("en-us+m1", 160, 45),
    Speaker("en-us+f2", 175, 65),
    Speaker("en+m3", 150, 40),
    Speaker("en+f4", 165, 70),
    Speaker("en-gb-scotland+m2", 155, 50),
    Speaker("en-029+f1", 170, 60),
    Speaker("en-us-nyc+m4", 145, 35),
    Speaker("en-gb-x-rp+f5", 160, 75),
)
SENTENCES_PER_UTTERANCE = 2
PAUSE_SECONDS = 0.3

# eSpeak NG's C API (speak_lib.h): synchronous synthesis into a callback, rate and pitch parameters.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_RATE, _ESPEAK_PITCH = 1, 3
_POS_CHARACTER = 1
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class SpeechSynthesizer:
    """libespeak-ng through ctypes; one per process (the library keeps global state)."""

    _instance = None

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError as error:
            raise ImportError("rendering mini-speech needs eSpeak NG: pip install 'hf_music_w2v[mini]' "
                              "(the espeakng-loader wheel bundles libespeak-ng and its voices)") from error
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.sampling_rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                                        espeakng_loader.get_data_path().encode(), 0)
        if self.sampling_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({self.sampling_rate})")
        self.chunks: list[np.ndarray] = []
        self.callback = _CALLBACK(self._collect)  # kept alive as long as the library may call it
        self.lib.espeak_SetSynthCallback(self.callback)

    @classmethod
    def shared(cls) -> "SpeechSynthesizer":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def _collect(self, samples, count, events) -> int:
        if count > 0:
            self.chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0

    def speak(self, text: str, speaker: Speaker, words_per_minute: int, pitch: int) -> np.ndarray:
        """`text` read by `speaker`, as float32 samples at `self.sampling_rate`."""
        if self.lib.espeak_SetVoiceByName(speaker.voice.encode()) != 0:
            raise ValueError(f"eSpeak NG has no voice {speaker.voice!r}")
        self.lib.espeak_SetParameter(_ESPEAK_RATE, words_per_minute, 0)
        self.lib.espeak_SetParameter(_ESPEAK_PITCH, pitch, 0)
        self.chunks = []
        encoded = text.encode()
        status = self.lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, 0, None, None)
        self.lib.espeak_Synchronize()
        if status != 0 or not self.chunks:
            raise RuntimeError(f"eSpeak NG could not read {text!r} (status {status})")
        return np.concatenate(self.chunks).astype(np.float32) / 32768


def documentation_sentences() -> list[str]:
    """Plain English sentences of 6-20 words from the Python documentation shipped with CPython, sorted."""
    from pydoc_data.topics import topics

    found = set()
    for text in topics.values():
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
            words = sentence.split()
            if 6 <= len(words) <= 20 and re.fullmatch(r"[A-Z][A-Za-z ,;'-]*[a-z]\.", sentence):
                found.add(sentence)
    return sorted(found)


def render_utterances(seed: int, seconds_per_speaker: float, speakers: tuple[Speaker, ...]
                      ) -> list[list[tuple[str, np.ndarray]]]:
    """Per speaker, (text, 16 kHz float32 audio with its pause) of each utterance, until `seconds_per_speaker`.

    Run it in a fresh process (`make_mini_speech` does): eSpeak NG's output depends on what it spoke before."""
    rng = np.random.default_rng(seed)
    sentences = documentation_sentences()
    synthesizer = SpeechSynthesizer.shared()
    corpus = []
    for speaker in tqdm(speakers, desc="mini-speech", unit="speaker"):
        utterances, spoken = [], 0.0
        while spoken < seconds_per_speaker:
            text = " ".join(sentences[i] for i in rng.choice(len(sentences), SENTENCES_PER_UTTERANCE, replace=False))
            rate = int(speaker.words_per_minute * rng.uniform(0.9, 1.1))
            pitch = int(np.clip(speaker.pitch * rng.uniform(0.9, 1.1), 0, 100))
            synthesizer.lib.espeak_ng_SetRandSeed(ctypes.c_long(int(rng.integers(2**31))))
            audio = resample(synthesizer.speak(text, speaker, rate, pitch), synthesizer.sampling_rate, SAMPLING_RATE)
            audio = np.concatenate([audio, np.zeros(round(PAUSE_SECONDS * SAMPLING_RATE), np.float32)])
            utterances.append((text, audio))
            spoken += len(audio) / SAMPLING_RATE
        corpus.append(utterances)
    return corpus


def make_mini_speech(out_dir: str | os.PathLike, seed: int = 0, seconds_per_speaker: float = 30.0,
                     speakers: tuple[Speaker, ...] = MINI_SPEAKERS) -> Path:
    """Render the corpus into `out_dir` (published whole, atomically); returns `out_dir`.

    Each speaker reads utterances of two sentences (speaking rate and pitch jittered by up to 10% per
    utterance) until they add up to `seconds_per_speaker`. The synthesis runs in a fresh process, so the
    corpus is the same bit for bit whatever this process spoke before.
    """
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        corpus = pool.submit(render_utterances, seed, seconds_per_speaker, speakers).result()
    with staged_directory(out_dir) as staging:
        for number, utterances in enumerate(corpus):
            speaker_id, chapter_id = str(100 + number), "1"
            chapter = staging / speaker_id / chapter_id
            chapter.mkdir(parents=True)
            transcript = []
            for utterance, (text, audio) in enumerate(utterances):
                name = f"{speaker_id}-{chapter_id}-{utterance:04d}"
                sf.write(chapter / f"{name}.flac", audio, SAMPLING_RATE, subtype="PCM_16")
                transcript.append(f"{name} {text.upper()}")
            (chapter / f"{speaker_id}-{chapter_id}.trans.txt").write_text("\n".join(transcript) + "\n")
    return Path(out_dir)


__all__ = ["MINI_SPEAKERS", "Speaker", "documentation_sentences", "make_mini_speech"]
