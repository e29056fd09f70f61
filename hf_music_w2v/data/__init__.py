"""Dataset loaders in the official layouts (MusicNet, NSynth) and the miniature-copy renderer."""

from .audio_column import SoundfileAudio
from .musicnet import load_musicnet, read_labels, read_metadata, window_starts
from .nsynth import NSYNTH_QUALITIES, NSYNTH_SOURCES, collate_notes, load_nsynth
from .validation import DataError

__all__ = [
    "DataError",
    "NSYNTH_QUALITIES",
    "NSYNTH_SOURCES",
    "SoundfileAudio",
    "collate_notes",
    "load_musicnet",
    "load_nsynth",
    "read_labels",
    "read_metadata",
    "window_starts",
]
