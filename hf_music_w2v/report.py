"""Tables and verdict sentences of a pretrain -> fine-tune comparison (`hf-music-w2v demo`)."""

from collections.abc import Sequence

import numpy as np

from .training.layout import HEAD_TITLES, HEADS, result_key


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def accuracy_rows(results: dict[str, list[dict]]) -> list[dict]:
    """One row per initialisation: mean, spread and per-seed values of both test accuracies."""
    rows = []
    for label, runs in results.items():
        row = {"init": label, "seeds": len(runs)}
        for head in HEADS:
            values = [run[result_key("test", head)] for run in runs]
            mean, std = mean_and_spread(values)
            row[head] = {"mean": mean, "std": std, "values": values}
        rows.append(row)
    return rows


def accuracy_table(rows: list[dict], chance: dict[str, float]) -> str:
    """Markdown table of test accuracy (mean ± sample std over seeds, then each seed)."""
    lines = ["| initialisation | seeds | pitch accuracy | instrument-family accuracy | pitch per seed | family per seed |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        pitch, family = row["pitch"], row["instrument"]
        lines.append(f"| {row['init']} | {row['seeds']} | {pitch['mean']:.3f} ± {pitch['std']:.3f} | "
                     f"{family['mean']:.3f} ± {family['std']:.3f} | "
                     f"{', '.join(f'{v:.3f}' for v in pitch['values'])} | "
                     f"{', '.join(f'{v:.3f}' for v in family['values'])} |")
    lines.append(f"| most frequent test class | - | {chance['pitch']:.3f} | {chance['instrument']:.3f} | | |")
    return "\n".join(lines)


def compare(rows: list[dict], first: str, second: str) -> list[str]:
    """Plain sentences on `first` vs `second` per head, saying whether the seeds' ranges overlap."""
    by_init = {row["init"]: row for row in rows}
    if first not in by_init or second not in by_init:
        return []
    sentences = []
    for head in HEADS:
        a, b = by_init[first][head], by_init[second][head]
        difference = 100 * (a["mean"] - b["mean"])
        if min(a["values"]) > max(b["values"]):
            verdict = f"{first} is ahead on every seed"
        elif min(b["values"]) > max(a["values"]):
            verdict = f"{second} is ahead on every seed"
        else:
            verdict = "the seeds' ranges overlap, so this is no clear difference at this scale"
        sentences.append(f"- **{HEAD_TITLES[head]}**: {first} {a['mean']:.3f} vs {second} {b['mean']:.3f} "
                         f"({difference:+.1f} points); {verdict}.")
    return sentences


def codebook_table(scores: dict[str, dict]) -> str:
    lines = ["| model | pitch NMI | (labels shuffled) | family NMI | (labels shuffled) | codes used / size | "
             "code perplexity |", "|---|---|---|---|---|---|---|"]
    for label, s in scores.items():
        lines.append(f"| {label} | {s['pitch_nmi']:.3f} | {s['pitch_nmi_shuffled']:.3f} | {s['family_nmi']:.3f} | "
                     f"{s['family_nmi_shuffled']:.3f} | {s['codes_used']} / {s['codebook_size']} | "
                     f"{s['code_perplexity']:.1f} |")
    return "\n".join(lines)
