"""benchmarks/device_check.sh: the one-command accelerator check, proven on a CPU.

The full `--cpu-smoke` run (every step, tiny sizes) takes ~2-3 minutes on the project's
2-core machine, most of it compiling, so it is marked slow; the default suite runs the
script with the compute steps skipped, its accelerator mode on a CPU (a clear failure, the
JSON still written), and the step runner in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import device_check as dc
from benchmarks.device_report import JSON_NAME, MD_NAME, finalize, record

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "device_check.sh"
COMPUTE = "train,sampler,transformers,demo"


def run_script(*args: str, timeout: int = 120) -> tuple[subprocess.CompletedProcess, dict, str]:
    """Run the script with this interpreter; (process, its JSON, its markdown)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device
    env |= {"JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--python", sys.executable, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    out = Path(args[args.index("--out") + 1])
    report = json.loads((out / JSON_NAME).read_text())
    return proc, report, (out / MD_NAME).read_text()


def test_peak_flops_table_and_override():
    assert dc.peak_flops("NVIDIA H100 80GB HBM3", "gpu", None)["value"] == 989e12
    assert dc.peak_flops("NVIDIA H200", "gpu", None)["value"] == 989e12
    assert dc.peak_flops("NVIDIA A100-SXM4-80GB", "gpu", None)["value"] == 312e12
    assert dc.peak_flops("TPU v4", "tpu", None)["value"] == 275e12
    assert dc.peak_flops("TPU v5 lite", "tpu", None)["value"] == 197e12  # v5e
    assert dc.peak_flops("TPU v5", "tpu", None)["value"] == 459e12  # v5p
    assert dc.peak_flops("NVIDIA L4", "gpu", 121.0) == {"value": 121e12, "source": "--peak-tflops"}
    assert "--peak-tflops" in dc.peak_flops("NVIDIA L4", "gpu", None)["reason"]
    cpu = dc.peak_flops("cpu", "cpu", None)
    assert cpu["value"] is None and "CPU" in cpu["reason"]


def test_parse_train():
    runs = dc.parse_train("llama3_2_1b:16:remat,llama3_2_3b:8")
    assert runs == (
        dc.TrainRun("llama3_2_1b", 16, True, False),
        dc.TrainRun("llama3_2_3b", 8, False, True),
    )
    for bad in ("llama3_2_1b", "llama3_2_1b:x", "llama3_2_1b:8:fast"):
        with pytest.raises(SystemExit, match="preset:batch"):
            dc.parse_train(bad)


def test_every_step_recorded_and_json_written_after_a_failure(tmp_path):
    report = {"mode": "cpu-smoke", "started_at": 0.0, "steps": {}}

    def seen_by_reader() -> dict:
        return json.loads((tmp_path / JSON_NAME).read_text())["steps"]

    def fails() -> dict:
        assert seen_by_reader()["broken"]["status"] == "running"  # on disk before it runs
        raise ValueError("boom")

    def skips() -> dict:
        raise dc.Skipped("no torch")

    dc.run_step(report, tmp_path, "broken", fails, memory=False)
    dc.run_step(report, tmp_path, "absent", skips, memory=False)
    dc.run_step(report, tmp_path, "fine", lambda: {"x": 1}, memory=False)
    steps = seen_by_reader()
    assert steps["broken"]["status"] == "failed" and steps["broken"]["error"] == "ValueError: boom"
    assert steps["absent"] == {
        "status": "skipped",
        "reason": "no torch",
        "seconds": pytest.approx(0, abs=1),
    }
    assert steps["fine"]["status"] == "ok" and steps["fine"]["result"] == {"x": 1}
    assert "| broken | failed |" in (tmp_path / MD_NAME).read_text()

    # A process that dies mid-step leaves it "running"; the script's finalize pass fails it.
    report["steps"]["killed"] = {"status": "running"}
    record(tmp_path, report)
    finalize(tmp_path, 124)
    steps = seen_by_reader()
    assert steps["killed"]["status"] == "failed" and "time limit" in steps["killed"]["error"]
    assert steps["fine"]["status"] == "ok"


def test_script_rejects_bad_arguments(tmp_path):
    for args, message in (
        ([], "--out DIR is required"),
        (["--out"], "--out needs a value"),
        (["--out", str(tmp_path), "--no-deps"], "--no-deps only goes with --wheels"),
        (["--out", str(tmp_path), "--wheels", str(tmp_path / "none")], "not a directory"),
        (["--out", str(tmp_path), "--frobnicate"], "unknown argument '--frobnicate'"),
    ):
        proc = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)


def test_script_writes_json_and_markdown(tmp_path):
    proc, report, md = run_script("--cpu-smoke", "--out", str(tmp_path), "--", "--skip", COMPUTE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = report["steps"]
    assert steps["install"]["status"] == "skipped"
    env = steps["environment"]["result"]
    assert env["backend"] == "cpu" and env["jax"] and env["device_count"] == 1
    assert env["peak_flops"]["value"] is None and "CPU" in env["peak_flops"]["reason"]
    names = ["transformers", "train_tiny", "sampler", "demo", "train_demo_smoke"]
    assert [n for n in steps if n not in ("install", "environment")] == names
    assert all(steps[n]["status"] == "skipped" for n in names)
    assert report["mode"] == "cpu-smoke" and report["failed_steps"] == []
    assert "**CPU smoke: every size shrunk to prove the script runs; not performance.**" in md
    assert "| environment | ok |" in md


def test_accelerator_mode_on_a_cpu_fails_clearly(tmp_path):
    proc, report, md = run_script("--out", str(tmp_path))
    assert proc.returncode == 1
    env = report["steps"]["environment"]
    assert env["status"] == "failed" and "found no accelerator" in env["error"]
    assert report["steps"]["demo"] == {
        "status": "skipped",
        "reason": "the environment step failed",
        "seconds": pytest.approx(0, abs=1),
    }
    assert report["failed_steps"] == ["environment"] and "| environment | failed |" in md


@pytest.mark.slow
def test_cpu_smoke_runs_every_step(tmp_path):
    proc, report, md = run_script("--cpu-smoke", "--out", str(tmp_path), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = report["steps"]
    assert {n: e["status"] for n, e in steps.items()} == {
        "install": "skipped",
        "environment": "ok",
        "transformers": "ok",
        "train_tiny": "ok",
        "sampler": "ok",
        "demo": "ok",
        "train_demo_smoke": "ok",
    }
    for name, remat in (("train_tiny", False), ("train_demo_smoke", True)):
        r = steps[name]["result"]
        assert r["remat"] is remat and r["dtype"] == "bfloat16" and r["seq_len"] == 64
        assert r["compile_s"] > 0 and r["tokens_per_s"] > 0 and r["step_bytes"] > 0
        assert r["mfu"] is None and "CPU" in r["mfu_reason"]
    ours, hf = steps["sampler"]["result"], steps["transformers"]["result"]
    assert ours["generated_tokens"] == 2 * 2 * 8 and ours["tokens_per_s"] > 0
    assert ours["ours_over_transformers"] == pytest.approx(
        ours["tokens_per_s"] / hf["tokens_per_s"]
    )
    demo = steps["demo"]["result"]
    assert demo["sft_steps"] == 2 and demo["ei_round"]["samples_drawn"] == 8 * 2
    assert [r["method"] for r in demo["rows"]] == ["SFT", "EI"]
    for header in ("| config | params |", "| sampler | tokens/s |", "| method | maj@1 |"):
        assert header in md
