import json

import pytest

from hf_music_w2v.plotting import plot_pretraining
from hf_music_w2v.report import accuracy_rows, accuracy_table, compare, mean_and_spread
from hf_music_w2v.training.layout import read_jsonl


def runs(pitch: list[float], family: list[float]) -> list[dict]:
    return [{"test_pitch_accuracy": p, "test_instrument_accuracy": f} for p, f in zip(pitch, family)]


def test_mean_and_spread_use_the_sample_standard_deviation():
    mean, spread = mean_and_spread([0.2, 0.4, 0.6])
    assert mean == pytest.approx(0.4) and spread == pytest.approx(0.2)
    assert mean_and_spread([0.5]) == (0.5, 0.0)


def test_compare_says_who_is_ahead_only_when_every_seed_agrees():
    rows = accuracy_rows({"A": runs([0.5, 0.6, 0.7], [0.30, 0.20, 0.25]),
                          "B": runs([0.1, 0.2, 0.3], [0.22, 0.28, 0.26])})
    pitch, family = compare(rows, "A", "B")
    assert "A is ahead on every seed" in pitch and "+40.0 points" in pitch
    assert "no clear difference at this scale" in family and "-0.3 points" in family
    assert compare(rows, "A", "missing") == []


def test_accuracy_table_lists_seeds_and_chance():
    rows = accuracy_rows({"music": runs([0.5, 0.7], [0.3, 0.5])})
    table = accuracy_table(rows, {"pitch": 0.125, "instrument": 0.1})
    assert "| music | 2 | 0.600 ± 0.141 | 0.400 ± 0.141 | 0.500, 0.700 | 0.300, 0.500 |" in table
    assert "| most frequent test class | - | 0.125 | 0.100 | | |" in table


def test_read_jsonl_of_a_missing_log_is_empty(tmp_path):
    assert read_jsonl(tmp_path / "none.jsonl") == []
    path = tmp_path / "log.jsonl"
    path.write_text(json.dumps({"step": 1}) + "\n\n" + json.dumps({"step": 2}) + "\n")
    assert [row["step"] for row in read_jsonl(path)] == [1, 2]


def test_pretraining_plot_is_written_atomically_as_png(tmp_path):
    rows = [{"step": s, "contrastive_loss": 4.6 - s / 100, "diversity_loss": 0.1, "codevector_perplexity": 50.0}
            for s in range(10, 60, 10)]
    path = plot_pretraining(rows, tmp_path / "figures" / "pretraining.png", num_groups=2)
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in path.parent.iterdir()] == ["pretraining.png"]
