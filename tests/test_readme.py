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


def test_readme_results_are_the_recorded_runs():
    """The Results section is generated from docs/demo_results.json; a hand edit or a stale file fails here."""
    from hf_music_w2v.report import load_results, replace_readme_results

    recorded = load_results(README.parent / "docs" / "demo_results.json")
    text = README.read_text()
    assert replace_readme_results(text, recorded) == text, (
        "README.md's Results section differs from docs/demo_results.json: run "
        "`.venv/bin/hf-music-w2v results docs/demo_results.json --readme README.md`")
    settings = recorded["settings"]
    assert len(settings["pretrain_seeds"]) >= 2 and len(settings["seeds"]) >= 2
    assert recorded["data"]["test_notes"] >= 600
