"""Classification metrics through the `evaluate` library, from metric modules shipped in `hf_music_w2v/metrics/`.

`evaluate.load("accuracy")` fetches its module from the Hub; these load from the package's own files, so
evaluation works offline and gives the same figures everywhere.
"""

from pathlib import Path

import numpy as np

METRICS_DIR = Path(__file__).resolve().parent / "metrics"
METRIC_NAMES = ("accuracy", "top_k_accuracy", "macro_f1")


def load_metric(name: str):
    """`evaluate.load` of one of the shipped metric modules: accuracy, top_k_accuracy or macro_f1."""
    import evaluate

    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; the shipped ones are {', '.join(METRIC_NAMES)}")
    return evaluate.load(str(METRICS_DIR / f"{name}.py"))


def head_metrics(logits: np.ndarray, labels: np.ndarray, top_k: int = 5) -> dict[str, float]:
    """accuracy, top-`top_k` accuracy and macro-F1 of one classification head.

    logits: float [example, class]; labels: int [example]. Examples labelled -100 (no label) are left out.
    """
    logits, labels = np.asarray(logits), np.asarray(labels)
    keep = labels != -100
    logits, labels = logits[keep], labels[keep]
    if len(labels) == 0:
        raise ValueError("no labelled examples to evaluate")
    predictions = logits.argmax(axis=1)
    results = load_metric("accuracy").compute(predictions=predictions, references=labels)
    results.update(load_metric("top_k_accuracy").compute(predictions=logits, references=labels, k=[top_k]))
    results.update(load_metric("macro_f1").compute(predictions=predictions, references=labels))
    return results


def compute_metrics(eval_prediction) -> dict[str, float]:
    """`Trainer(compute_metrics=...)` for `Wav2Vec2ForMusicClassification`: both heads' accuracy and their mean.

    The config's `keys_to_ignore_at_inference` leaves Trainer the two heads' logits, in the order pitch,
    instrument; with `label_names=["pitch_labels", "instrument_labels"]` its label ids come in the same order.
    """
    (pitch_logits, instrument_logits), (pitch_labels, instrument_labels) = eval_prediction.predictions, \
        eval_prediction.label_ids
    results = {}
    for head, logits, labels in (("pitch", pitch_logits, pitch_labels),
                                 ("instrument", instrument_logits, instrument_labels)):
        keep = np.asarray(labels) != -100
        results[f"{head}_accuracy"] = float((np.asarray(logits)[keep].argmax(axis=1) == np.asarray(labels)[keep]).mean())
    results["mean_accuracy"] = (results["pitch_accuracy"] + results["instrument_accuracy"]) / 2
    return results
