"""Dataset loaders in the official layouts (MusicNet, NSynth), any folder of audio, and the miniature renderers."""

from .audio_column import SoundfileAudio
from .audio_folder import load_audio_folder
from .musicnet import load_musicnet, read_labels, read_metadata, window_starts
from .nsynth import NSYNTH_QUALITIES, NSYNTH_SOURCES, collate_notes, load_nsynth
from .validation import DataError

__all__ = [
    "DataError",
    "NSYNTH_QUALITIES",
    "NSYNTH_SOURCES",
    "SoundfileAudio",
    "collate_notes",
    "load_audio_folder",
    "load_musicnet",
    "load_nsynth",
    "read_labels",
    "read_metadata",
    "window_starts",
]
