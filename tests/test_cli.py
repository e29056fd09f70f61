import os
import subprocess
import sys


def test_demo_saves_reloads_and_classifies(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "hf_music_w2v.cli", "demo", "--output_dir", str(tmp_path), "--pitch", "69"],
        capture_output=True,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "input: a generated 4 s note at MIDI 69 (A4)" in result.stdout
    assert "pitch: " in result.stdout and "instrument family: " in result.stdout
    assert (tmp_path / "model" / "model.safetensors").exists()
    assert (tmp_path / "model" / "preprocessor_config.json").exists()
