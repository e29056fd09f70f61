import numpy as np
import pytest

from hf_music_w2v.evaluation import head_metrics, load_metric


def test_metrics_load_offline_from_the_package():
    # conftest sets HF_HUB_OFFLINE=1: a Hub fetch would fail here.
    assert load_metric("accuracy").compute(predictions=[1, 2, 3], references=[1, 2, 4]) == {
        "accuracy": pytest.approx(2 / 3)}


def test_unknown_metric_is_named():
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        load_metric("bleu")


def test_top_k_accuracy_counts_the_reference_among_the_best_k():
    scores = [[0.1, 0.5, 0.4], [0.9, 0.04, 0.06], [0.2, 0.3, 0.5]]
    result = load_metric("top_k_accuracy").compute(predictions=scores, references=[2, 1, 2], k=[1, 2, 3])
    assert result == {"top_1_accuracy": pytest.approx(1 / 3), "top_2_accuracy": pytest.approx(2 / 3),
                      "top_3_accuracy": 1.0}


def test_macro_f1_weights_every_class_equally():
    result = load_metric("macro_f1").compute(predictions=[0, 1, 1, 1], references=[0, 1, 2, 1])
    # class 0: F1 1; class 1: precision 2/3, recall 1 -> 0.8; class 2: never predicted -> 0.
    assert result["macro_f1"] == pytest.approx((1 + 0.8 + 0) / 3)


def test_head_metrics_leave_out_unlabelled_examples():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 2.0, 1.0], [5.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    labels = np.array([0, 2, -100, 2])
    result = head_metrics(logits, labels, top_k=2)
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["top_2_accuracy"] == 1.0
    assert set(result) == {"accuracy", "top_2_accuracy", "macro_f1"}
    with pytest.raises(ValueError, match="no labelled examples"):
        head_metrics(logits[:1], np.array([-100]))
