"""Atomic writes leave the modes a plain write would have given: 0600 temporaries must not become the outputs."""

import os
import subprocess
import sys

import pytest

from hf_music_w2v.atomic import atomic_path, staged_directory, write_text_atomic


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def test_atomic_files_and_folders_honour_the_umask(tmp_path, umask):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    (tmp_path / "plain_dir").mkdir()
    written = write_text_atomic(tmp_path / "results.json", "{}")
    with atomic_path(tmp_path / "model.bin") as staging:
        staging.write_bytes(b"weights")
    with staged_directory(tmp_path / "folder") as staging:
        (staging / "inside.txt").write_text("y")
    mode = lambda path: path.stat().st_mode & 0o777  # noqa: E731
    assert mode(written) == mode(tmp_path / "model.bin") == mode(plain) == 0o666 & ~umask
    assert mode(tmp_path / "folder") == mode(tmp_path / "plain_dir") == 0o777 & ~umask
    assert mode(tmp_path / "folder" / "inside.txt") == 0o666 & ~umask


def test_a_finished_run_folder_is_readable_by_others_under_umask_022(tmp_path, pretrain_args):
    """Every file and folder a real pretraining run leaves, checkpoints and model included."""
    from .conftest import program_env

    command = [sys.executable, "-m", "hf_music_w2v.training.pretrain", *pretrain_args(tmp_path / "out", 2)]
    result = subprocess.run(command, capture_output=True, text=True, env=program_env(), timeout=600,
                            preexec_fn=lambda: os.umask(0o022))
    assert result.returncode == 0, result.stderr[-3000:]
    wrong = {str(path.relative_to(tmp_path)): oct(path.stat().st_mode & 0o777) for path in (tmp_path / "out").rglob("*")
             if (path.stat().st_mode & 0o777) != (0o755 if path.is_dir() else 0o644)}
    assert wrong == {}
