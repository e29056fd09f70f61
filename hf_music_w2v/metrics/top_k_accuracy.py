"""Top-k accuracy from class scores: the share of examples whose reference is among the k highest scores."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Top-k accuracy: an example counts as correct when its reference class is among its k best scores."
_INPUTS = """
Args:
    predictions (`list[list[float]]`): class scores (logits or probabilities), one list per example.
    references (`list[int]`): the true class ids.
    k (`int` or `list[int]`, defaults to `[1, 5]`): the k values to report.
Returns:
    `top_{k}_accuracy` for each k, in [0, 1].
"""


class TopKAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features({
                "predictions": datasets.Sequence(datasets.Value("float32")),
                "references": datasets.Value("int64"),
            }),
        )

    def _compute(self, predictions, references, k=(1, 5)):
        scores = np.asarray(predictions, dtype=np.float64)
        references = np.asarray(references)
        if scores.ndim != 2 or len(scores) != len(references):
            raise ValueError(f"predictions must be [example, class] scores for {len(references)} references, "
                             f"got shape {scores.shape}")
        ks = [k] if isinstance(k, int) else list(k)
        # Rank of the reference = number of classes scoring strictly higher; ties count in the example's favour.
        reference_scores = scores[np.arange(len(references)), references]
        rank = (scores > reference_scores[:, None]).sum(axis=1)
        return {f"top_{value}_accuracy": float((rank < value).mean()) for value in ks}
