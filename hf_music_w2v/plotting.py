"""Every figure the package draws (training curves, confusion matrices, codebook NMI), written as PNG."""

import os
from pathlib import Path

import numpy as np

from .atomic import atomic_path

PALETTE = ("tab:orange", "tab:gray", "tab:green", "tab:purple")  # one colour per model, in the order given


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display is needed or used)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write `figure` as PNG through a temporary sibling and one rename, then close it."""
    with atomic_path(path) as staging:
        figure.savefig(staging, dpi=dpi)
    pyplot().close(figure)
    return Path(path)


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
    """Per initialisation: training loss against updates and valid accuracies against epochs, one line per run."""
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


def plot_probe_layers(reports: dict[str, dict], path: str | os.PathLike, metric: str = "test_accuracy") -> Path:
    """Probe test score (`metric`) against layer, one panel per task, one line per model and probe.

    `reports` maps a model's label to its `probe_results.json` content; a weighted-sum probe is drawn as a
    dashed level across the panel.
    """
    plt = pyplot()
    builtin = ("pitch", "instrument")
    tasks = sorted({entry["task"] for report in reports.values() for entry in report["results"]},
                   key=lambda task: (builtin.index(task), "") if task in builtin else (len(builtin), task))
    titles = {"pitch": "pitch", "instrument": "instrument family"}
    score = metric.removeprefix("test_").replace("_", " ")
    figure, axes = plt.subplots(1, len(tasks), figsize=(6.2 * len(tasks), 4.0 + 0.25 * len(reports)), squeeze=False)
    styles = {"linear": "-", "mlp": "--"}
    for axis, task in zip(axes[0], tasks):
        for index, (label, report) in enumerate(reports.items()):
            color = PALETTE[index % len(PALETTE)]
            entries = [e for e in report["results"] if e["task"] == task and e.get(metric) is not None]
            for probe in ("linear", "mlp"):
                points = sorted((e["layer"], e[metric]) for e in entries
                                if e["probe"] == probe and isinstance(e["layer"], int))
                if points:
                    layers, values = zip(*points)
                    axis.plot(layers, values, styles[probe], color=color, marker="o", markersize=3,
                              label=f"{label}, {probe}")
            for entry in (e for e in entries if e["layer"] == "weighted"):
                axis.axhline(entry[metric], color=color, linestyle=":", linewidth=1.2,
                             label=f"{label}, weighted sum of layers")
        axis.set_title(f"{titles.get(task, task)}: test {score} of frozen-feature probes")
        axis.set_xlabel("layer (0: Transformer input)")
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.set_ylabel(f"test {score}")
        axis.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    rows = (len(labels) + 2) // 3
    figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.05 + 0.045 * rows, 1, 1))  # room below the panels for the legend
    return save_figure(figure, path)


def save_confusion_matrix_png(matrix: np.ndarray, class_names: list[str], path: str | os.PathLike,
                              title: str) -> Path:
    """A row-normalised heat map of `matrix` with counts in the cells, written atomically as PNG."""
    plt = pyplot()
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    figure, axes = plt.subplots(figsize=(7.5, 6.5))
    image = axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    axes.set_yticks(range(len(class_names)), class_names)
    axes.set_xlabel("predicted family")
    axes.set_ylabel("true family")
    axes.set_title(title)
    for (row, column), count in np.ndenumerate(matrix):
        if count:
            axes.text(column, row, str(count), ha="center", va="center", fontsize=7,
                      color="white" if share[row, column] > 0.5 else "black")
    figure.colorbar(image, ax=axes, label="share of the true family's notes")
    figure.tight_layout()
    return save_figure(figure, path)
