"""A run directory as a user meets it: `eval` with no flags, eval changes nothing, a
changed setting is refused with a diff, a moved run still works, SIGTERM between phases,
and the CLI's one-line errors (issue #16)."""

import json
import os
import shutil
import signal

import gin
import pytest

from jaxrl_reason import cli
from jaxrl_reason.algorithms.sft import SFTConfig
from jaxrl_reason.evaluation.evaluate import EvalConfig
from jaxrl_reason.experiment import (
    ModelSetup,
    TaskConfig,
    evaluate_workdir,
    load_run,
    train_experiment,
)
from jaxrl_reason.model import ModelConfig
from jaxrl_reason.training import preemption
from jaxrl_reason.training.preemption import Preempted, PreemptionGuard

TINY = ModelConfig(
    vocab_size=384,
    d_model=32,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    head_dim=16,
    mlp_dim=64,
    max_seq_len=256,
)
SETTINGS = dict(
    task=TaskConfig(num_train=64, num_eval=4, num_sft=16),
    model=ModelSetup(TINY, tokenizer_vocab_size=384),
    algorithms=("sft",),
    configs={"sft": SFTConfig(num_epochs=1, batch_size=8, max_len=192)},
    evaluation=EvalConfig(num_samples=2, max_new_tokens=8, prompts_per_call=8),
    show_progress=False,
)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished SFT run (one step), copied by each test that changes it."""
    workdir = tmp_path_factory.mktemp("runs") / "run"
    train_experiment(workdir, **SETTINGS)
    return workdir


@pytest.fixture
def run_copy(finished_run, tmp_path):
    return shutil.copytree(finished_run, tmp_path / "run")


def _tree(path):
    """Every file under `path` with its bytes: what "nothing changed" compares."""
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def test_eval_with_only_the_workdir_uses_the_runs_settings_and_changes_nothing(run_copy, capsys):
    """Task, questions, K, temperature and generation length come from run.json; the output
    says which policy and step, on how many questions; only eval.json is written."""
    before = _tree(run_copy)
    result = evaluate_workdir(run_copy, show_progress=False)
    out = capsys.readouterr().out
    assert "sft policy (step 0, the newest) on 4 arith test questions" in out
    assert "K = 2 samples at temperature 0.7, up to 8 new tokens" in out
    assert result["num_questions"] == 4 and result["k"] == 2
    sft_eval = json.loads((run_copy / "sft_eval.json").read_text())
    same = json.loads(json.dumps(result["summary"])) == sft_eval["summary"]
    assert same  # the same questions, greedy decodes and samples as the run's own evaluation
    after = _tree(run_copy)
    assert set(after) - set(before) == {"eval.json"}
    assert all(after[name] == data for name, data in before.items())


def test_eval_refuses_a_damaged_policy_and_moves_nothing_then_train_recreates_it(run_copy):
    step = run_copy / "policy" / "0"
    for f in step.rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "state" in f.parts:
            f.write_bytes(b"garbage")
    before = _tree(run_copy)
    with pytest.raises(Exception, match=r"step 0 in .*policy is damaged.*re-run the training"):
        evaluate_workdir(run_copy, show_progress=False)
    assert _tree(run_copy) == before  # not moved aside, no fallback
    train_experiment(run_copy, **SETTINGS)  # the finished run's resume saves it again
    assert (run_copy / "policy" / "damaged_step_0").is_dir()
    _, _, meta = load_run(run_copy, read_only=True)
    assert meta["phase"] == "sft" and meta["maj@1"] == before_meta_maj1(run_copy)


def before_meta_maj1(workdir):
    return json.loads((workdir / "sft_eval.json").read_text())["summary"]["maj@1"]


def test_eval_of_a_missing_step_lists_the_steps_there_are(finished_run):
    with pytest.raises(FileNotFoundError, match=r"no step 99 in .*policy: it holds steps \[0\]"):
        evaluate_workdir(finished_run, step=99, show_progress=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_questions": -3}, "--num_questions must be a positive number, got -3"),
        ({"k": -1}, "--k must be >= 0"),
    ],
)
def test_eval_refuses_bad_flags(finished_run, kwargs, message):
    with pytest.raises(ValueError, match=message):
        evaluate_workdir(finished_run, show_progress=False, **kwargs)


def test_eval_with_one_sample_keeps_the_greedy_maj_at_1(run_copy):
    result = evaluate_workdir(run_copy, k=1, show_progress=False)
    sft_eval = json.loads((run_copy / "sft_eval.json").read_text())
    assert result["summary"]["maj@1"] == sft_eval["summary"]["maj@1"]  # greedy, not sampled
    assert result["summary"]["maj@K"] == result["summary"]["pass@1"]
    assert result["per_question"]["maj@K"] == result["per_question"]["pass@K"]


def test_a_moved_run_reads_its_own_tokenizer(finished_run, tmp_path):
    assert json.loads((finished_run / "run.json").read_text())["tokenizer"] == "tokenizer.model"
    moved = shutil.copytree(finished_run, tmp_path / "moved")
    (moved / "tokenizer.model").write_bytes(b"")  # would pass if the original were read...
    with pytest.raises(ValueError, match=r"moved.tokenizer.model"):
        load_run(moved, read_only=True)
    shutil.copy(finished_run / "tokenizer.model", moved / "tokenizer.model")
    policy, _, _ = load_run(moved, read_only=True)  # ...and works with its own
    assert str(policy.tokenizer.path) == str(moved / "tokenizer.model")


@pytest.mark.parametrize(
    "change, shown",
    [
        ({"seed": 1}, "run.seed 0 -> 1"),
        (
            {"configs": {"sft": SFTConfig(num_epochs=2, batch_size=8, max_len=192)}},
            "sft.num_epochs 1 -> 2",
        ),
        (
            {"evaluation": EvalConfig(num_samples=4, max_new_tokens=8, prompts_per_call=8)},
            "run.evaluation.num_samples 2 -> 4",
        ),
    ],
)
def test_a_changed_setting_is_refused_with_the_diff_and_nothing_changes(run_copy, change, shown):
    before = _tree(run_copy)
    with pytest.raises(ValueError, match=f"started with other settings \\({shown}"):
        train_experiment(run_copy, **{**SETTINGS, **change})
    assert _tree(run_copy) == before


@pytest.mark.parametrize(
    "algorithms, message",
    [("sft,ei", "must be a list of names, got the string 'sft,ei'"), ((), "is empty")],
)
def test_bad_algorithm_lists_are_refused(tmp_path, algorithms, message):
    with pytest.raises(ValueError, match=message):
        train_experiment(tmp_path / "run", **{**SETTINGS, "algorithms": algorithms})
    assert not (tmp_path / "run").exists()


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_text("mine")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        train_experiment(path, **SETTINGS)
    assert path.read_text() == "mine"


# ------------------------------------------------------------------------------- SIGTERM


def test_sigterm_outside_a_loop_stops_at_the_next_unit_of_work():
    with preemption.defer_sigterm():
        os.kill(os.getpid(), signal.SIGTERM)  # e.g. during a final evaluation: not killed
        with pytest.raises(Preempted, match="stopped after SFT's evaluation; re-run the same"):
            preemption.stop_if_requested("SFT's evaluation")
        preemption.stop_if_requested("the next one")  # served once


def test_a_sigterm_in_a_loops_last_step_is_handed_to_the_run():
    with preemption.defer_sigterm():
        with PreemptionGuard() as guard:
            os.kill(os.getpid(), signal.SIGTERM)
            assert guard.should_stop  # the loop's last step: it saves and returns
        with pytest.raises(Preempted):
            preemption.stop_if_requested("the phase")
    with PreemptionGuard():  # without a run around it, the request ends with the guard
        os.kill(os.getpid(), signal.SIGTERM)
    preemption.stop_if_requested("nothing")


def test_sigterm_stops_read_only_work_at_once_saying_nothing_was_written(monkeypatch, capsys):
    def exit_now(code):
        raise SystemExit(code)

    monkeypatch.setattr(preemption, "_exit_now", exit_now)  # the process would end here
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped, preemption.abort_on_sigterm("eval"):
        os.kill(os.getpid(), signal.SIGTERM)
        sum(range(10_000))  # the handler runs between bytecodes
    assert stopped.value.code == preemption.PREEMPTED_EXIT_CODE
    assert "eval stopped before it finished; nothing written" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == previous


# ------------------------------------------------------------------------------ the CLI


def test_any_error_reaching_the_cli_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    def boom(args):
        raise KeyError("inner detail")

    monkeypatch.setattr(cli, "_eval", boom)  # the parser binds it when built
    assert cli.main(["eval", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("jaxrl-reason eval: error: KeyError: 'inner detail'")
    assert "-v for the traceback" in err
    assert cli.main(["-v", "eval", "--workdir", str(tmp_path)]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_an_error_of_ours_is_its_message_on_one_line(tmp_path, capsys):
    (tmp_path / "run.json").write_text('{"layout": 2,\n "task": ')  # a crash mid-write
    assert cli.main(["eval", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{tmp_path / 'run.json'}:2:" in err and "run.json is not valid JSON" in err


def test_train_writes_config_gin_before_any_work(tmp_path, capsys):
    gin_file = tmp_path / "x.gin"
    gin_file.write_text(
        "train_experiment.task = @TaskConfig()\n"
        "TaskConfig.name = 'gsm8k'\n"
        f"TaskConfig.data_dir = '{tmp_path / 'no_such_dir'}'\n"
    )
    workdir = tmp_path / "run"
    try:
        assert cli.main(["train", str(gin_file), "--workdir", str(workdir)]) == 2
    finally:
        gin.clear_config()  # the CLI left its config parsed: later tests must not see it
    assert "TaskConfig.name = 'gsm8k'" in (workdir / "config.gin").read_text()
    assert "no_such_dir" in capsys.readouterr().err


def test_sigterm_during_eval_ends_with_a_message_and_writes_nothing(run_copy):
    """In a real process: SIGTERM while `eval` samples gives exit 143 and one line saying
    nothing was written (it used to die silently)."""
    import subprocess
    import sys
    import time

    from tests.conftest import REPO_ROOT

    before = _tree(run_copy)
    env = {**os.environ, "XLA_FLAGS": "", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jaxrl_reason.cli", "eval", "--workdir", str(run_copy)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()  # printed once the policy is loaded, before sampling
    assert "jaxrl-reason eval:" in line, proc.stderr.read()[-2000:]
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == preemption.PREEMPTED_EXIT_CODE, err[-2000:]
    assert "eval stopped before it finished; nothing written" in err.splitlines()[-1]
    assert _tree(run_copy) == before


# ------------------------------------------------- found by a sweep of 130 bad inputs


def test_export_hf_refuses_a_destination_overlapping_the_source(finished_run):
    from jaxrl_reason.model.hf_interop import export_checkpoint_to_hf

    before = _tree(finished_run)
    for dst in (finished_run, finished_run / "policy", finished_run.parent):
        with pytest.raises(ValueError, match="overlaps the source"):
            export_checkpoint_to_hf(finished_run, dst, overwrite=True)
    assert _tree(finished_run) == before


def test_export_hf_of_a_damaged_policy_is_an_error_and_moves_nothing(run_copy, tmp_path):
    from jaxrl_reason.model.hf_interop import export_checkpoint_to_hf

    for f in (run_copy / "policy" / "0").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "state" in f.parts:
            f.write_bytes(b"garbage")
    before = _tree(run_copy)
    with pytest.raises(Exception, match="step 0 in .*policy is damaged"):
        export_checkpoint_to_hf(run_copy, tmp_path / "out")
    assert _tree(run_copy) == before and not (tmp_path / "out").exists()


def test_a_finished_phases_missing_policy_is_named_not_replaced_by_an_older_one(run_copy):
    shutil.rmtree(run_copy / "policy" / "0")
    with pytest.raises(FileNotFoundError, match="newest finished phase, sft, saved policy step 0"):
        load_run(run_copy, read_only=True)


def test_a_replaced_or_missing_tokenizer_is_named(run_copy, tmp_path):
    from jaxrl_reason.data.tokenizer import train_tokenizer_for_task

    train_tokenizer_for_task("arith", tmp_path / "other.model", vocab_size=400, num_examples=1000)
    shutil.copy(tmp_path / "other.model", run_copy / "tokenizer.model")
    with pytest.raises(ValueError, match="has 400 pieces but the run's model has a vocabulary"):
        load_run(run_copy, read_only=True)
    (run_copy / "tokenizer.model").unlink()
    with pytest.raises(FileNotFoundError, match="the run's tokenizer .* is missing; restore it"):
        load_run(run_copy, read_only=True)


def test_a_damaged_eval_cache_says_to_delete_it(run_copy):
    path = run_copy / "sft_eval.json"
    path.write_text(path.read_text()[:100])
    with pytest.raises(ValueError, match="sft_eval.json is not valid JSON .* delete it and re-run"):
        train_experiment(run_copy, **SETTINGS)


def test_eval_refuses_data_dir_for_the_built_in_task(finished_run):
    with pytest.raises(ValueError, match="the task is arith .* pass --task gsm8k"):
        evaluate_workdir(finished_run, data_dir="/somewhere", show_progress=False)


def test_a_new_run_inside_another_run_is_refused(finished_run):
    with pytest.raises(ValueError, match="is inside the run directory"):
        train_experiment(finished_run / "sft" / "new", **SETTINGS)
    assert not (finished_run / "sft" / "new").exists()


def test_train_tokenizer_never_overwrites_and_refuses_a_directory(tmp_path, capsys):
    out = tmp_path / "tok.model"
    out.write_bytes(b"a run's tokenizer")
    args = ["train-tokenizer", "--num_examples", "1000", "--vocab_size", "400", "--out"]
    assert cli.main([*args, str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == b"a run's tokenizer"
    assert cli.main([*args, str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert cli.main([*args, str(out), "--overwrite"]) == 0


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--ppo_rewards", ""], "--ppo_rewards is empty: .* e.g. --ppo_rewards sparse,dense"),
        (["--ppo_rewards", "bogus"], r"--ppo_rewards: unknown \['bogus'\]; choose from sparse"),
        (["--algorithms", " , "], "--algorithms is empty"),
    ],
)
def test_demo_list_flags_name_themselves(tmp_path, capsys, flags, message):
    import re

    argv = ["demo", "--workdir", str(tmp_path / "run"), "--algorithms", "sft,ppo", *flags]
    assert cli.main(argv) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_system_errors_say_what_to_do_and_out_of_memory_is_named():
    import errno

    err = NotADirectoryError(errno.ENOTDIR, "Not a directory", "afile/sub")
    assert cli._one_line(err) == (
        "afile/sub: Not a directory; a part of the path is a file, not a directory: choose "
        "another path"
    )
    oom = RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 180456218040 bytes.")
    assert cli._one_line(oom).startswith("out of device memory: lower what runs at once")


def test_library_error_logs_are_hidden_unless_verbose():
    import logging

    record = lambda path: logging.LogRecord("root", logging.ERROR, path, 1, "x", (), None)
    assert not cli._quiet_libraries(record("/venv/site-packages/gin/config.py"))
    assert not cli._quiet_libraries(record("/venv/site-packages/orbax/checkpoint/a.py"))
    assert cli._quiet_libraries(record("/repo/jaxrl_reason/training/checkpointing.py"))
