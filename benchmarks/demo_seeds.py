"""The demo over several seeds: is EI's gain over SFT real, seed after seed?

Runs `jaxrl-reason demo` (the built-in default scale) once per seed, into
`<root>/seed_<s>` (an unfinished run resumes), and prints one line per seed: SFT's and
each method's maj@1 and pass@K, each method's paired difference to SFT with its 95%
paired bootstrap interval (`evaluation.report.compare_to_baseline`), and the wall time.
`--split val` reports on the validation questions instead, which is how the demo's
settings are chosen; the test split is read once per reported run.

`--control` adds, per seed, the equal-compute control of docs/demo_study.md: EI's
fine-tuning (SFT's solutions, the same steps, learning rate and start) without EI's
samples (one question drawn), from the same SFT checkpoint, into `seed_<s>_control`; and
EI's paired difference to it.

    .venv/bin/python -m benchmarks.demo_seeds --seeds 0,1,2 --root /tmp/seeds
    .venv/bin/python -m benchmarks.demo_seeds --seeds 0 --split val --root /tmp/val
    .venv/bin/python -m benchmarks.demo_seeds --seeds 0,1,2 --root /tmp/seeds --control
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxrl_reason.demo import SCALES, run_demo  # noqa: E402
from jaxrl_reason.evaluation.report import paired_differences  # noqa: E402


def run_control(root: Path, seed: int, split: str) -> dict:
    """EI's fine-tuning without EI's samples, from seed `seed`'s SFT checkpoint; returns
    the control's row."""
    s = SCALES["default"]
    control = dataclasses.replace(s, ei=dataclasses.replace(s.ei, questions_per_round=1))
    work, demo = root / f"seed_{seed}_control", root / f"seed_{seed}"
    if not work.exists():  # the same SFT: its checkpoint and tokenizer
        work.mkdir(parents=True)
        shutil.copytree(demo / "sft", work / "sft")
        for name in ("tokenizer.model", "sft_eval.json"):  # SFT's row is the demo's
            shutil.copy(demo / name, work / name)
    rows = run_demo(work, scale=control, seed=seed, show_progress=False, eval_split=split)
    return next(r for r in rows if r["method"] == "EI")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _paired(row: dict, metric: str, versus: str = "SFT") -> str:
    entry = row.get(f"vs_{versus}", {}).get(metric)
    if entry is None:
        return "-"
    low, high = entry["ci"]
    return f"{100 * entry['diff']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--split", default="test", choices=("test", "val"))
    p.add_argument("--algorithms", default="sft,ei")
    p.add_argument("--root", required=True, help="one workdir per seed is made under it")
    p.add_argument("--control", action="store_true", help="add the equal-compute control")
    args = p.parse_args(argv)
    lines = [
        "| seed | method | maj@1 | pass@K | Δmaj@1 vs SFT (paired 95% CI) | ΔpassK vs SFT "
        "| Δmaj@1 vs control | ΔpassK vs control | questions | minutes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    summary = []
    for seed in (int(s) for s in args.seeds.split(",")):
        start = time.perf_counter()
        rows = run_demo(
            Path(args.root) / f"seed_{seed}",
            algorithms=tuple(args.algorithms.split(",")),
            seed=seed,
            show_progress=False,
            eval_split=args.split,
        )
        minutes = (time.perf_counter() - start) / 60
        if args.control:
            ctrl = run_control(Path(args.root), seed, args.split)
            ei = next(r for r in rows if r["method"] == "EI")
            rows = [*rows, {**ctrl, "method": "control (no EI samples)"}]
            ei["vs_control"] = paired_differences(ei, ctrl, ("maj@1", "pass@K"))
        for row in rows:
            lines.append(
                f"| {seed} | {row['method']} | {_pct(row['maj@1'])} | {_pct(row['pass@K'])} "
                f"| {_paired(row, 'maj@1')} | {_paired(row, 'pass@K')} "
                f"| {_paired(row, 'maj@1', 'control')} | {_paired(row, 'pass@K', 'control')} "
                f"| {row['num_questions']} | {minutes:.1f} |"
            )
        summary.append(
            {
                "seed": seed,
                "minutes": minutes,
                "rows": [{k: v for k, v in r.items() if k != "per_question"} for r in rows],
            }
        )
    print(f"\nsplit: {args.split}\n" + "\n".join(lines))
    (Path(args.root) / f"seeds_{args.split}.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
