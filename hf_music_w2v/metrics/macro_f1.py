"""Macro-averaged F1: the unweighted mean over classes of each class's F1 score."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Macro F1: F1 computed per class, then averaged with equal weight for every class."
_INPUTS = """
Args:
    predictions (`list[int]`): predicted class ids.
    references (`list[int]`): true class ids.
    labels (`list[int]`, *optional*): the classes to average over. Defaults to every class that occurs in the
        references or the predictions; a class that never occurs in either would otherwise count as F1 0.
Returns:
    `macro_f1` in [0, 1].
"""


class MacroF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features({
                "predictions": datasets.Value("int64"),
                "references": datasets.Value("int64"),
            }),
        )

    def _compute(self, predictions, references, labels=None):
        predictions, references = np.asarray(predictions), np.asarray(references)
        labels = np.union1d(predictions, references) if labels is None else np.asarray(labels)
        scores = []
        for label in labels:
            true_positive = np.sum((predictions == label) & (references == label))
            predicted, actual = np.sum(predictions == label), np.sum(references == label)
            denominator = predicted + actual
            scores.append(2.0 * true_positive / denominator if denominator else 0.0)
        return {"macro_f1": float(np.mean(scores)) if scores else 0.0}
