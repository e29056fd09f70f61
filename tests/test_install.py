"""Training from a built wheel installed outside the checkout, in an empty folder: no repository files needed."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The package built as a wheel from a copy of the checkout and installed (not editable) into its own folder."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info",
                                                                "demo_output", "__pycache__", ".pytest_cache"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                            str(root / "dist"), str(source)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((root / "dist").glob("hf_music_w2v-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"hf_music_w2v/recipes/pretrain-mini.json", "hf_music_w2v/recipes/wav2vec2-small.json",
            "hf_music_w2v/model_cards/finetuned.md", "hf_music_w2v/training/engine.py"} <= names
    assert not any(name.startswith(("training/", "tests/")) for name in names)
    site = root / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target",
                                str(site), str(wheel)], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return site


def installed_env(site: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return dict(env, PYTHONPATH=str(site), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")


@pytest.mark.slow
def test_pretrain_then_finetune_from_an_installed_wheel(installed, mini_root, tmp_path):
    empty = tmp_path / "work"
    empty.mkdir()
    env = installed_env(installed)
    where = subprocess.run([sys.executable, "-c", "import hf_music_w2v; print(hf_music_w2v.__file__)"], cwd=empty,
                           env=env, capture_output=True, text=True, timeout=120)
    assert Path(where.stdout.strip()).is_relative_to(installed), where.stdout  # the wheel, not the checkout
    cli = [str(installed / "bin" / "hf-music-w2v")]

    pretrain = subprocess.run(cli + ["pretrain", "--recipe", "mini", "--musicnet_dir", str(mini_root / "musicnet"),
                                     "--output_dir", "pre", "--max_train_steps", "3", "--report_to", "none"],
                              cwd=empty, env=env, capture_output=True, text=True, timeout=600)
    assert pretrain.returncode == 0, pretrain.stderr[-3000:]
    assert json.loads((empty / "pre" / "all_results.json").read_text())["steps"] == 3
    assert "hf-music-w2v pretrain --recipe mini" in (empty / "pre" / "README.md").read_text()

    finetune = subprocess.run(cli + ["finetune", "--recipe", "mini", "--model_name_or_path", "pre", "--nsynth_dir",
                                     str(mini_root / "nsynth"), "--output_dir", "ft", "--num_train_epochs", "1",
                                     "--max_train_samples", "16", "--max_eval_samples", "8", "--report_to", "none"],
                              cwd=empty, env=env, capture_output=True, text=True, timeout=600)
    assert finetune.returncode == 0, finetune.stderr[-3000:]
    results = json.loads((empty / "ft" / "all_results.json").read_text())
    assert results["steps"] == 2 and results["test_notes"] == 8
    assert (empty / "ft" / "README.md").is_file() and (empty / "ft" / "widget" / "pitch" / "README.md").is_file()
