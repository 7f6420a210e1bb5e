"""`jaxrl-reason study`: the paper's five findings on the built-in task, with a verdict each.

One study, in one workdir, at a demo scale (`demo.SCALES`):

  main/          SFT, then every RL method from it (EI, PPO with each reward, RCRL, and GRPO
                 beside the paper's methods) at the same number of samples drawn (PPO's and
                 GRPO's iterations are set to EI's budget), and the ORM the ORM reward
                 needs; every row has paired CIs against SFT and EI
  sft_<E>/       SFT alone for each of `sft_epochs` epochs (the same tokenizer as main/)
  probe.json     exploration: K samples of each final policy on training questions that
                 SFT never saw solved, against the SFT policy's (`evaluation.exploration`)
  report.md      the tables, the figures below and a verdict per finding, with its rule
  fig_*.png      (1) maj@1 and pass@K against SFT epochs and against RL samples, (2) maj@1
                 against samples drawn per method, (3) exploration, (4) pass@k, k = 1..K

The findings (paper-notes §9): (1) EI is best or tied on most metrics, PPO and RCRL close;
(2) RL raises maj@1 and pass@K together; (3) more SFT epochs raise maj@1 and lower pass@K;
(4) EI's and PPO's sample complexity are comparable; (5) RL explores little beyond what
SFT already solves. Each verdict is "reproduced", "not reproduced" (the data do not show
it) or "refuted" (they show the opposite), decided by the rule printed beside it from
paired 95% bootstrap intervals. Every phase resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxrl_reason.algorithms.registry import build_algorithm
from jaxrl_reason.demo import DemoScale, experiment_settings, scale_of
from jaxrl_reason.evaluation.exploration import exploration_stats
from jaxrl_reason.evaluation.metrics import pass_at_k_unbiased
from jaxrl_reason.evaluation.report import (
    compare_to_baseline,
    markdown_table,
    paired_differences,
)
from jaxrl_reason.experiment import load_run, load_task_data, train_experiment
from jaxrl_reason.parallel import on_main_process
from jaxrl_reason.run_files import read_json, write_json
from jaxrl_reason.sampling.rollouts import sample_rollouts

ALGORITHMS = ("sft", "ei", "ppo:sparse", "ppo:dense", "ppo:orm", "rcrl", "grpo")
SFT_EPOCHS = {"default": (1.0, 2.0, 4.0), "smoke": (0.5, 1.0)}  # the paper: SFT2 vs SFT4
PROBE = {"default": (300, 8), "smoke": (8, 2)}  # (questions, samples per question)
METRICS = ("maj@1", "maj@K", "rerank@K", "pass@K")


def equal_budget(s: DemoScale) -> DemoScale:
    """`s` with PPO's and the GRPO family's iterations set so that each draws (at least)
    EI's number of samples (DAPO's dynamic sampling may draw more, and says so)."""
    ei = s.ei.num_rounds * min(s.ei.questions_per_round or s.num_train, s.num_train)
    budget = ei * s.ei.num_samples
    iterations = lambda cfg: math.ceil(budget / (cfg.prompts_per_iteration * cfg.num_samples))
    return dataclasses.replace(
        s,
        ppo=dataclasses.replace(s.ppo, num_iterations=iterations(s.ppo)),
        grpo=dataclasses.replace(s.grpo, num_iterations=iterations(s.grpo)),
    )


def run_study(
    workdir: str | Path,
    scale: str = "default",
    seed: int = 0,
    eval_split: str = "test",
    show_progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the study in `workdir`; write report.md and the figures."""
    workdir = Path(workdir)
    s = equal_budget(scale_of(scale))
    settings = experiment_settings(s, seed, eval_split)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    main = workdir / "main"
    rows = train_experiment(main, algorithms=ALGORITHMS, show_progress=show_progress, **settings)
    rows = compare_to_baseline(rows, baseline="EI")  # vs_SFT is already there
    timings["main"] = time.perf_counter() - start

    epochs_rows = []
    tokenizer = str(main / "tokenizer.model")  # RCRL's return tokens in it, as in main
    for epochs in SFT_EPOCHS[scale]:
        start = time.perf_counter()
        cfg = dict(settings)
        cfg["configs"] = {**cfg["configs"], "sft": dataclasses.replace(s.sft, num_epochs=epochs)}
        cfg["model"] = dataclasses.replace(cfg["model"], tokenizer_path=tokenizer)
        (row,) = train_experiment(
            workdir / f"sft_{epochs:g}", algorithms=("sft",), show_progress=show_progress, **cfg
        )
        epochs_rows.append({**row, "epochs": epochs})
        timings[f"sft_{epochs:g}"] = time.perf_counter() - start

    start = time.perf_counter()
    probe = exploration_probe(workdir, s, seed, *PROBE[scale])
    timings["probe"] = time.perf_counter() - start

    report = write_report(workdir, rows, epochs_rows, probe, s, timings)
    if report is not None:  # (None on processes other than 0, which write nothing)
        print(report)
    return {"rows": rows, "sft_epochs": epochs_rows, "probe": probe}


def exploration_probe(
    workdir: Path, s: DemoScale, seed: int, num_questions: int, num_samples: int
) -> dict[str, Any]:
    """K samples from the SFT policy and from each method's final policy on training
    questions SFT never saw solved (RL's answer-only questions), and their exploration
    statistics against SFT's. Cached in workdir/probe.json."""
    path = workdir / "probe.json"
    if path.exists():
        return read_json(path, "exploration probe")
    main = workdir / "main"
    run = read_json(main / "run.json", "run file")
    data = load_task_data(experiment_settings(s, seed)["task"], seed)
    questions = data.train[len(data.sft) :][:num_questions] or data.train[:num_questions]
    titles = {"sft": "SFT"}
    for name in ALGORITHMS[1:]:
        algo = build_algorithm(name, experiment_settings(s, seed)["configs"])
        titles[algo.phase] = algo.title
    samples: dict[str, list[list[str]]] = {}
    for phase, entry in run["phases"].items():
        if phase == "orm":
            continue
        policy, params, _ = load_run(main, entry["policy_step"])
        ev = s.evaluation
        cfg = policy.sampling_config(num_samples, ev.temperature, ev.max_new_tokens)
        key = jax.random.fold_in(jax.random.key(seed), 7)  # the same key for every policy
        title = titles.get(phase, phase)
        samples[title] = sample_rollouts(
            policy.text_sampler, policy.prompt_format, params, questions, cfg, key
        ).grouped()
    base = samples.pop("SFT")
    stats = {m: exploration_stats(questions, base, after) for m, after in samples.items()}
    probe = {
        "num_questions": len(questions),
        "num_samples": num_samples,
        "sft_solved": exploration_stats(questions, base, base)["solved_before"],
        "methods": stats,
        "operations": "same solution = same sequence of calculator operations",
    }
    on_main_process(write_json)(path, probe)
    return probe


# ---------------------------------------------------------------------------- verdicts


def _paired(row: Mapping[str, Any], versus: str, metric: str) -> dict[str, Any] | None:
    return row.get(f"vs_{versus}", {}).get(metric)


def _sign(entry: Mapping[str, Any] | None) -> int:
    """+1 / -1 when the paired interval excludes 0 above / below; 0 otherwise."""
    if entry is None:
        return 0
    low, high = entry["ci"]
    return 1 if low > 0 else -1 if high < 0 else 0


def verdicts(
    rows: Sequence[Mapping[str, Any]],
    epochs_rows: Sequence[Mapping[str, Any]],
    probe: Mapping[str, Any],
) -> list[dict[str, str]]:
    """One verdict per finding, each with the rule that decided it and the numbers."""
    by = {r["method"]: r for r in rows}
    # The paper's methods: GRPO (not in the paper) is in the table, beside them.
    others = [r for r in rows if r["method"].startswith(("PPO", "RCRL"))]
    out = []

    # (1) EI best or tied: on a metric, no other method is significantly above EI.
    metrics = [m for m in METRICS if all(m in r.get("per_question", {}) for r in rows)]
    best = [m for m in metrics if all(_sign(_paired(r, "EI", m)) <= 0 for r in others)]
    beaten = [m for m in metrics if any(_sign(_paired(r, "EI", m)) > 0 for r in others)]
    ei_vs_sft = [m for m in metrics if _sign(_paired(by.get("EI", {}), "SFT", m)) < 0]
    v1 = (
        "reproduced"
        if len(best) * 2 > len(metrics) and not ei_vs_sft
        else "refuted"
        if len(beaten) * 2 > len(metrics)
        else "not reproduced"
    )
    out.append(
        {
            "finding": "1. EI is best or tied on most metrics; PPO and RCRL are close",
            "verdict": v1,
            "rule": "reproduced: no method is significantly above EI (paired CI) on most "
            "metrics and EI is not below SFT on any; refuted: some method is above EI on most",
            "numbers": f"EI best or tied on {best} of {metrics}; beaten on {beaten}",
        }
    )

    # (2) RL raises maj@1 and pass@K together (EI, the paper's strongest method).
    ei = by.get("EI", {})
    s_maj, s_pass = _sign(_paired(ei, "SFT", "maj@1")), _sign(_paired(ei, "SFT", "pass@K"))
    v2 = (
        "reproduced"
        if s_maj > 0 and s_pass >= 0
        else "refuted"
        if s_maj > 0 > s_pass
        else "not reproduced"
    )
    out.append(
        {
            "finding": "2. RL raises maj@1 and pass@K together",
            "verdict": v2,
            "rule": "reproduced: EI - SFT maj@1 significantly > 0 and pass@K not "
            "significantly < 0; refuted: maj@1 up while pass@K significantly down",
            "numbers": _diff_text(ei, "SFT", ("maj@1", "pass@K")),
        }
    )

    # (3) More SFT epochs: maj@1 up, pass@K down (fewest vs most epochs, paired).
    if len(epochs_rows) >= 2:
        lo, hi = epochs_rows[0], epochs_rows[-1]
        d = paired_differences(hi, lo, ("maj@1", "pass@K"))
        s3m, s3p = _sign(d["maj@1"]), _sign(d["pass@K"])
        v3 = (
            "reproduced"
            if s3m > 0 and s3p < 0
            else "refuted"
            if s3m < 0 or s3p > 0
            else ("not reproduced")
        )
        numbers = f"{lo['epochs']:g} -> {hi['epochs']:g} epochs: " + ", ".join(
            f"{m} {_pts(e)}" for m, e in d.items()
        )
        out.append(
            {
                "finding": "3. More SFT epochs raise maj@1 and lower pass@K",
                "verdict": v3,
                "rule": "reproduced: most - fewest epochs has maj@1 significantly > 0 and "
                "pass@K significantly < 0; refuted: either significantly the other way",
                "numbers": numbers,
            }
        )

    # (4) Comparable sample complexity: at the same samples drawn, EI vs PPO (sparse).
    ppo = by.get("PPO sparse")
    if ppo is not None and ei:
        entry = _paired(ppo, "EI", "maj@1")
        v4 = "reproduced" if _sign(entry) == 0 else "not reproduced"
        out.append(
            {
                "finding": "4. EI's and PPO's sample complexity are comparable",
                "verdict": v4,
                "rule": "reproduced: at the same number of samples drawn "
                f"({ei['samples']:,} vs {ppo['samples']:,}), PPO sparse - EI maj@1 has a "
                "paired CI containing 0",
                "numbers": f"PPO sparse - EI maj@1 {_pts(entry)}",
            }
        )

    # (5) Little exploration: EI solves few probe questions that SFT never solved.
    stats = probe.get("methods", {}).get("EI")
    if stats:
        n, unsolved = probe["num_questions"], 1 - probe["sft_solved"]
        newly = stats["newly_solved"] / max(1, round(unsolved * n))
        v5 = "reproduced" if newly <= 0.1 else "not reproduced"
        out.append(
            {
                "finding": "5. RL explores little beyond what SFT solves",
                "verdict": v5,
                "rule": "reproduced: EI's policy solves (in K samples) at most 10% of the "
                "probe questions the SFT policy never solved",
                "numbers": (
                    f"{stats['newly_solved']} of {round(unsolved * n)} unsolved questions "
                    f"newly solved ({100 * newly:.0f}%), {stats['lost']} lost; "
                    f"{100 * stats['novel_share']:.0f}% of EI's distinct correct solutions "
                    "are operation sequences SFT never produced"
                ),
            }
        )
    return out


def _pts(entry: Mapping[str, Any] | None) -> str:
    if entry is None:
        return "-"
    low, high = entry["ci"]
    return f"{100 * entry['diff']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] points"


def _diff_text(row: Mapping[str, Any], versus: str, metrics: Sequence[str]) -> str:
    return ", ".join(f"{m} {_pts(_paired(row, versus, m))}" for m in metrics)


# ----------------------------------------------------------------------------- report


def pass_at_k_curve(row: Mapping[str, Any], k_max: int) -> dict[int, float]:
    """Unbiased pass@k (Chen et al.) for k = 1..k_max from each question's correct count."""
    counts = row["per_question"]["num_correct"]
    return {
        k: float(np.mean([pass_at_k_unbiased(k_max, c, k) for c in counts]))
        for k in range(1, k_max + 1)
    }


@on_main_process
def write_report(
    workdir: Path,
    rows: Sequence[Mapping[str, Any]],
    epochs_rows: Sequence[Mapping[str, Any]],
    probe: Mapping[str, Any],
    s: DemoScale,
    timings: Mapping[str, float],
) -> str:
    """report.md, report.json and the four figures (by process 0; returns the markdown
    there)."""
    k = s.evaluation.num_samples
    found = verdicts(rows, epochs_rows, probe)
    figures = _figures(workdir, rows, epochs_rows, probe, k)
    lines = [
        f"# Study: the paper's findings on arith ({rows[0]['num_questions']} questions, K = {k})",
        "",
        "## Verdicts",
        "",
        "| finding | verdict | numbers | rule |",
        "|---|---|---|---|",
        *(f"| {f['finding']} | **{f['verdict']}** | {f['numbers']} | {f['rule']} |" for f in found),
        "",
        "## Every method at the same samples drawn (paired CIs against SFT)",
        "",
        markdown_table(rows, k),
        "",
        "## The ORM against a random pick and majority vote",
        "",
        "| method | ORM AUC | rerank@K | random@K | maj@K |",
        "|---|---|---|---|---|",
        *(
            f"| {r['method']} | {r.get('orm_auc', float('nan')):.3f} | "
            f"{100 * r.get('rerank@K', float('nan')):.1f} | "
            f"{100 * r.get('random@K', float('nan')):.1f} | {100 * r['maj@K']:.1f} |"
            for r in rows
        ),
        "",
        "## SFT epochs",
        "",
        "| epochs | maj@1 | pass@K |",
        "|---|---|---|",
        *(
            f"| {r['epochs']:g} | {100 * r['maj@1']:.1f} | {100 * r['pass@K']:.1f} |"
            for r in epochs_rows
        ),
        "",
        f"## Exploration ({probe.get('num_questions')} answer-only training questions, "
        f"K = {probe.get('num_samples')}; {probe.get('operations')})",
        "",
        "| method | solved by SFT | solved after | newly solved | lost | distinct correct "
        "(SFT -> after) | novel share |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {m} | {100 * e['solved_before']:.1f} | {100 * e['solved_after']:.1f} | "
            f"{e['newly_solved']} | {e['lost']} | {e['distinct_correct_before']:.2f} -> "
            f"{e['distinct_correct_after']:.2f} | {100 * e['novel_share']:.1f}% |"
            for m, e in probe.get("methods", {}).items()
        ),
        "",
        "## Figures",
        "",
        *(f"![{name}]({name})" for name in figures),
        "",
        "## Wall time (s)",
        "",
        ", ".join(f"{name} {t:.0f}" for name, t in timings.items()),
    ]
    text = "\n".join(lines) + "\n"
    (workdir / "report.md").write_text(text)
    slim = [{k2: v for k2, v in r.items() if k2 != "per_question"} for r in rows]
    write_json(
        workdir / "report.json",
        {"verdicts": found, "rows": slim, "probe": probe, "timings": dict(timings)},
    )
    return text


def _figures(
    workdir: Path,
    rows: Sequence[Mapping[str, Any]],
    epochs_rows: Sequence[Mapping[str, Any]],
    probe: Mapping[str, Any],
    k: int,
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxrl_reason.evaluation.report import plot_accuracy_vs_samples

    names = []
    results = read_json(workdir / "main" / "results.json", "results file")

    # (1) the SFT trade-off and RL, on one figure: epochs on the left, RL samples on the right.
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=120, sharey=True)
    ep = [r["epochs"] for r in epochs_rows]
    for metric, style in (("maj@1", "o-"), ("pass@K", "s--")):
        left.plot(
            ep, [100 * r[metric] for r in epochs_rows], style, label=metric.replace("K", str(k))
        )
    left.set_xlabel("SFT epochs")
    left.set_ylabel("% of questions")
    left.set_title("SFT: more epochs")
    left.legend()
    sft = next(r for r in rows if r["method"] == "SFT")
    for i, r in enumerate(x for x in rows if x["method"] != "SFT"):
        for metric, style in (("maj@1", "o-"), ("pass@K", "s--")):
            right.plot(
                [0, r["samples"]],
                [100 * sft[metric], 100 * r[metric]],
                style,
                color=f"C{i}",
                label=f"{r['method']} {metric.replace('K', str(k))}",
            )
    right.set_xlabel("RL samples drawn (from the SFT model)")
    right.set_title("RL: more samples")
    right.legend(fontsize=7)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(workdir / "fig_tradeoff.png")
    plt.close(fig)
    names.append("fig_tradeoff.png")

    # (2) maj@1 against samples drawn, per method (the per-round evaluations).
    curves = {m: [tuple(p) for p in pts] for m, pts in results["curves"].items()}
    plot_accuracy_vs_samples(curves, workdir / "fig_samples.png")
    names.append("fig_samples.png")

    # (3) exploration on the probe questions.
    methods = list(probe.get("methods", {}))
    if methods:
        fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
        x = np.arange(len(methods))
        stats = [probe["methods"][m] for m in methods]
        ax.bar(x - 0.3, [100 * probe["sft_solved"]] * len(methods), 0.3, label="solved by SFT")
        ax.bar(x, [100 * e["solved_after"] for e in stats], 0.3, label="solved after RL")
        ax.bar(x + 0.3, [100 * e["novel_share"] for e in stats], 0.3, label="novel solutions")
        ax.set_xticks(x, methods, fontsize=8)
        ax.set_ylabel(f"% (K = {probe['num_samples']})")
        ax.set_title("exploration on answer-only training questions")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        fig.savefig(workdir / "fig_exploration.png")
        plt.close(fig)
        names.append("fig_exploration.png")

    # (4) pass@k for k = 1..K (unbiased) before (SFT) and after RL.
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for r in rows:
        if "num_correct" in (r.get("per_question") or {}):
            curve = pass_at_k_curve(r, k)
            ax.plot(list(curve), [100 * v for v in curve.values()], "o-", label=r["method"])
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k (%)")
    ax.set_title("pass@k (unbiased) on held-out questions")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(workdir / "fig_pass_at_k.png")
    plt.close(fig)
    names.append("fig_pass_at_k.png")
    return names
