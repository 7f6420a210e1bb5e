"""Results tables (markdown), paired comparisons to a baseline, and the accuracy plot."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxrl_reason.evaluation.metrics import paired_bootstrap_ci

TABLE_COLUMNS = ("maj@1", "maj@K", "rerank@K", "pass@K", "samples")
PAIRED_METRICS = ("maj@1", "maj@K", "rerank@K", "pass@K")


def paired_differences(
    row: Mapping[str, Any],
    baseline: Mapping[str, Any],
    metrics: Sequence[str] = PAIRED_METRICS,
    num_resamples: int = 1000,
) -> dict[str, dict[str, Any]]:
    """Per metric both rows' `per_question` results hold: `{"diff", "ci"}` of row minus
    baseline, from `paired_bootstrap_ci` (the caller checks they are the same questions)."""
    ours, theirs = row["per_question"], baseline["per_question"]
    return {
        m: dict(zip(("diff", "ci"), paired_bootstrap_ci(ours[m], theirs[m], num_resamples)))
        for m in metrics
        if m in ours and m in theirs
    }


def compare_to_baseline(
    rows: Sequence[Mapping[str, Any]], baseline: str = "SFT", num_resamples: int = 1000
) -> list[dict[str, Any]]:
    """`rows` with each non-baseline row's paired difference to the `baseline` row added.

    A row gains `vs_<baseline>`: per metric, `{"diff", "ci"}` (percentage points as
    fractions), from `paired_bootstrap_ci` over the questions both rows were evaluated on
    (their `per_question` ids must be the same list). Rows without per-question results,
    or on other questions, get none. The input rows are not modified.
    """
    base = next((r for r in rows if r["method"] == baseline), None)
    out = []
    for row in rows:
        row = dict(row)
        if base is not None and row is not base and row["method"] != baseline:
            ours, theirs = row.get("per_question"), base.get("per_question")
            if ours and theirs and ours["id"] == theirs["id"]:
                row[f"vs_{baseline}"] = paired_differences(row, base, num_resamples=num_resamples)
        out.append(row)
    return out


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


def _paired_cell(row: Mapping[str, Any], key: str, metric: str) -> str:
    entry = row.get(key, {}).get(metric)
    if entry is None:
        return "-"
    (low, high), diff = entry["ci"], entry["diff"]
    return f"{100 * diff:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


def markdown_table(rows: Sequence[Mapping[str, Any]], k: int, baseline: str | None = "SFT") -> str:
    """A paper-style table: one row per method, accuracies in percent with 95% CIs, and
    (when `compare_to_baseline` added them) each method's paired maj@1 and pass@K
    differences to `baseline`, in points with paired 95% CIs."""
    key = f"vs_{baseline}"
    # k = 0 (greedy only): no sampled columns, rather than maj@0 ... full of dashes.
    columns = [c for c in TABLE_COLUMNS if k > 0 or "K" not in c]
    paired = [m for m in ("maj@1", "pass@K") if any(m in r.get(key, {}) for r in rows)]
    paired = [m for m in paired if m in columns]
    header = ["method"] + [
        c.replace("K", str(k)) if c != "samples" else "samples drawn" for c in columns
    ]
    header += [f"Δ{m.replace('K', str(k))} vs {baseline} (paired)" for m in paired]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["method"], *(_cell(row, c) for c in columns)]
        cells += [_paired_cell(row, key, m) for m in paired]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_note(k: int) -> str:
    """What a table's columns measure: printed under every results table."""
    if k == 0:
        return "maj@1 is one greedy decode per question. [a, b]: 95% bootstrap interval."
    return (
        f"maj@1 is one greedy decode per question; maj@{k}, rerank@{k} and pass@{k} come "
        f"from {k} sampled solutions per question. [a, b]: 95% bootstrap interval."
    )


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
