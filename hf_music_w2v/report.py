"""Tables and verdict sentences: the demo's pretrain -> fine-tune comparison and layer-wise probe results."""

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


def note_correctness(predictions: list[dict], head: str) -> tuple[list[str], np.ndarray]:
    """(note names, `[seed, note]` 0/1 correctness) of one arm's runs, from their `test_predictions.json`."""
    names = predictions[0]["note_str"]
    if any(run["note_str"] != names for run in predictions):
        raise ValueError("the runs of one arm were scored on different test notes")
    return names, np.array([np.equal(run[head]["predicted"], run[head]["label"]) for run in predictions], dtype=float)


def paired_bootstrap(first: np.ndarray, second: np.ndarray, resamples: int = 10_000, seed: int = 0
                     ) -> tuple[float, float, float]:
    """Difference in accuracy (first - second) over the same notes, and its 95% percentile bootstrap interval.

    `first` and `second` are `[seed, note]` correctness; each note's accuracy is averaged over the arm's seeds,
    then notes are resampled with replacement, which keeps every note's pair of answers together.
    """
    per_note = first.mean(axis=0) - second.mean(axis=0)
    rng = np.random.default_rng(seed)
    resampled = per_note[rng.integers(0, per_note.size, size=(resamples, per_note.size))].mean(axis=1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    return float(per_note.mean()), float(low), float(high)


def verdict(first: str, second: str, low: float, high: float) -> str:
    """"ahead" only when the interval excludes 0."""
    if low > 0:
        return f"{first} is ahead"
    if high < 0:
        return f"{second} is ahead"
    return "no clear difference (the interval includes 0)"


def paired_comparisons(correct: dict[str, dict[str, np.ndarray]], rows: list[dict]) -> list[dict]:
    """Every pair of arms on each head: accuracy difference, bootstrap interval, the seeds' spread, verdict.

    `correct` maps arm -> head -> `[seed, note]` correctness on the same test notes.
    """
    spread = {row["init"]: row for row in rows}
    arms = list(correct)
    comparisons = []
    for index, first in enumerate(arms):
        for second in arms[index + 1:]:
            for head in HEADS:
                difference, low, high = paired_bootstrap(correct[first][head], correct[second][head])
                comparisons.append({
                    "first": first, "second": second, "head": head, "difference": difference, "low": low,
                    "high": high, "notes": int(correct[first][head].shape[1]),
                    "first_std": spread[first][head]["std"], "second_std": spread[second][head]["std"],
                    "verdict": verdict(first, second, low, high)})
    return comparisons


def comparison_lines(comparisons: list[dict]) -> list[str]:
    lines = ["| comparison | head | difference | 95% bootstrap interval | seeds' std (first / second) | verdict |",
             "|---|---|---|---|---|---|"]
    for c in comparisons:
        lines.append(f"| {c['first']} - {c['second']} | {HEAD_TITLES[c['head']]} | {100 * c['difference']:+.1f} "
                     f"points | [{100 * c['low']:+.1f}, {100 * c['high']:+.1f}] | {100 * c['first_std']:.1f} / "
                     f"{100 * c['second_std']:.1f} points | {c['verdict']} |")
    return lines


def codebook_table(scores: dict[str, dict]) -> str:
    lines = ["| model | pitch NMI | (labels shuffled) | family NMI | (labels shuffled) | codes used / size | "
             "code perplexity |", "|---|---|---|---|---|---|---|"]
    for label, s in scores.items():
        lines.append(f"| {label} | {s['pitch_nmi']:.3f} | {s['pitch_nmi_shuffled']:.3f} | {s['family_nmi']:.3f} | "
                     f"{s['family_nmi_shuffled']:.3f} | {s['codes_used']} / {s['codebook_size']} | "
                     f"{s['code_perplexity']:.1f} |")
    return "\n".join(lines)


def probe_table(report: dict) -> str:
    """Markdown of one `probe_results.json`: test accuracy (mean ± std over seeds) per layer, task and probe."""
    results = report["results"]
    protocol = report["protocol"]
    columns = [(task, probe) for task in ("pitch", "instrument") for probe in ("linear", "mlp")
               if any(e["task"] == task and e["probe"] == probe and e["layer"] != "weighted" for e in results)]
    best = {column: max((e["test_accuracy"] for e in results if (e["task"], e["probe"]) == column), default=None)
            for column in columns}
    titles = {"pitch": f"pitch ({protocol['pitch_classes']} classes)", "instrument": "instrument family"}

    def cell(entry: dict | None, column) -> str:
        if entry is None:
            return ""
        text = f"{entry['test_accuracy']:.3f} ± {entry['test_accuracy_std']:.3f}"
        if "test_chroma_accuracy" in entry:
            text += f" (chroma {entry['test_chroma_accuracy']:.3f})"
        return f"**{text}**" if column and entry["test_accuracy"] == best.get(column) else text

    lines = [f"# Layer-wise probes of {report['model']}", "",
             f"NSynth notes: {', '.join(f'{k} {v}' for k, v in protocol['notes'].items())}; "
             f"seeds {', '.join(map(str, protocol['seeds']))}; {protocol['selection']}. "
             "Test accuracy, mean ± sample std over seeds; the best of each column in bold.", "",
             "| layer | " + " | ".join(f"{titles[task]}, {probe}" for task, probe in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for layer in protocol["layers"]:
        found = {(e["task"], e["probe"]): e for e in results if e["layer"] == layer}
        lines.append(f"| {layer} | " + " | ".join(cell(found.get(column), column) for column in columns) + " |")
    for entry in (e for e in results if e["layer"] == "weighted"):
        weights = entry.get("layer_weights", [])
        heaviest = protocol["layers"][int(np.argmax(weights))] if weights else "-"
        lines.append(f"\nWeighted sum of layers + linear, {titles[entry['task']]}: {cell(entry, None)} "
                     f"(heaviest layer {heaviest})")
    return "\n".join(lines) + "\n"
