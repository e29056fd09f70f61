"""Accuracy: the share of examples whose predicted class id equals the reference."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Accuracy: the proportion of correct predictions among all examples."
_INPUTS = """
Args:
    predictions (`list[int]`): predicted class ids.
    references (`list[int]`): true class ids.
Returns:
    `accuracy` in [0, 1].
"""


class Accuracy(evaluate.Metric):
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

    def _compute(self, predictions, references):
        predictions, references = np.asarray(predictions), np.asarray(references)
        if len(predictions) != len(references) or len(references) == 0:
            raise ValueError(f"need as many predictions as references (> 0), got {len(predictions)} and "
                             f"{len(references)}")
        return {"accuracy": float((predictions == references).mean())}
