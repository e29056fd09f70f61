"""Scores of probe predictions on labelled audio tasks, in numpy (no scikit-learn).

Single-label: accuracy, macro-F1, top-5 accuracy. Multi-label: ROC-AUC and average precision per tag and their
macro means, and HEAR's d-prime. Regression: R² per target and overall (their mean), mean squared error.
Tags whose test labels are all positive or all negative have no ROC-AUC or AP; they are `nan` per tag and left
out of the means, as MARBLE's and HEAR's evaluations do.
"""

import math

import numpy as np

#: The score that selects a probe's epoch on valid, per task kind.
SELECTION_METRIC = {"single": "accuracy", "multilabel": "map", "regression": "r2"}


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Share of `[example, class]` scores whose highest class is the label."""
    return float((scores.argmax(axis=1) == labels).mean())


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Share of examples whose label is among the `k` highest scores (ties count in the example's favour)."""
    label_scores = scores[np.arange(len(labels)), labels]
    return float(((scores > label_scores[:, None]).sum(axis=1) < k).mean())


def macro_f1(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Mean F1 over the classes that occur among the labels or the predictions."""
    scores = []
    for label in np.union1d(predicted, labels):
        true_positive = np.sum((predicted == label) & (labels == label))
        scores.append(2.0 * true_positive / (np.sum(predicted == label) + np.sum(labels == label)))
    return float(np.mean(scores))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values`, ties sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + 1 + end) / 2
    return ranks


def roc_auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve of one tag (the Mann-Whitney statistic; ties count half); nan without both classes."""
    positives = int(truth.sum())
    negatives = len(truth) - positives
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = average_ranks(scores)
    return float((ranks[truth.astype(bool)].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """Sum over score thresholds of precision times the recall gained there; nan without positives or negatives."""
    positives = int(truth.sum())
    if positives == 0 or positives == len(truth):
        return math.nan
    order = np.argsort(-scores, kind="stable")
    ordered, hits = scores[order], truth[order].astype(np.float64)
    last_of_tie = np.r_[ordered[1:] != ordered[:-1], True]  # a threshold takes all examples tied at it
    true_positives = np.cumsum(hits)[last_of_tie]
    predicted = (np.arange(1, len(scores) + 1))[last_of_tie]
    recall_gained = np.diff(np.r_[0.0, true_positives]) / positives
    return float((recall_gained * true_positives / predicted).sum())


def d_prime(auc: float) -> float:
    """HEAR's d' of an ROC-AUC: sqrt(2) times the standard normal quantile of the AUC."""
    from statistics import NormalDist

    if math.isnan(auc):
        return math.nan
    auc = min(max(auc, 1e-12), 1 - 1e-12)  # AUC 0 or 1 would be an infinite d'
    return math.sqrt(2) * NormalDist().inv_cdf(auc)


def nanmean(values: list[float]) -> float:
    kept = [value for value in values if not math.isnan(value)]
    return float(np.mean(kept)) if kept else math.nan


def r2_per_target(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """`[target]` coefficients of determination: 1 - residual sum of squares / total sum of squares.

    A target that is constant in `truth` scores 1 when predicted exactly, else 0 (as scikit-learn).
    """
    residual = np.square(truth - predicted).sum(axis=0)
    total = np.square(truth - truth.mean(axis=0)).sum(axis=0)
    safe = np.where(total > 0, total, 1.0)
    return np.where(total > 0, 1 - residual / safe, np.where(residual == 0, 1.0, 0.0))


def task_scores(kind: str, outputs: np.ndarray, labels: np.ndarray, selection_only: bool = False) -> dict:
    """Scores of one probe's `[example, output]` outputs (logits, or predicted targets for regression).

    `labels` are class indices (single), `[example, tag]` 0/1 (multilabel) or `[example, target]` values
    (regression). `selection_only` computes just `SELECTION_METRIC[kind]`.
    """
    if kind == "single":
        found = {"accuracy": accuracy(outputs, labels)}
        if not selection_only:
            found["macro_f1"] = macro_f1(outputs.argmax(axis=1), labels)
            found["top5_accuracy"] = top_k_accuracy(outputs, labels, 5)
        return found
    if kind == "multilabel":
        precisions = [average_precision(outputs[:, tag], labels[:, tag]) for tag in range(labels.shape[1])]
        found = {"map": nanmean(precisions)}
        if not selection_only:
            aucs = [roc_auc(outputs[:, tag], labels[:, tag]) for tag in range(labels.shape[1])]
            found.update(roc_auc=nanmean(aucs), d_prime=nanmean([d_prime(auc) for auc in aucs]),
                         roc_auc_per_tag=aucs, ap_per_tag=precisions)
        return found
    if kind == "regression":
        per_target = r2_per_target(outputs.astype(np.float64), labels.astype(np.float64))
        found = {"r2": float(per_target.mean())}
        if not selection_only:
            found.update(r2_per_target=per_target.tolist(), mse=float(np.square(outputs - labels).mean()))
        return found
    raise ValueError(f"unknown task kind {kind!r}")


__all__ = ["SELECTION_METRIC", "accuracy", "average_precision", "d_prime", "macro_f1", "r2_per_target", "roc_auc",
           "task_scores", "top_k_accuracy"]
