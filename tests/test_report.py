import json

import numpy as np
import pytest

from hf_music_w2v.plotting import plot_pretraining
from hf_music_w2v.report import (
    accuracy_rows,
    accuracy_table,
    mean_and_spread,
    paired_bootstrap,
    paired_comparisons,
    verdict,
)
from hf_music_w2v.training.layout import read_jsonl


def runs(pitch: list[float], family: list[float]) -> list[dict]:
    return [{"test_pitch_accuracy": p, "test_instrument_accuracy": f} for p, f in zip(pitch, family)]


def test_mean_and_spread_use_the_sample_standard_deviation():
    mean, spread = mean_and_spread([0.2, 0.4, 0.6])
    assert mean == pytest.approx(0.4) and spread == pytest.approx(0.2)
    assert mean_and_spread([0.5]) == (0.5, 0.0)


def test_the_paired_bootstrap_calls_an_arm_ahead_only_when_its_interval_excludes_zero():
    rng = np.random.default_rng(0)
    better = (rng.random((3, 220)) < 0.7).astype(float)
    worse = (rng.random((3, 220)) < 0.4).astype(float)
    difference, low, high = paired_bootstrap(better, worse)
    assert abs(difference - (better.mean() - worse.mean())) < 1e-12 and 0 < low < difference < high
    assert verdict("music", "speech", low, high) == "music is ahead"
    assert verdict("speech", "music", -high, -low) == "music is ahead"
    same = (rng.random((3, 220)) < 0.5).astype(float)
    _, low, high = paired_bootstrap(same, np.roll(same, 1, axis=1))  # same accuracy, other notes right
    assert low < 0 < high and verdict("a", "b", low, high).startswith("no clear difference")


def test_pairing_keeps_each_notes_answers_together():
    """Ten notes lost in every seed by one arm, the other 190 answered alike: a small gap, but a clear one."""
    notes = 200
    hard = np.arange(notes) < 100
    first = np.tile(~hard, (3, 1)).astype(float)
    second = first.copy()
    second[:, 100:110] = 0  # 10 easy notes lost: 5 points, on the same notes in every seed
    difference, low, high = paired_bootstrap(first, second)
    assert abs(difference - 0.05) < 1e-12 and 0 < low < 0.05 < high


def test_comparisons_cover_every_pair_and_head():
    rng = np.random.default_rng(1)
    correct = {arm: {head: (rng.random((2, 50)) < 0.5).astype(float) for head in ("pitch", "instrument")}
               for arm in ("music", "speech", "random")}
    rows = [{"init": arm, **{head: {"std": 0.01} for head in ("pitch", "instrument")}} for arm in correct]
    pairs = {(c["first"], c["second"], c["head"]) for c in paired_comparisons(correct, rows)}
    assert pairs == {(a, b, h) for a, b in (("music", "speech"), ("music", "random"), ("speech", "random"))
                     for h in ("pitch", "instrument")}


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
