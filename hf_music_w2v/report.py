"""Figures and the Markdown report of a pretrain -> fine-tune comparison (`hf-music-w2v demo`)."""

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

HEAD_KEYS = {"pitch": "test_pitch_accuracy", "instrument family": "test_instrument_accuracy"}
PALETTE = ("tab:orange", "tab:gray", "tab:green", "tab:purple")  # one colour per model, in the order given


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display is needed or used)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write `figure` as PNG through a temporary sibling and one rename, then close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    figure.savefig(staging, dpi=dpi)
    pyplot().close(figure)
    os.replace(staging, path)
    return path


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The rows of a JSON-lines metrics log; a missing file gives no rows."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def plot_pretraining(rows: list[dict], path: str | os.PathLike, num_groups: int) -> Path:
    """Contrastive loss, diversity loss and codevector perplexity against updates."""
    plt = pyplot()
    steps = [row["step"] for row in rows]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = (("contrastive_loss", "contrastive loss"), ("diversity_loss", "diversity loss"),
              ("codevector_perplexity", "codevector perplexity"))
    for axis, (key, title) in zip(axes, panels):
        axis.plot(steps, [row[key] for row in rows], color="tab:blue")
        axis.set_title(title)
        axis.set_xlabel("update")
        axis.grid(alpha=0.3)
    axes[2].axhline(num_groups, color="tab:red", linestyle="--", linewidth=1, label=f"collapse floor ({num_groups})")
    axes[2].legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path)


def plot_finetuning(runs: dict[str, list[list[dict]]], path: str | os.PathLike) -> Path:
    """Per initialisation: training loss against updates and valid accuracies against epochs, one line per seed."""
    plt = pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    colors = dict(zip(runs, PALETTE))
    for label, seeds in runs.items():
        for index, rows in enumerate(seeds):
            train = [row for row in rows if "loss" in row]
            valid = [row for row in rows if "valid_pitch_accuracy" in row]
            legend = label if index == 0 else None
            axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], color=colors[label], alpha=0.7,
                         label=legend)
            for axis, key in ((axes[1], "valid_pitch_accuracy"), (axes[2], "valid_instrument_accuracy")):
                axis.plot([r["epoch"] + 1 for r in valid], [r[key] for r in valid], color=colors[label], alpha=0.7,
                          marker=".", label=legend)
    for axis, title, xlabel in zip(axes, ("training loss (pitch + family)", "valid pitch accuracy",
                                          "valid instrument-family accuracy"), ("update", "epoch", "epoch")):
        axis.set_title(title)
        axis.set_xlabel(xlabel)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path)


def plot_codebook(scores: dict[str, dict], path: str | os.PathLike) -> Path:
    """NMI between code ids and pitch / family per model, with the shuffled-label floor drawn beside it."""
    plt = pyplot()
    labels = list(scores)
    x = np.arange(2)
    width = 0.8 / max(len(labels), 1)
    figure, axis = plt.subplots(figsize=(6.5, 3.8))
    for index, label in enumerate(labels):
        values = [scores[label]["pitch_nmi"], scores[label]["family_nmi"]]
        floors = [scores[label]["pitch_nmi_shuffled"], scores[label]["family_nmi_shuffled"]]
        positions = x + (index - (len(labels) - 1) / 2) * width
        axis.bar(positions, values, width * 0.9, label=label, color=PALETTE[index % len(PALETTE)])
        axis.scatter(positions, floors, color="black", marker="_", s=250, zorder=3,
                     label="labels shuffled" if index == 0 else None)
    axis.set_xticks(x, ["pitch", "instrument family"])
    axis.set_ylabel("NMI(code id, label)")
    axis.set_title("What the quantizer's codes say about each note")
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return save_figure(figure, path)


def accuracy_rows(results: dict[str, list[dict]]) -> list[dict]:
    """One row per initialisation: mean, spread and per-seed values of both test accuracies."""
    rows = []
    for label, runs in results.items():
        row = {"init": label, "seeds": len(runs)}
        for head, key in HEAD_KEYS.items():
            values = [run[key] for run in runs]
            mean, std = mean_and_spread(values)
            row[head] = {"mean": mean, "std": std, "values": values}
        rows.append(row)
    return rows


def accuracy_table(rows: list[dict], chance: dict[str, float]) -> str:
    """Markdown table of test accuracy (mean ± sample std over seeds, then each seed)."""
    lines = ["| initialisation | seeds | pitch accuracy | instrument-family accuracy | pitch per seed | family per seed |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        pitch, family = row["pitch"], row["instrument family"]
        lines.append(f"| {row['init']} | {row['seeds']} | {pitch['mean']:.3f} ± {pitch['std']:.3f} | "
                     f"{family['mean']:.3f} ± {family['std']:.3f} | "
                     f"{', '.join(f'{v:.3f}' for v in pitch['values'])} | "
                     f"{', '.join(f'{v:.3f}' for v in family['values'])} |")
    lines.append(f"| most frequent test class | - | {chance['pitch']:.3f} | {chance['instrument family']:.3f} | | |")
    return "\n".join(lines)


def compare(rows: list[dict], first: str, second: str) -> list[str]:
    """Plain sentences on `first` vs `second` per head, saying whether the seeds' ranges overlap."""
    by_init = {row["init"]: row for row in rows}
    if first not in by_init or second not in by_init:
        return []
    sentences = []
    for head in HEAD_KEYS:
        a, b = by_init[first][head], by_init[second][head]
        difference = 100 * (a["mean"] - b["mean"])
        if min(a["values"]) > max(b["values"]):
            verdict = f"{first} is ahead on every seed"
        elif min(b["values"]) > max(a["values"]):
            verdict = f"{second} is ahead on every seed"
        else:
            verdict = "the seeds' ranges overlap, so this is no clear difference at this scale"
        sentences.append(f"- **{head}**: {first} {a['mean']:.3f} vs {second} {b['mean']:.3f} "
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
