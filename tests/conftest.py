import os
import subprocess
import tempfile
from pathlib import Path

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


@pytest.fixture(scope="session")
def mini_speech(tmp_path_factory):
    """Mini-speech (eSpeak NG), 8 speakers x 6 s, rendered once per test session."""
    from hf_music_w2v.data.mini_speech import make_mini_speech

    return make_mini_speech(tmp_path_factory.mktemp("speech") / "speech", seed=0, seconds_per_speaker=6.0)


# Fixed parts of every scripted pretraining run: 1 s windows of mini-MusicNet, a tiny model, few negatives.
PRETRAIN_BASE_ARGS = ["--segment_seconds", "1", "--hop_seconds", "1", "--num_negatives", "5", "--warmup_steps", "2",
                      "--per_device_train_batch_size", "2"]


def tiny_pretraining_config(**overrides):
    from transformers import Wav2Vec2Config

    # A total conv stride of 80 (200 frames per second of audio) keeps CPU attention cheap in scripted runs.
    return Wav2Vec2Config(**{**TINY, "conv_kernel": (10, 16), "conv_stride": (5, 16), "mask_time_prob": 0.65,
                             **overrides})


@pytest.fixture(scope="session")
def tiny_config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "tiny.json"
    tiny_pretraining_config().to_json_file(path)
    return path


@pytest.fixture
def pretrain_args(mini_root, tiny_config_file):
    """Arguments of a tiny pretraining run of `steps` updates into `output_dir`, checkpointing every 2."""
    def args(output_dir, steps: int = 4, *extra: str) -> list[str]:
        return ["--musicnet_dir", str(mini_root / "musicnet"), "--config_name", str(tiny_config_file),
                *PRETRAIN_BASE_ARGS, "--max_train_steps", str(steps), "--checkpointing_steps", "2",
                "--report_to", "none", "--output_dir", str(output_dir), *extra]
    return args


def program_env(**extra) -> dict:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {**os.environ, "PYTHONPATH": repo, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **extra}


def run_program(name: str, args: list[str], timeout: int = 600, **extra):
    """`python -m hf_music_w2v.training.NAME ARGS` in a fresh process."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", f"hf_music_w2v.training.{name}", *args], env=program_env(**extra),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def small_disk(tmp_path):
    """`small_disk("320k")`: an empty folder on a real file system of that size (a tmpfs), unmounted after the test.

    Mounting needs root, as CI runs the tests; elsewhere a test that asks for one is skipped, saying why.
    """
    mounted = []

    def mount(size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("a disk-full test mounts a small tmpfs, which needs root (CI runs the tests as root)")
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs at {folder}: {result.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(folder)], check=True)


def resize_disk(folder: Path, size: str) -> None:
    """Give the tmpfs at `folder` (from `small_disk`) a new size, keeping its files: space freed."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)
