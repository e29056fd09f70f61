import os
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Loader caches of the tests (and of README snippets run by them) stay out of the user's ~/.cache.
os.environ.setdefault("HF_MUSIC_W2V_CACHE", tempfile.mkdtemp(prefix="hf_music_w2v_test_cache_"))

import hf_music_w2v  # noqa: E402  (registers the Auto classes before any test runs)

# A wav2vec2 small enough to build in milliseconds: 2 conv layers (stride 10), 2 Transformer layers of width 16.
TINY = dict(
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=24,
    conv_dim=(8, 8),
    conv_kernel=(10, 3),
    conv_stride=(5, 2),
    num_conv_pos_embeddings=8,
    num_conv_pos_embedding_groups=2,
    codevector_dim=8,
    proj_codevector_dim=8,
    num_codevectors_per_group=4,
    num_negatives=5,
    layerdrop=0.0,
)


def tiny_music_config(**overrides):
    values = dict(TINY)
    values.update(overrides)
    return hf_music_w2v.MusicWav2Vec2Config(**values)


@pytest.fixture
def tiny_config():
    return tiny_music_config()


@pytest.fixture
def tiny_model(tiny_config):
    torch.manual_seed(0)
    return hf_music_w2v.Wav2Vec2ForMusicClassification(tiny_config).eval()


@pytest.fixture
def waveforms():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(3, 4000, generator=generator)


@pytest.fixture(scope="session")
def mini_root(tmp_path_factory):
    """Miniature NSynth (3 notes per instrument) and MusicNet (24 s per score) rendered once per test session."""
    from hf_music_w2v.data.mini import make_mini_musicnet, make_mini_nsynth

    root = tmp_path_factory.mktemp("mini")
    make_mini_nsynth(root / "nsynth", seed=0, notes_per_instrument=3)
    make_mini_musicnet(root / "musicnet", seed=0, seconds=24.0)
    return root
