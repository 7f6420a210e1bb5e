"""The one-command accelerator check (issue #18): MFU, sampler speed, memory, the demo path.

Steps, in order, each recorded as ok / skipped (with the reason) / failed (with the error):
`install` (what the shell script did), `environment`; `transformers` (`transformers`
generate on a GPU-sized W2 of `benchmarks.sampler`, random weights, in a child process
that has the GPU to itself); `train_<preset>` (`benchmarks.train_throughput`'s jitted bf16
step of the first training config: compile time, tokens/s, MFU against the device's peak
bf16 FLOP/s); `sampler` (ours on the same workload and architecture); `demo` (a fixed
number of SFT steps, then one EI round, `jaxrl_reason.demo.run_demo`); then the other
training configs (the 3B), time-budgeted: each runs only if its estimate (the first one's
time, scaled by the parameter count) fits what is left of `--budget-s`.
After every step the JSON (`device_check.json`) is rewritten, so a crash
leaves the steps so far and the one it died in; `device_check.md` is the same as tables.
Peak memory is `jax.Device.memory_stats()["peak_bytes_in_use"]`, the process's peak so far
after each step (XLA has no reset), and, per training config, the compiled step's own plan.

    bash benchmarks/device_check.sh --out DIR             # what to run; it calls this
    python -m benchmarks.device_check --out DIR --cpu-smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.device_report import MD_NAME, finalize, record

# JAX otherwise takes 75% of the GPU at start-up and torch (the `transformers` step) would
# get the rest; set before jax is first imported.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

REPO = Path(__file__).resolve().parents[1]

# Dense bf16 peak FLOP/s (1e12), by a substring of `jax.Device.device_kind`; first match.
PEAK_BF16_TFLOPS = (
    ("H100", 989.0),  # SXM; a PCIe H100 is lower: pass --peak-tflops
    ("H200", 989.0),
    ("A100", 312.0),
    ("TPU v4", 275.0),
    ("TPU v5 lite", 197.0),  # v5e's device_kind
    ("TPU v5e", 197.0),
    ("TPU v5p", 459.0),
    ("TPU v5", 459.0),  # v5p's device_kind
)


class Skipped(Exception):
    """A step that cannot run here; its message is the recorded reason."""


@dataclasses.dataclass(frozen=True)
class TrainRun:
    preset: str
    batch: int
    remat: bool
    budgeted: bool  # run only if its estimated time fits the time left


@dataclasses.dataclass(frozen=True)
class Sizes:
    train: tuple[TrainRun, ...]
    seq_len: int
    steps: int
    warmup: int
    sampler_preset: str
    workload: dict[str, Any]  # `benchmarks.sampler.Workload` fields
    repeats: int
    demo_base: str  # a `jaxrl_reason.demo.SCALES` name, shrunk by `demo_scale`
    sft_steps: int
    ei_questions: int
    eval_questions: int
    budget_s: float


GPU = Sizes(
    # remat: without it the 1B step's activations (128k-vocab logits, attention
    # probabilities) need ~113 GB at batch 8 by XLA's plan, ~56 GB with it at batch 16.
    train=(TrainRun("llama3_2_1b", 16, True, False), TrainRun("llama3_2_3b", 8, True, True)),
    seq_len=1024,
    steps=10,
    warmup=2,
    sampler_preset="llama3_2_1b",
    workload=dict(
        name="W2 GPU", prompts=64, prompt_len=64, samples=16, new_tokens=512, temperature=0.7
    ),
    repeats=2,
    demo_base="default",
    sft_steps=20,
    ei_questions=256,
    eval_questions=64,
    budget_s=450.0,
)
CPU_SMOKE = Sizes(
    train=(TrainRun("tiny", 2, False, False), TrainRun("demo_smoke", 2, True, True)),
    seq_len=64,
    steps=2,
    warmup=1,
    sampler_preset="demo_smoke",
    workload=dict(
        name="W2 smoke", prompts=2, prompt_len=8, samples=2, new_tokens=8, temperature=0.7
    ),
    repeats=1,
    demo_base="smoke",
    sft_steps=2,
    ei_questions=8,
    eval_questions=8,
    budget_s=600.0,
)


def peak_flops(device_kind: str, platform_name: str, override_tflops: float | None) -> dict:
    """{"value": FLOP/s, "source": ...}, or {"value": None, "reason": ...}."""
    if override_tflops:
        return {"value": override_tflops * 1e12, "source": "--peak-tflops"}
    if platform_name == "cpu":
        return {"value": None, "reason": "CPU: no vendor bf16 peak; MFU is not reported"}
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_kind.lower():
            return {"value": tflops * 1e12, "source": f"table: {key} dense bf16"}
    return {"value": None, "reason": f"{device_kind!r} is not in the table: pass --peak-tflops"}


def parse_train(spec: str) -> tuple[TrainRun, ...]:
    """ "preset:batch[:remat]" entries, comma-separated; every one after the first budgeted."""
    runs = []
    for i, entry in enumerate(s for s in spec.split(",") if s):
        parts = entry.split(":")
        if len(parts) not in (2, 3) or not parts[1].isdigit() or parts[2:] not in ([], ["remat"]):
            raise SystemExit(f"--train entry {entry!r}: write preset:batch or preset:batch:remat")
        runs.append(TrainRun(parts[0], int(parts[1]), parts[2:] == ["remat"], i > 0))
    return tuple(runs)


def memory_now() -> dict[str, Any]:
    """The first device's peak bytes in use so far, or why there is none."""
    import jax

    stats = jax.local_devices()[0].memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return {"peak_bytes_in_use": None, "reason": f"{jax.default_backend()}: no memory_stats"}
    return {"peak_bytes_in_use": int(stats["peak_bytes_in_use"])}


def environment(cpu_smoke: bool, override_tflops: float | None) -> dict[str, Any]:
    import jax
    import jaxlib

    device = jax.devices()[0]
    if not cpu_smoke and jax.default_backend() == "cpu":
        raise RuntimeError(
            "jax found no accelerator (backend cpu): install .[cuda] (--wheels DIR) or use a "
            "venv with jax[cuda12] (--venv PATH); --cpu-smoke runs the tiny sizes on a CPU"
        )
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "python": platform.python_version(),
        "git_commit": commit or None,
        "peak_flops": peak_flops(device.device_kind, device.platform, override_tflops),
    }


def train_check(run: TrainRun, sizes: Sizes, peak: dict) -> dict[str, Any]:
    from benchmarks.train_throughput import measure_train_step
    from jaxrl_reason.model import model_config

    config = model_config(run.preset).replace(dtype="bfloat16", remat=run.remat)
    result = measure_train_step(config, run.batch, sizes.seq_len, sizes.steps, sizes.warmup, 0)
    out = dataclasses.asdict(run) | {
        "params": config.num_params(),
        "seq_len": sizes.seq_len,
        "dtype": config.dtype,
        "param_dtype": config.param_dtype,
        **result,
    }
    if peak["value"]:
        out["mfu"] = result["model_flops"] / peak["value"]
    else:
        out |= {"mfu": None, "mfu_reason": peak["reason"]}
    return out


def sampler_workload(sizes: Sizes) -> tuple[Any, Any, Any]:
    """(workload, bf16 model config, prompts) that both sampler steps use."""
    import numpy as np

    from benchmarks.sampler import Workload
    from jaxrl_reason.model import model_config

    w = Workload(**sizes.workload)
    model = model_config(sizes.sampler_preset, dtype="bfloat16", param_dtype="bfloat16")
    prompts = np.random.default_rng(0).integers(1, model.vocab_size, (w.prompts, w.prompt_len))
    return w, model, prompts


def timed_sampling(name: str, build: Callable, sizes: Sizes, **kwargs: Any) -> dict[str, Any]:
    from benchmarks.sampler import round_robin

    w, model, prompts = sampler_workload(sizes)
    run = build(w, prompts, sizes.repeats, model, **kwargs)
    r = round_robin({name: run}, sizes.repeats)[name]
    return {
        "model": sizes.sampler_preset,
        "workload": sizes.workload,
        "generated_tokens": w.generated,
        "first_call_s": r["first"],
        "median_s": r["median"],
        "compile_s": r["first"] - r["median"],
        "tokens_per_s": w.generated / r["median"],
    }


def sampler_check(sizes: Sizes, transformers: dict) -> dict[str, Any]:
    from benchmarks.sampler import bench_ours

    result = timed_sampling("ours", bench_ours, sizes)
    if transformers.get("status") == "ok":
        result["ours_over_transformers"] = (
            result["tokens_per_s"] / transformers["result"]["tokens_per_s"]
        )
    return result


def transformers_measure(sizes: Sizes, cpu_smoke: bool) -> dict[str, Any]:
    """`transformers` generate on the workload: on the CPU for the smoke run, else on CUDA."""
    try:
        import torch
        import transformers
    except Exception as e:  # noqa: BLE001 - any import failure means "not measured"
        raise Skipped(f"torch/transformers not importable ({type(e).__name__}: {e})") from e
    from benchmarks.sampler import bench_transformers

    if cpu_smoke:
        device = "cpu"
    elif torch.cuda.is_available():
        device = "cuda"
    else:
        raise Skipped(f"torch {torch.__version__} sees no CUDA device")
    result = timed_sampling("transformers", bench_transformers, sizes, device=device)
    result |= {"torch": torch.__version__, "transformers": transformers.__version__}
    if device == "cuda":
        result["torch_max_memory_allocated"] = torch.cuda.max_memory_allocated()
    return result


def transformers_check(sizes: Sizes, cpu_smoke: bool, out: Path, timeout_s: float) -> dict:
    """`transformers_measure` in a child process, run before this one uses the GPU: torch
    then has the whole GPU, gives it all back when it exits, and cannot crash this one."""
    result_file = out / ".transformers_child.json"
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.device_check", "--out", str(out)]
    cmd += ["--transformers-child", str(result_file)] + (["--cpu-smoke"] if cpu_smoke else [])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout_s, 30))
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"transformers generate took over {max(timeout_s, 30):.0f} s") from e
    if proc.returncode or not result_file.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"child exited with {proc.returncode}: {' / '.join(tail)}")
    child = json.loads(result_file.read_text())
    result_file.unlink()
    if "skipped" in child:
        raise Skipped(child["skipped"])
    return child


def transformers_child(sizes: Sizes, cpu_smoke: bool, result_file: Path) -> None:
    try:
        result = transformers_measure(sizes, cpu_smoke)
    except Skipped as e:
        result = {"skipped": str(e)}
    result_file.write_text(json.dumps(result))


def demo_scale(sizes: Sizes) -> Any:
    """A demo scale of `sizes.sft_steps` SFT steps (one epoch) and one EI round."""
    from jaxrl_reason.demo import SCALES

    base = SCALES[sizes.demo_base]
    batch = base.sft.batch_size
    ei = dataclasses.replace(  # one sampling call: one set of programs compiled
        base.ei,
        num_rounds=1,
        questions_per_round=sizes.ei_questions,
        prompts_per_call=sizes.ei_questions,
    )
    return dataclasses.replace(
        base,
        num_train=sizes.sft_steps * batch + sizes.ei_questions,
        num_sft=sizes.sft_steps * batch,
        num_eval=sizes.eval_questions,
        num_val=sizes.eval_questions,
        sft=dataclasses.replace(base.sft, num_epochs=1.0, evaluate_each_epoch=False),
        ei=ei,
        evaluation=dataclasses.replace(base.evaluation, prompts_per_call=sizes.eval_questions),
    )


def demo_check(sizes: Sizes) -> dict[str, Any]:
    from jaxrl_reason.demo import run_demo
    from jaxrl_reason.training.metrics_writer import read_metrics

    scale = demo_scale(sizes)
    workdir = Path(tempfile.mkdtemp(prefix="device_check_demo_"))  # its files stay out of --out
    try:
        rows = run_demo(workdir, ("sft", "ei"), scale=scale, show_progress=False)
        sft = read_metrics(workdir / "sft", "sft")
        ei = read_metrics(workdir / "ei", "ei")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if len(sft) != sizes.sft_steps or len(ei) != 1:
        raise RuntimeError(
            f"the demo ran {len(sft)} SFT steps and {len(ei)} EI rounds, "
            f"not {sizes.sft_steps} and 1"
        )
    keep = ("method", "samples", "maj@1", "maj@K", "pass@K")
    return {
        "sft_steps": len(sft),
        "sft_last_loss": sft[-1]["loss"],
        "sft_median_tokens_per_s": sorted(r["tokens_per_s"] for r in sft)[len(sft) // 2],
        "ei_round": {k: v for k, v in ei[0].items() if k not in ("phase", "time")},
        "eval_questions": scale.num_eval,
        "eval_samples": scale.evaluation.num_samples,
        "rows": [{k: r[k] for k in keep} for r in rows],
    }


def run_step(
    report: dict[str, Any], out: Path, name: str, fn: Callable[[], dict], memory: bool = True
) -> dict[str, Any]:
    """Run `fn` as step `name`: its result, or the reason it skipped, or its error."""
    entry: dict[str, Any] = {"status": "running"}
    report["steps"][name] = entry
    record(out, report)
    start = time.perf_counter()
    try:
        entry |= {"status": "ok", "result": fn()}
    except Skipped as e:
        entry |= {"status": "skipped", "reason": str(e)}
    except Exception as e:  # noqa: BLE001 - every failure is recorded, then the next step runs
        entry |= {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        traceback.print_exc()
    entry["seconds"] = time.perf_counter() - start
    if memory and "environment" in report["steps"] and report["steps"]["environment"]["result"]:
        try:
            entry["memory"] = memory_now()
        except Exception as e:  # noqa: BLE001
            entry["memory"] = {"peak_bytes_in_use": None, "reason": f"{type(e).__name__}: {e}"}
    print(f"device_check: {name}: {entry['status']} ({entry['seconds']:.1f} s)", flush=True)
    record(out, report)
    return entry


def budget_skip(report: dict, run: TrainRun, first: dict | None, first_run: TrainRun) -> None:
    """Raise `Skipped` unless `run`'s estimated time (the first config's, scaled by the
    parameter count) fits the time left of the budget."""
    from jaxrl_reason.model import model_config

    if not first or first.get("status") != "ok":
        raise Skipped(f"train_{first_run.preset} did not finish: no estimate of this one's time")
    ratio = model_config(run.preset).num_params() / model_config(first_run.preset).num_params()
    estimate = first["seconds"] * max(ratio, 1.0)
    left = report["budget_s"] - (time.time() - report["started_at"])
    if estimate > left:
        raise Skipped(f"estimated {estimate:.0f} s, {max(left, 0):.0f} s left of --budget-s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for device_check.json/.md")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes: proves it runs")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak")
    parser.add_argument("--train", help="preset:batch[:remat],... (the first one unbudgeted)")
    parser.add_argument("--skip", default="", help="steps to skip: train,sampler,transformers,demo")
    parser.add_argument("--budget-s", type=float, help="budgeted steps run only within this")
    parser.add_argument("--started-at", type=float, help="epoch seconds the budget counts from")
    parser.add_argument("--install-status", default="none", choices=("ok", "failed", "none"))
    parser.add_argument("--install-detail", default="")
    parser.add_argument("--install-seconds", type=float, default=0.0)
    parser.add_argument("--finalize", action="store_true", help="after a crash: see finalize()")
    parser.add_argument("--exit-code", type=int, default=1)
    parser.add_argument("--transformers-child", help=argparse.SUPPRESS)  # a result file
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.finalize:
        finalize(out, args.exit_code)
        return 0
    sizes = CPU_SMOKE if args.cpu_smoke else GPU
    if args.transformers_child:
        transformers_child(sizes, args.cpu_smoke, Path(args.transformers_child))
        return 0
    if args.train:
        sizes = dataclasses.replace(sizes, train=parse_train(args.train))
    skip = {s for s in args.skip.split(",") if s}
    if skip - {"train", "sampler", "transformers", "demo"}:
        raise SystemExit(f"--skip {args.skip!r}: name some of train,sampler,transformers,demo")
    started_at = args.started_at or time.time()
    report: dict[str, Any] = {
        "schema": 1,
        "mode": "cpu-smoke" if args.cpu_smoke else "accelerator",
        "command": [sys.executable, "-m", "benchmarks.device_check", *(argv or sys.argv[1:])],
        "started": datetime.datetime.fromtimestamp(started_at, datetime.UTC).isoformat(
            timespec="seconds"
        ),
        "started_at": started_at,
        "budget_s": args.budget_s or sizes.budget_s,
        "sizes": dataclasses.asdict(sizes),
        "steps": {},
    }
    install = {"status": args.install_status, "detail": args.install_detail}

    def installed() -> dict[str, Any]:
        if install["status"] == "failed":
            raise RuntimeError(install["detail"] or "the install failed: see install.log")
        if install["status"] == "none":
            raise Skipped(install["detail"] or "no install asked for: the interpreter as it is")
        return {"detail": install["detail"]}

    run_step(report, out, "install", installed, memory=False)
    report["steps"]["install"]["seconds"] = args.install_seconds
    blocked = "install failed" if report["steps"]["install"]["status"] == "failed" else None
    if not blocked:
        env = run_step(
            report, out, "environment", lambda: environment(args.cpu_smoke, args.peak_tflops), False
        )
        blocked = None if env["status"] == "ok" else "the environment step failed"

    def step(name: str, kind: str, fn: Callable[[], dict]) -> dict[str, Any]:
        def guarded() -> dict:
            if blocked:
                raise Skipped(blocked)
            if kind in skip:
                raise Skipped(f"--skip {kind}")
            return fn()

        return run_step(report, out, name, guarded, memory=not blocked)

    peak = {} if blocked else report["steps"]["environment"]["result"]["peak_flops"]
    first_run, *budgeted = sizes.train
    left = lambda: report["budget_s"] - (time.time() - started_at)
    hf = step(
        "transformers",
        "transformers",
        lambda: transformers_check(sizes, args.cpu_smoke, out, left()),
    )
    first = step(f"train_{first_run.preset}", "train", lambda: train_check(first_run, sizes, peak))
    step("sampler", "sampler", lambda: sampler_check(sizes, hf))
    step("demo", "demo", lambda: demo_check(sizes))
    for run in budgeted:

        def train_budgeted(run: TrainRun = run) -> dict[str, Any]:
            budget_skip(report, run, first, first_run)
            return train_check(run, sizes, peak)

        step(f"train_{run.preset}", "train", train_budgeted)
    failed = [n for n, e in report["steps"].items() if e["status"] == "failed"]
    report |= {"wall_s": time.time() - started_at, "failed_steps": failed}
    record(out, report)
    print((out / MD_NAME).read_text(), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
