"""Named wav2vec2 architectures (`preset:wav2vec2-base`, `preset:wav2vec2-small`) and where else a config can come from.

`preset:wav2vec2-base` is facebook/wav2vec2-base's architecture (built offline); `preset:wav2vec2-small` is the
demo's narrow model, stored once as the overrides in the packaged `recipes/wav2vec2-small.json`.
"""

import json
from importlib import resources

from transformers import Wav2Vec2Config

from .configuration_music_wav2vec2 import wav2vec2_base_config

PRESET_PREFIX = "preset:"
PRESETS = ("wav2vec2-base", "wav2vec2-small")


def preset_overrides(name: str) -> dict:
    """The fields a preset changes from wav2vec2-base."""
    if name == "wav2vec2-base":
        return {}
    if name not in PRESETS:
        raise ValueError(f"unknown preset {PRESET_PREFIX}{name}; there are {', '.join(PRESET_PREFIX + p for p in PRESETS)}")
    values = json.loads((resources.files(__package__) / "recipes" / f"{name}.json").read_text())
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if not k.startswith("_")}


def preset_config(name: str, **overrides) -> Wav2Vec2Config:
    """The preset's `Wav2Vec2Config` (pretraining masking), with `overrides` on top."""
    return wav2vec2_base_config(**{**preset_overrides(name), **overrides})


def is_preset(name_or_path: str) -> bool:
    return str(name_or_path).startswith(PRESET_PREFIX)


def load_wav2vec2_config(name_or_path: str) -> Wav2Vec2Config:
    """A preset, or a wav2vec2 config from a folder, a config.json or a Hub id.

    transformers gives a default config for a folder without config.json; that is an `OSError` here, so an
    empty folder never stands for wav2vec2-base."""
    from .hub import model_location_problem

    if is_preset(name_or_path):
        return preset_config(name_or_path[len(PRESET_PREFIX):])
    if not str(name_or_path).endswith(".json"):
        problem = model_location_problem(str(name_or_path))
        if problem:
            raise OSError(problem)
    return Wav2Vec2Config.from_pretrained(name_or_path)


__all__ = ["PRESETS", "PRESET_PREFIX", "is_preset", "load_wav2vec2_config", "preset_config", "preset_overrides"]
