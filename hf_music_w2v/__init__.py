"""hf_music_w2v: music representations with wav2vec 2.0 on Hugging Face Transformers.

Importing the package registers `music_wav2vec2` with AutoConfig, AutoModel,
AutoModelForAudioClassification and AutoFeatureExtractor.
"""

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForAudioClassification,
    Wav2Vec2FeatureExtractor,
)

from .configuration_music_wav2vec2 import (
    NSYNTH_INSTRUMENT_FAMILIES,
    NUM_MIDI_PITCHES,
    MusicWav2Vec2Config,
    midi_pitch_name,
    wav2vec2_base_config,
)
from .hub import music_feature_extractor, save_pretrained_atomic
from .modeling_music_wav2vec2 import MusicClassifierOutput, Wav2Vec2ForMusicClassification

__version__ = "0.1.0"

AutoConfig.register(MusicWav2Vec2Config.model_type, MusicWav2Vec2Config, exist_ok=True)
AutoModel.register(MusicWav2Vec2Config, Wav2Vec2ForMusicClassification, exist_ok=True)
AutoModelForAudioClassification.register(MusicWav2Vec2Config, Wav2Vec2ForMusicClassification, exist_ok=True)
AutoFeatureExtractor.register(MusicWav2Vec2Config, Wav2Vec2FeatureExtractor, exist_ok=True)
# save_pretrained copies the configuration and modeling files only for classes registered this way.
MusicWav2Vec2Config.register_for_auto_class("AutoConfig")
Wav2Vec2ForMusicClassification.register_for_auto_class("AutoModel")

__all__ = [
    "MusicClassifierOutput",
    "MusicWav2Vec2Config",
    "NSYNTH_INSTRUMENT_FAMILIES",
    "NUM_MIDI_PITCHES",
    "Wav2Vec2ForMusicClassification",
    "midi_pitch_name",
    "music_feature_extractor",
    "save_pretrained_atomic",
    "wav2vec2_base_config",
]
