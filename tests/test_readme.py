import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_python_snippets():
    assert len(PYTHON_BLOCKS) >= 3


def test_readme_python_snippets_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme"}
    for index, block in enumerate(PYTHON_BLOCKS):
        # The compiled file name puts the failing block's index into any traceback.
        exec(compile(block, f"README.md python block {index}", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "torch.Size([1, 128]) torch.Size([1, 11])" in printed
    assert "A4 bass" in printed
    assert "['eval_instrument_accuracy', 'eval_mean_accuracy', 'eval_pitch_accuracy']" in printed
    assert "Wav2Vec2ForMusicClassification" in printed  # the Trainer's saved model, reloaded by AutoModel
    assert "(2, 101, 32) [0.0, 20.0, 40.0] (2, 32)" in printed  # the HEAR API: a frame every 20 ms from 0
