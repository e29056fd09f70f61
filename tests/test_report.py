import json

import numpy as np
import pytest

from hf_music_w2v.plotting import plot_pretraining
from hf_music_w2v.report import (
    LEVELS,
    README_BEGIN,
    README_END,
    accuracy_rows,
    accuracy_table,
    first_difference,
    hierarchical_bootstrap,
    mean_and_spread,
    paired_comparison,
    paired_comparisons,
    replace_readme_results,
    verdict,
)
from hf_music_w2v.training.layout import read_jsonl


def runs(pitch: list[list[float]], family: list[list[float]]) -> list[list[dict]]:
    """Results of an arm: per pretraining run, per fine-tuning seed."""
    return [[{"test_pitch_accuracy": p, "test_instrument_accuracy": f} for p, f in zip(ps, fs)]
            for ps, fs in zip(pitch, family)]


def test_mean_and_spread_use_the_sample_standard_deviation():
    mean, spread = mean_and_spread([0.2, 0.4, 0.6])
    assert mean == pytest.approx(0.4) and spread == pytest.approx(0.2)
    assert mean_and_spread([0.5]) == (0.5, 0.0)


def draws(rng, probability: float, runs: int = 2, seeds: int = 2, notes: int = 300) -> np.ndarray:
    return (rng.random((runs, seeds, notes)) < probability).astype(float)


def test_the_comparison_calls_an_arm_ahead_only_when_its_interval_excludes_zero():
    rng = np.random.default_rng(0)
    better, worse = draws(rng, 0.7), draws(rng, 0.4)
    c = paired_comparison(better, worse)
    assert c["difference"] == pytest.approx(better.mean() - worse.mean()) and 0 < c["low"] < c["difference"] < c["high"]
    assert c["half_width"] == pytest.approx((c["high"] - c["low"]) / 2)
    assert verdict("music", "speech", c["low"], c["high"]) == "music is ahead"
    assert verdict("speech", "music", -c["high"], -c["low"]) == "music is ahead"
    same = draws(rng, 0.5)
    c = paired_comparison(same, np.roll(same, 1, axis=2))  # same accuracy, other notes right
    assert c["low"] < 0 < c["high"] and verdict("a", "b", c["low"], c["high"]).startswith("no clear difference")


def test_pairing_keeps_each_notes_answers_together():
    """Ten notes lost in every run by one arm, the other 190 answered alike: a small gap, but a clear one."""
    notes = 200
    hard = np.arange(notes) < 100
    first = np.tile(~hard, (2, 2, 1)).astype(float)
    second = first.copy()
    second[:, :, 100:110] = 0  # 10 easy notes lost: 5 points, on the same notes in every run
    c = paired_comparison(first, second)
    assert c["difference"] == pytest.approx(0.05) and 0 < c["low"] < 0.05 < c["high"]


def test_a_pretraining_run_that_differs_widens_the_interval_and_is_named_as_the_source():
    """Two arms equal on average; one arm's two pretraining runs are far apart. Notes and seeds alone would call
    it; the interval over pretraining runs must not."""
    rng = np.random.default_rng(2)
    notes = 600
    truth = rng.random(notes) < 0.5
    first = np.stack([np.tile(truth, (2, 1)), np.tile(truth, (2, 1))]).astype(float)
    first[1, :, :120] = 0  # the second pretraining run loses about 60 notes: 10 points
    second = np.tile(truth, (2, 2, 1)).astype(float)
    second[:, :, 120:180] = 0  # every run of the other arm loses about 30: 5 points, the first arm's average
    c = paired_comparison(first, second)
    notes_only = np.percentile(hierarchical_bootstrap(first, second, ("notes",)), [2.5, 97.5])
    assert c["high"] - c["low"] > 2 * (notes_only[1] - notes_only[0])
    assert max(c["level_std"], key=c["level_std"].get) == "pretraining"
    assert c["level_std"]["finetuning"] == 0.0  # the seeds of a run answer alike here


def test_each_level_alone_resamples_only_that_level():
    rng = np.random.default_rng(3)
    first, second = draws(rng, 0.6), draws(rng, 0.5)
    observed = first.mean() - second.mean()
    for level in LEVELS:
        resampled = hierarchical_bootstrap(first, second, (level,), resamples=2000)
        assert resampled.std() > 0 and abs(resampled.mean() - observed) < 0.02
    constant = np.tile(first[:1, :1], (2, 2, 1))  # every run of the arm answers alike
    other = np.tile(second[:1, :1], (2, 2, 1))
    for level in ("pretraining", "finetuning"):
        resampled = hierarchical_bootstrap(constant, other, (level,), resamples=100)
        assert np.allclose(resampled, constant.mean() - other.mean(), atol=1e-12)


def test_arms_with_other_run_counts_compare_on_the_same_notes():
    rng = np.random.default_rng(4)
    checkpoint = draws(rng, 0.5, runs=1)
    c = paired_comparison(draws(rng, 0.5), checkpoint)
    assert c["low"] < c["high"]
    with pytest.raises(ValueError, match="300 and 299 test notes"):
        paired_comparison(draws(rng, 0.5), draws(rng, 0.5, notes=299))


def test_comparisons_cover_every_pair_and_head():
    rng = np.random.default_rng(1)
    correct = {arm: {head: draws(rng, 0.5, notes=50) for head in ("pitch", "instrument")}
               for arm in ("music", "speech", "random")}
    pairs = {(c["first"], c["second"], c["head"]) for c in paired_comparisons(correct)}
    assert pairs == {(a, b, h) for a, b in (("music", "speech"), ("music", "random"), ("speech", "random"))
                     for h in ("pitch", "instrument")}


def test_accuracy_table_lists_every_run_by_pretraining_run_and_chance():
    rows = accuracy_rows({"music": runs([[0.5, 0.7], [0.6, 0.6]], [[0.3, 0.5], [0.4, 0.4]])})
    assert rows[0]["pitch"]["network_means"] == pytest.approx([0.6, 0.6])
    table = accuracy_table(rows, {"pitch": 0.125, "instrument": 0.1})
    assert "| music | 2 x 2 | 0.600 ± 0.082 | 0.400 ± 0.082 | 0.500, 0.700; 0.600, 0.600 | 0.300, 0.500; 0.400, 0.400 |" in table
    assert "| most frequent test class | - | 0.125 | 0.100 | | |" in table


def test_the_first_difference_is_named_and_the_run_part_is_left_out():
    recorded = {"settings": {"seeds": [0, 1]}, "accuracy": [{"pitch": {"mean": 0.25}}], "run": {"date": "a"}}
    same = json.loads(json.dumps(recorded))
    same["run"] = {"date": "b", "stage_seconds": {"wall": 3.0}}
    assert first_difference(recorded, same) is None
    moved = json.loads(json.dumps(recorded))
    moved["accuracy"][0]["pitch"]["mean"] = 0.2500001
    assert first_difference(recorded, moved) == "results.accuracy[0].pitch.mean: recorded 0.25, now 0.2500001"
    fewer = json.loads(json.dumps(recorded))
    fewer["settings"]["seeds"] = [0]
    assert first_difference(recorded, fewer) == "results.settings.seeds: 2 entries recorded, 1 now"
    assert first_difference(recorded, {**recorded, "extra": 1}) == ("results.extra: now present, not in the "
                                                                   "recorded results")


def test_a_readme_without_its_generated_section_is_refused():
    with pytest.raises(ValueError, match="exactly one generated Results section"):
        replace_readme_results("# no markers\n", {})
    with pytest.raises(ValueError, match="exactly one generated Results section"):
        replace_readme_results(f"{README_BEGIN}\n{README_END}\n{README_BEGIN}\n{README_END}\n", {})


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


def test_the_resampled_mean_is_the_mean_over_drawn_runs_and_seeds():
    """The count-matrix sum, against drawing the same runs and seeds one by one."""
    from hf_music_w2v.report import _resampled_note_accuracy, widened_deviations

    rng = np.random.default_rng(5)
    correct = draws(rng, 0.5, runs=3, seeds=2, notes=40)
    fast = _resampled_note_accuracy(correct, LEVELS, 50, np.random.default_rng(9))
    replay = np.random.default_rng(9)
    drawn_runs = replay.integers(0, 3, (50, 3))
    drawn_seeds = replay.integers(0, 2, (50, 3, 2))
    widened = widened_deviations(correct)
    slow = np.array([np.mean([widened[p, drawn_seeds[r, slot, k]] for slot, p in enumerate(drawn_runs[r])
                              for k in range(2)], axis=0) for r in range(50)])
    np.testing.assert_allclose(fast, slow, atol=1e-12)


def test_widened_deviations_keep_the_mean_and_give_the_unbiased_variance_of_three_runs():
    from hf_music_w2v.report import widened_deviations

    run_effects = np.array([0.0, 0.1, 0.2])
    correct = np.broadcast_to(run_effects[:, None, None], (3, 2, 1)).copy()
    assert widened_deviations(correct).mean() == pytest.approx(correct.mean())
    resampled = hierarchical_bootstrap(correct, np.zeros_like(correct), ("pretraining",), resamples=20_000)
    assert resampled.var() == pytest.approx(run_effects.var(ddof=1) / 3, rel=0.05)
