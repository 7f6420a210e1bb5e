"""Many hosts: the CLI as processes of one multi-controller JAX job, on this machine.

The end-to-end check runs the smoke experiment (SFT, EI, PPO, GRPO) as 2 processes x 4
simulated CPU devices, stops it with SIGTERM to one process, resumes it, and compares
every policy, evaluation and sample with 1 process x 8 devices. Both go through gloo's
collectives, so every reduction sums in the same order and the results are bitwise equal.
Its jobs share a persistent compilation cache (`_compile_once`), and the 1-process run
goes alongside the pair, so that the check takes minutes, not ten.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import pytest

from jaxrl_reason.cli import main
from jaxrl_reason.parallel import join_job
from tests.conftest import REPO_ROOT

LAUNCH = REPO_ROOT / "launch"
JOB_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in JOB_ENV}
    return {**env, "PYTHONUNBUFFERED": "1", "PYTHON": sys.executable, **extra}


# ------------------------------------------------------------------------ bad input


@pytest.fixture
def no_job(monkeypatch):
    for name in (*JOB_ENV, "TPU_WORKER_HOSTNAMES", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)


def test_a_single_process_joins_nothing(no_job):
    assert join_job() is False and not jax.distributed.is_initialized()


@pytest.mark.parametrize(
    "args, env, message",
    [
        (("localhost:1", 2, 2), {}, "process_id 2 is out of range for a job of 2 processes"),
        ((), {"JAX_PROCESS_ID": "-1", "JAX_NUM_PROCESSES": "2"}, "needs JAX_COORDINATOR_ADDRESS"),
        ((None, 2, 1), {}, "needs JAX_COORDINATOR_ADDRESS (--coordinator_address) as well"),
        ((), {"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES='two' is not a whole number"),
        (("localhost:1", 0, 0), {}, "must be >= 1, got 0"),
    ],
)
def test_an_incomplete_or_inconsistent_job_is_refused(no_job, monkeypatch, args, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError) as err:
        join_job(*args)
    assert message in str(err.value)
    assert not jax.distributed.is_initialized()  # refused before connecting


def test_the_cli_refuses_a_process_id_out_of_range_in_one_line(no_job, monkeypatch, capsys):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "5")
    assert main(["eval", "--workdir", "nowhere"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxrl-reason eval: error: JAX_PROCESS_ID / --process_id 5 is out")
    assert "0..1" in err and len(err.splitlines()) == 1


def test_a_coordinator_that_never_answers_times_out_in_one_line(tmp_path):
    port = _free_port()  # nothing listens there
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "jaxrl_reason.cli", "eval", "--workdir", str(tmp_path)]
        + ["--coordinator_address", f"localhost:{port}", "--num_processes", "2"]
        + ["--process_id", "1", "--init_timeout", "2"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert time.monotonic() - start < 60
    assert out.stderr.strip().splitlines()[-1] == (
        f"jaxrl-reason eval: error: process 1 of 2 could not join the coordinator "
        f"localhost:{port} within 2 s: start every process of the job (process 0 hosts the "
        "coordinator), check the address and port, or wait longer with --init_timeout"
    )


def _job(devices: tuple[int, ...], cwds: tuple, *args: str, **env: str) -> list:
    """`jaxrl-reason ARGS` as the processes of one job, process i with `devices[i]` CPU
    devices in working directory `cwds[i]` (and environment variables `env`):
    (returncode, stderr) of each."""
    return _results(_start_job(devices, cwds, *_cli(*args), **env))


def _cli(*args: str) -> tuple[str, ...]:
    return ("-m", "jaxrl_reason.cli", *args, "--init_timeout", "60")


def _run_job(devices: tuple[int, ...], cwds: tuple, *args, **env: str) -> list:
    """`python ARGS` as the processes of one job (see `_job`)."""
    return _results(_start_job(devices, cwds, *args, **env))


def _start_job(devices: tuple[int, ...], cwds: tuple, *args, **extra: str) -> list:
    """Start `python ARGS` as the processes of one job (see `_job`); their stderr goes to
    files, so that no process blocks on a full pipe while another job is waited for."""
    port, procs = _free_port(), []
    for i, (count, cwd) in enumerate(zip(devices, cwds, strict=True)):
        env = _env(
            **extra,
            JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
            JAX_NUM_PROCESSES=str(len(devices)),
            JAX_PROCESS_ID=str(i),
            XLA_FLAGS=f"--xla_force_host_platform_device_count={count}",
            JAX_PLATFORMS="cpu",
        )
        stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 (`_results` closes it)
        command = [sys.executable, *map(str, args)]
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True
        )
        procs.append((process, stderr))
    return procs


def _results(procs: list) -> list:
    """(returncode, stderr) of each process that `_start_job` started, once it ends."""
    results = []
    for process, stderr in procs:
        code = process.wait(timeout=600)
        stderr.seek(0)
        results.append((code, stderr.read()))
        stderr.close()
    return results


@pytest.mark.slow  # ~12 s: two processes start jax
def test_processes_with_different_device_counts_are_refused(tmp_path):
    for rc, err in _job((4, 2), (tmp_path, tmp_path), "eval", "--workdir", str(tmp_path)):
        assert rc == 2, err[-2000:]
        assert "error: the processes hold different numbers of devices ([4, 2], by process" in err


def test_a_workdir_the_processes_do_not_share_is_refused(tmp_path):
    # One relative --workdir from two working directories: two directories, as on two
    # hosts without a shared file system.
    for host in ("a", "b"):
        (tmp_path / host / "run").mkdir(parents=True)
    results = _job((2, 2), (tmp_path / "a", tmp_path / "b"), "eval", "--workdir", "run")
    for rc, err in results:
        assert rc == 2, err[-2000:]
        assert (
            "error: --workdir run is not shared between the processes: process(es) [1] do not "
            "see the file process 0 wrote there" in err
        )
    assert not list((tmp_path / "a" / "run").iterdir())  # the marker is removed


# ---------------------------------------------------------------------- launch scripts


def test_the_launch_scripts_dry_run_print_their_commands(tmp_path):
    run = lambda *a: subprocess.run(
        ["bash", *map(str, a)], capture_output=True, text=True, env=_env(PATH="/usr/bin:/bin")
    )
    gpu = run(LAUNCH / "gpu_local.sh", "--dry-run", "c.gin", "runs/my run", "--gin_param", "x=1")
    assert gpu.returncode == 0, gpu.stderr
    assert "pip install -q -e .\\[cuda\\]" in gpu.stdout
    assert (
        gpu.stdout.strip()
        .splitlines()[-1]
        .endswith(".venv/bin/jaxrl-reason train c.gin --workdir runs/my\\ run --gin_param x=1")
    )
    tpu = run(LAUNCH / "tpu_pod.sh", "--dry-run", "c.gin", "/mnt/runs/x")  # no gcloud here
    assert tpu.returncode == 0, tpu.stderr
    lines = tpu.stdout.splitlines()
    assert any(line.startswith("gcloud compute tpus tpu-vm create jaxrl-reason") for line in lines)
    assert any(" scp " in line and "--worker=all" in line for line in lines)
    assert "jaxrl-reason train c.gin --workdir /mnt/runs/x --find_peers" in lines[-1]
    local = run(LAUNCH / "multiprocess_local.sh", "--dry-run", 3, "c.gin", tmp_path / "w")
    assert local.returncode == 0, local.stderr
    commands = local.stdout.strip().splitlines()
    assert len(commands) == 3 and "JAX_PROCESS_ID=2" in commands[2]
    assert all("JAX_NUM_PROCESSES=3" in c and "train c.gin --workdir" in c for c in commands)
    assert not (tmp_path / "w.logs").exists()  # nothing ran


# ------------------------------------------------------------------------- end to end


def _smoke_config(path) -> None:
    from jaxrl_reason.configuration import settings_gin
    from jaxrl_reason.demo import SCALES, experiment_settings

    settings = {
        "algorithms": ("sft", "ei", "ppo:sparse", "grpo"),
        **experiment_settings(SCALES["smoke"], seed=0),
    }
    path.write_text(settings_gin(settings, "the smoke demo: SFT, EI, PPO, GRPO"))


def _compile_once(tmp_path) -> dict[str, str]:
    """Environment variables that give the jobs of one test JAX's persistent compilation
    cache, in `tmp_path`: a program compiles once per device layout (1 x 8 or 2 x 4),
    not again in each launch (the relaunch, `eval`). A hit loads the executable the miss
    compiled, so the results are the same (the cache key is the program, the devices and
    XLA_FLAGS); the CLI itself never sets a cache."""
    return {
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",  # cache every program
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
    }


def _launch(n: int, devices: int, config, workdir, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        ["bash", str(LAUNCH / "multiprocess_local.sh"), str(n), str(config), str(workdir)],
        env=_env(DEVICES_PER_PROCESS=str(devices), **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _logs(workdir) -> str:
    return "\n".join(p.read_text()[-3000:] for p in sorted(workdir.parent.glob("*.logs/*.log")))


def _policies(workdir) -> list:
    from jaxrl_reason.model import ModelConfig
    from jaxrl_reason.training.checkpointing import abstract_params, load_params

    run = json.loads((workdir / "run.json").read_text())
    target = abstract_params(ModelConfig.from_dict(run["model_config"]))
    steps = sorted(e["policy_step"] for e in run["phases"].values())
    return [jax.tree.map(np.asarray, load_params(workdir / "policy", target, s)[0]) for s in steps]


@pytest.fixture
def stop_leftovers(tmp_path):
    """Kill what a failed check leaves running (the processes of a job that hangs)."""
    yield
    for pid_file in tmp_path.glob("*/*.logs/*.pid"):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


@pytest.mark.slow
def test_two_processes_stopped_and_resumed_equal_one_process(tmp_path, stop_leftovers):
    config = tmp_path / "smoke.gin"
    _smoke_config(config)
    one, two = tmp_path / "one" / "run", tmp_path / "two" / "run"
    cache = _compile_once(tmp_path)

    # The 1-process reference runs alongside the pair: each compiles on one core most of
    # the time, so the two jobs overlap (the cache keys differ: different XLA_FLAGS).
    reference = _launch(1, 8, config, one, **cache)
    pair = _launch(2, 4, config, two, **cache)
    while not (two / "sft_eval.json").exists() and pair.poll() is None:
        time.sleep(0.5)
    assert pair.poll() is None, _logs(two)  # still running: EI is next
    os.kill(int((two.parent / "run.logs" / "process_1.pid").read_text()), signal.SIGTERM)
    assert pair.wait(timeout=900) == 143, _logs(two)
    for i in range(2):  # both stopped, saving, though only process 1 got the signal
        assert (two.parent / "run.logs" / f"process_{i}.status").read_text().strip() == "143"
        assert (
            "jaxrl-reason train: received SIGTERM"
            in (two.parent / "run.logs" / f"process_{i}.log").read_text()
        )
    assert not (two / "results.json").exists()

    assert _launch(2, 4, config, two, **cache).wait(timeout=900) == 0, _logs(two)
    assert reference.wait(timeout=900) == 0, _logs(one)
    run = json.loads((two / "run.json").read_text())
    assert run["hosts"] == {
        "process_count": 2,
        "device_count": 8,
        "local_device_count": 4,
        "platform": "cpu",
    }
    # The same policies, bit for bit, and the same evaluations (samples included).
    for a, b in zip(_policies(one), _policies(two), strict=True):
        jax.tree.map(np.testing.assert_array_equal, a, b)
    for phase in ("sft", "ei", "ppo_sparse", "grpo"):
        name = f"{phase}_eval.json"
        assert json.loads((one / name).read_text()) == json.loads((two / name).read_text()), name
    assert json.loads((one / "results.json").read_text()) == json.loads(
        (two / "results.json").read_text()
    )
    assert [r["method"] for r in json.loads((two / "results.json").read_text())["rows"]] == [
        "SFT",
        "EI",
        "PPO sparse",
        "GRPO",
    ]

    # `eval` of the finished run: the same as 2 processes and as 1.
    flags = ("--k", "2", "--num_questions", "4", "--max_new_tokens", "16")
    jobs = [  # both at once
        _start_job(
            devices, (tmp_path,) * len(devices), *_cli("eval", "--workdir", w, *flags), **cache
        )
        for w, devices in ((str(one), (8,)), (str(two), (4, 4)))
    ]
    for rc, err in (result for job in jobs for result in _results(job)):
        assert rc == 0, err[-3000:]
    drop_path = lambda w: {
        k: v for k, v in json.loads((w / "eval.json").read_text()).items() if k != "workdir"
    }
    assert drop_path(one) == drop_path(two)


WRITE_FAILS = """
import sys
from jaxrl_reason.parallel import join_job, on_main_process

join_job()

@on_main_process
def write(path):
    open(path, "w").write("x")  # a directory on process 0: IsADirectoryError

try:
    write(sys.argv[1])
except Exception as err:
    print(f"{type(err).__name__}: {err}", file=sys.stderr)
    sys.exit(3)
"""


@pytest.mark.slow  # ~12 s: two processes start jax
def test_an_error_of_process_0_at_a_write_is_raised_on_every_process(tmp_path):
    (tmp_path / "eval.json").mkdir()
    script = tmp_path / "write.py"
    script.write_text(WRITE_FAILS)
    (rc0, err0), (rc1, err1) = _run_job((2, 2), (tmp_path,) * 2, script, tmp_path / "eval.json")
    assert (rc0, rc1) == (3, 3), err0[-2000:] + err1[-2000:]
    assert "IsADirectoryError" in err0.splitlines()[-1]
    assert err1.splitlines()[-1].startswith(
        "OtherProcessError: process 0 failed in write: IsADirectoryError"
    )
