"""Results tables (markdown) and the accuracy-against-samples plot."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TABLE_COLUMNS = ("maj@1", "maj@K", "rerank@K", "pass@K", "samples")


def _cell(row: Mapping[str, Any], column: str) -> str:
    value = row.get(column)
    if value is None:
        return "-"
    if column == "samples":
        return f"{int(value):,}"
    ci = row.get(f"{column}_ci")
    text = f"{100 * value:.1f}"
    if ci is not None:
        text += f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
    return text


def markdown_table(rows: Sequence[Mapping[str, Any]], k: int) -> str:
    """A paper-style table: one row per method, accuracies in percent with 95% CIs."""
    header = ["method"] + [
        c.replace("K", str(k)) if c != "samples" else "samples drawn" for c in TABLE_COLUMNS
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append(
            "| " + " | ".join([row["method"]] + [_cell(row, c) for c in TABLE_COLUMNS]) + " |"
        )
    return "\n".join(lines)


def plot_accuracy_vs_samples(
    curves: Mapping[str, Sequence[tuple[int, float]]],
    path: str | os.PathLike,
    metric: str = "maj@1",
) -> None:
    """One line per method: `metric` (0..1) against the number of samples drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    top = 0.0
    for i, (method, points) in enumerate(curves.items()):
        if not points:
            continue
        xs, ys = zip(*points)
        top = max(top, *ys)
        if len(points) == 1:  # a method that draws no samples (SFT): one point, on top
            ax.scatter(
                xs, [100 * y for y in ys], marker="*", s=180, zorder=3, label=method, color=f"C{i}"
            )
        else:
            ax.plot(xs, [100 * y for y in ys], marker="o", label=method, color=f"C{i}")
    # From 0, so that a small gap between methods is not drawn as a large one.
    ax.set_ylim(0, min(100, 100 * top * 1.25 + 1))
    ax.set_xlabel("samples drawn from the policy")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{metric} on held-out questions against samples drawn")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = Path(str(path) + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
