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
