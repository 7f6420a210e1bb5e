"""`benchmarks/device_check.py`'s report: the JSON as written, the markdown made from it,
and the pass that fails the step a dead process was in."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

JSON_NAME, MD_NAME = "device_check.json", "device_check.md"


def record(path: Path, report: dict[str, Any]) -> None:
    """Rewrite the JSON and the markdown (atomically: a reader never sees half a file)."""
    plain = lambda x: x.item() if hasattr(x, "item") else str(x)  # numpy scalars and such
    data = json.dumps(report, indent=2, default=plain)
    for name, text in ((JSON_NAME, data), (MD_NAME, markdown(report))):
        tmp = path / f".{name}.tmp"
        tmp.write_text(text + "\n")
        tmp.replace(path / name)


def _gb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e9:.2f}"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.3g}M"


def _note(entry: dict[str, Any]) -> str:
    text = entry.get("reason") or entry.get("error") or ""
    if entry.get("result") and "detail" in entry["result"]:  # the install step
        text = entry["result"]["detail"]
    return text.replace("|", "/").replace("\n", " ")[:200]


def markdown(report: dict[str, Any]) -> str:
    """The report as a header and tables (one per kind of step that ran)."""
    steps = report["steps"]
    env = steps.get("environment", {}).get("result") or {}
    smoke = report.get("mode") == "cpu-smoke"
    lines = [
        f"# Device check ({report.get('mode', '?')}), {report.get('started', '?')}",
        "",
        f"{env.get('device_kind', '?')} x{env.get('device_count', '?')} "
        f"({env.get('backend', '?')}), jax {env.get('jax', '?')}, commit "
        f"{(env.get('git_commit') or '?')[:10]}; {report.get('wall_s', 0):.0f} s wall"
        + (f", exit code {report['exit_code']}" if report.get("exit_code") else ""),
    ]
    if smoke:
        lines += ["", "**CPU smoke: every size shrunk to prove the script runs; not performance.**"]
    peak = env.get("peak_flops") or {}
    if peak.get("value"):
        lines += ["", f"MFU against {peak['value'] / 1e12:.0f} TFLOP/s ({peak['source']})."]
    elif peak:
        lines += ["", f"MFU not reported: {peak['reason']}."]
    lines += [
        "",
        "| step | status | seconds | peak memory so far (GB) | note |",
        "|---|---|---|---|---|",
    ]
    for name, e in steps.items():
        peak_bytes = (e.get("memory") or {}).get("peak_bytes_in_use")
        lines.append(
            f"| {name} | {e['status']} | {e.get('seconds', 0):.1f} | {_gb(peak_bytes)} "
            f"| {_note(e)} |"
        )
    train = [e["result"] for n, e in steps.items() if n.startswith("train_") and "result" in e]
    if train:
        lines += [
            "",
            "| config | params | batch x seq | remat | compile (s) | step (ms) | tokens/s "
            "| model TFLOP/s | MFU | XLA's step plan (GB) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in train:
            mfu = "-" if r["mfu"] is None else f"{r['mfu']:.1%}"
            lines.append(
                f"| {r['preset']} ({r['dtype']}, {r['param_dtype']} weights) "
                f"| {_count(r['params'])} | {r['batch']} x {r['seq_len']} | {r['remat']} "
                f"| {r['compile_s']:.1f} | {r['step_s'] * 1e3:.0f} | {r['tokens_per_s']:,.0f} "
                f"| {r['model_flops'] / 1e12:.3g} | {mfu} | {_gb(r.get('step_bytes'))} |"
            )
    sampling = {
        n: steps[n]["result"] for n in ("sampler", "transformers") if "result" in steps.get(n, {})
    }
    if sampling:
        w = next(iter(sampling.values()))["workload"]
        lines += [
            "",
            f"{w['name']}: {w['prompts']} prompts x K={w['samples']}, {w['prompt_len']} prompt "
            f"tokens, {w['new_tokens']} new tokens, temperature {w['temperature']}, "
            f"{next(iter(sampling.values()))['model']} shape in bf16, random weights.",
            "",
            "| sampler | tokens/s | compile (s) | median call (s) |",
            "|---|---|---|---|",
        ]
        for name, r in sampling.items():
            label = "ours" if name == "sampler" else f"transformers {r['transformers']} generate"
            lines.append(
                f"| {label} | {r['tokens_per_s']:,.0f} | {r['compile_s']:.1f} "
                f"| {r['median_s']:.2f} |"
            )
        if "ours_over_transformers" in sampling.get("sampler", {}):
            lines += [
                "",
                f"ours / transformers: {sampling['sampler']['ours_over_transformers']:.2f}x",
            ]
    demo = steps.get("demo", {}).get("result")
    if demo:
        ei = demo["ei_round"]
        lines += [
            "",
            f"Demo: {demo['sft_steps']} SFT steps (last loss {demo['sft_last_loss']:.3f}), one EI "
            f"round ({ei.get('samples_drawn')} samples, {ei.get('new_solutions')} new solutions); "
            f"{demo['eval_questions']} held-out questions, K={demo['eval_samples']}.",
            "",
            "| method | maj@1 | maj@K | pass@K | samples |",
            "|---|---|---|---|---|",
        ]
        for r in demo["rows"]:
            lines.append(
                f"| {r['method']} | {r['maj@1']:.1%} | {r['maj@K']:.1%} | {r['pass@K']:.1%} "
                f"| {r['samples']} |"
            )
    return "\n".join(lines)


def finalize(out: Path, exit_code: int) -> None:
    """After the check's process died (time limit, a crash): mark the step it was in as
    failed and rewrite both files; write a report saying so if it wrote none."""
    path = out / JSON_NAME
    report = json.loads(path.read_text()) if path.exists() else {"mode": "?", "steps": {}}
    reason = {124: "the time limit (--time-limit-s) ended it", 137: "it was killed (SIGKILL)"}
    cause = reason.get(exit_code, "a crash")
    why = f"the process ended in this step (exit code {exit_code}: {cause})"
    for entry in report["steps"].values():
        if entry["status"] == "running":
            entry |= {"status": "failed", "error": why}
    if not report["steps"]:
        report["steps"]["device_check"] = {"status": "failed", "error": why}
    report["exit_code"] = exit_code
    if "started_at" in report:
        report["wall_s"] = time.time() - report["started_at"]
    record(out, report)
