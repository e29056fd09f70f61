"""The HEAR 2021 API for this package's checkpoints and any wav2vec2-family folder or Hub id.

    import hf_music_w2v.hear as hear

    model = hear.load_model("demo_output/finetuned-music")         # or a pretraining output, facebook/wav2vec2-base
    scene = hear.get_scene_embeddings(audio, model)                  # [n_sounds, feature] float32
    frames, times = hear.get_timestamp_embeddings(audio, model)    # [n_sounds, frame, feature], [n_sounds, frame]

`audio` is a float tensor `[n_sounds, n_samples]` in [-1, 1] at `model.sample_rate` (the model's feature
extractor's rate, 16 kHz for wav2vec2). This is the interface that hear-eval-kit and hear-validator import as
a module: `hear-validator hf_music_w2v.hear -m MODEL`.

Embeddings are the hidden states of one layer: the last by default, another with `load_model(path, layer=N)`
or the environment variable `HF_MUSIC_W2V_HEAR_LAYER` (what HEAR's tools, which pass only the path, can set).
Each clip is normalised as the model's feature extractor does, then padded with half a receptive field of
zeros at each end, so frame i is centred on sample i * hop: timestamps are i * hop / sample_rate in
milliseconds (every 20 ms for wav2vec2's hop of 320 samples), from 0 to at most the clip's length. Scene
embeddings are the mean of a clip's frame embeddings.
"""

import math
import os

import torch

from .inference import receptive_field
from .probing import encoder_layer_count, load_encoder

#: Clips per forward pass; HEAR hands whole task splits to these functions.
CLIPS_PER_BATCH = 16


class HearModel(torch.nn.Module):
    """A frozen encoder with the attributes HEAR asks for: `sample_rate` and the two embedding sizes."""

    def __init__(self, encoder, extractor, layer: int):
        super().__init__()
        config = encoder.config
        if not hasattr(config, "conv_stride"):
            raise ValueError(f"{type(encoder).__name__} has no convolutional feature encoder (conv_stride), so its "
                             "frames' timestamps are unknown; expected a wav2vec2-family model")
        layers = encoder_layer_count(encoder)
        if not -layers <= layer < layers:
            raise ValueError(f"layer must be in [{-layers}, {layers - 1}] for this model, got {layer}")
        self.encoder = encoder.eval()
        self.layer = layer
        self.sample_rate = int(extractor.sampling_rate)
        self.normalize = bool(getattr(extractor, "do_normalize", True))
        self.hop = math.prod(config.conv_stride)
        self.receptive_field = receptive_field(config)
        self.scene_embedding_size = int(config.hidden_size)
        self.timestamp_embedding_size = int(config.hidden_size)

    def frame_embeddings(self, audio: torch.Tensor) -> torch.Tensor:
        """`[n_sounds, frame, feature]` hidden states of `self.layer` for `[n_sounds, n_samples]` clips."""
        audio = audio.to(dtype=torch.float32, device=next(self.encoder.parameters()).device)
        if self.normalize:  # Wav2Vec2FeatureExtractor's zero-mean unit-variance, per clip
            audio = (audio - audio.mean(dim=1, keepdim=True)) / torch.sqrt(audio.var(dim=1, keepdim=True,
                                                                                     unbiased=False) + 1e-7)
        pad = self.receptive_field // 2
        audio = torch.nn.functional.pad(audio, (pad, pad))
        with torch.inference_mode():
            outputs = self.encoder(input_values=audio, output_hidden_states=True, return_dict=True)
        return outputs.hidden_states[self.layer].float()

    def frame_times_ms(self, frames: int) -> torch.Tensor:
        """Centres of `frames` frames in milliseconds (frame i covers padded samples [i * hop, i * hop + field))."""
        centres = torch.arange(frames, dtype=torch.float64) * self.hop + self.receptive_field / 2 - self.receptive_field // 2
        return (centres * 1000 / self.sample_rate).float()


def load_model(model_file_path: str = "", layer: int | None = None, device: str = "cpu") -> HearModel:
    """A `HearModel` from a folder or Hub id (no code from the model is run: no remote-code models here)."""
    if not model_file_path:
        raise ValueError("load_model needs a model folder or Hub id (this package ships no default weights)")
    if layer is None:
        layer = int(os.environ.get("HF_MUSIC_W2V_HEAR_LAYER", -1))
    encoder, extractor = load_encoder(str(model_file_path), trust_remote_code=False, device=device)
    return HearModel(encoder, extractor, layer)


def check_audio(audio: torch.Tensor) -> torch.Tensor:
    if not isinstance(audio, torch.Tensor) or audio.ndim != 2:
        raise ValueError(f"audio must be a tensor [n_sounds, n_samples], got {getattr(audio, 'shape', type(audio))}")
    return audio


def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """(`[n_sounds, frame, feature]` float32 embeddings, `[n_sounds, frame]` timestamps in milliseconds)."""
    audio = check_audio(audio)
    embeddings = torch.cat([model.frame_embeddings(chunk) for chunk in audio.split(CLIPS_PER_BATCH)])
    timestamps = model.frame_times_ms(embeddings.shape[1]).to(embeddings.device).expand(len(audio), -1)
    return embeddings, timestamps


def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """`[n_sounds, feature]` float32: the mean of each clip's frame embeddings."""
    embeddings, _ = get_timestamp_embeddings(audio, model)
    return embeddings.mean(dim=1)


__all__ = ["HearModel", "get_scene_embeddings", "get_timestamp_embeddings", "load_model"]
