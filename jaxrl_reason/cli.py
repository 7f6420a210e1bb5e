"""The `jaxrl-reason` command: subcommands that parse arguments and call the library."""

from __future__ import annotations

import argparse
import errno
import logging
import pathlib
import re
import sys
import traceback
from collections.abc import Sequence


def _train(args: argparse.Namespace) -> None:
    """Parse gin, run the experiment, record the resolved config."""
    from jaxrl_reason.configuration import parse_config, write_resolved_config
    from jaxrl_reason.evaluation.evaluate import EvalConfig
    from jaxrl_reason.evaluation.report import markdown_table
    from jaxrl_reason.experiment import train_experiment

    parse_config(args.config, args.gin_param)
    # config.gin at the start (what was parsed), then resolved at the end (what ran).
    from jaxrl_reason.parallel import on_main_process

    rows = train_experiment(args.workdir, on_start=write_resolved_config)
    on_main_process(write_resolved_config)(args.workdir)
    if not rows:  # the ORM alone: it scores, it is not a policy to tabulate
        print(
            f"trained the ORM only ({args.workdir}/orm); no policy was trained: use it "
            f"with `jaxrl-reason eval --orm_workdir {args.workdir}`"
        )
        return
    print(markdown_table(rows, EvalConfig().num_samples))


# eval's flags that only one of its two sources takes.
_RUN_ONLY = ("step",)
_PRETRAINED_ONLY = ("out", "overwrite", "tokenizer", "prompt_format", "num_shots")


def _eval(args: argparse.Namespace) -> None:
    """`eval --workdir RUN` (a run's saved policy) or `eval --init_checkpoint DIR --out
    OUT` (a pretrained model): the same evaluation."""
    from jaxrl_reason.experiment import evaluate_checkpoint, evaluate_workdir

    if (args.workdir is None) == (args.init_checkpoint is None):
        raise ValueError(
            "give exactly one of --workdir RUN_DIR (a run's saved policy) and "
            "--init_checkpoint DIR (an import-hf checkpoint or a HF model directory)"
        )
    given = {k for k, v in vars(args).items() if v is not None and v is not False}
    if args.init_checkpoint is not None:
        if wrong := [f"--{k}" for k in _RUN_ONLY if k in given]:
            raise ValueError(f"{', '.join(wrong)}: only with --workdir (a run's policies)")
        missing = [f"--{k}" for k in ("task", "out") if k not in given]
        if missing:
            raise ValueError(
                f"eval --init_checkpoint needs {' and '.join(missing)}: the task to ask "
                "and the directory eval.json is written to"
            )
        evaluate_checkpoint(
            args.init_checkpoint,
            args.out,
            task=args.task,
            data_dir=args.data_dir,
            k=args.k,
            num_questions=args.num_questions,
            temperature=args.temperature,
            max_new_tokens=args.max_new_tokens,
            prompt=args.prompt_format or "zero_shot",
            num_shots=4 if args.num_shots is None else args.num_shots,
            tokenizer=args.tokenizer,
            orm_workdir=args.orm_workdir,
            overwrite=args.overwrite,
        )
        return
    if wrong := [f"--{k}" for k in _PRETRAINED_ONLY if k in given]:
        raise ValueError(
            f"{', '.join(wrong)}: only with --init_checkpoint (a run writes its eval.json "
            "in its directory, with its own tokenizer and prompt)"
        )
    evaluate_workdir(
        args.workdir,
        task=args.task,
        k=args.k,
        step=args.step,
        data_dir=args.data_dir,
        num_questions=args.num_questions,
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        orm_workdir=args.orm_workdir,
    )


def _names(
    flag: str, text: str, example: str, known: Sequence[str] | None = None
) -> tuple[str, ...]:
    """A comma-separated flag's names; an empty list, or a name not in `known`, is refused
    naming the flag."""
    names = tuple(a.strip() for a in text.split(",") if a.strip())
    if not names:
        raise ValueError(f"{flag} is empty: give comma-separated names, e.g. {flag} {example}")
    if known is not None and (unknown := [n for n in names if n not in known]):
        raise ValueError(f"{flag}: unknown {unknown}; choose from {', '.join(known)}")
    return names


def _demo(args: argparse.Namespace) -> None:
    from jaxrl_reason.algorithms.ppo import PPO_REWARDS
    from jaxrl_reason.demo import run_demo

    run_demo(
        args.workdir,
        algorithms=_names("--algorithms", args.algorithms, "sft,ei"),
        ppo_rewards=_names("--ppo_rewards", args.ppo_rewards, "sparse,dense", PPO_REWARDS),
        scale=args.scale,
        seed=args.seed,
        eval_split=args.split,
    )


def _study(args: argparse.Namespace) -> None:
    from jaxrl_reason.study import run_study

    run_study(args.workdir, scale=args.scale, seed=args.seed, eval_split=args.split)


def _import_hf(args: argparse.Namespace) -> None:
    """A HF directory, or a GGUF file (weights de-quantised, tokenizer written beside)."""
    import time

    from jaxrl_reason.model.gguf import import_gguf_to_checkpoint, is_gguf
    from jaxrl_reason.model.hf_interop import import_hf_to_checkpoint

    start = time.perf_counter()
    if is_gguf(args.src):
        import_gguf_to_checkpoint(args.src, args.dst)
    else:
        import_hf_to_checkpoint(args.src, args.dst)
    print(f"imported {args.src} -> {args.dst} in {time.perf_counter() - start:.1f} s")


def _export_hf(args: argparse.Namespace) -> None:
    from jaxrl_reason.model.hf_interop import export_checkpoint_to_hf

    try:
        export_checkpoint_to_hf(args.src, args.dst, overwrite=args.overwrite, step=args.step)
    except FileExistsError:
        raise ValueError(
            f"{args.dst} exists and is not empty; choose a new destination or pass --overwrite"
        ) from None
    print(f"exported {args.src} -> {args.dst}")


def _train_tokenizer(args: argparse.Namespace) -> None:
    from jaxrl_reason.data.tokenizer import train_tokenizer_for_task

    out = pathlib.Path(args.out if args.out.endswith(".model") else args.out + ".model")
    if pathlib.Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a directory: give a file, e.g. {args.out}/tok.model")
    if out.exists() and not args.overwrite:
        raise FileExistsError(
            f"{out} exists (a run's tokenizer, perhaps: its model needs it as it is); choose "
            "another --out, or pass --overwrite"
        )
    task_kwargs = {} if args.data_dir is None else {"data_dir": args.data_dir}
    tok = train_tokenizer_for_task(
        args.task,
        args.out,
        vocab_size=args.vocab_size,
        num_examples=args.num_examples,
        seed=args.seed,
        **task_kwargs,
    )
    print(f"wrote {out} (vocab {tok.vocab_size})")


def _workdir(text: str) -> str:
    """A --workdir value: not empty (an empty path would be the current directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty: give a directory, e.g. workdirs/run")
    return text


def _job_flags() -> argparse.ArgumentParser:
    """The flags of a subcommand that computes: which process of a multi-process job this
    is (default: the JAX_* variables; on a TPU pod or in Slurm jax finds out itself)."""
    job = argparse.ArgumentParser(add_help=False)
    group = job.add_argument_group(
        "many hosts",
        "one process of a multi-controller job (default: JAX_COORDINATOR_ADDRESS, "
        "JAX_NUM_PROCESSES, JAX_PROCESS_ID; none of them: one process, or on a TPU pod / in "
        "a Slurm job what jax finds)",
    )
    group.add_argument("--coordinator_address", default=None, metavar="HOST:PORT")
    group.add_argument("--num_processes", type=int, default=None)
    group.add_argument("--process_id", type=int, default=None)
    group.add_argument(
        "--init_timeout",
        type=int,
        default=300,
        metavar="SECONDS",
        help="how long to wait for every process to join (default 300)",
    )
    group.add_argument(
        "--find_peers",
        action="store_true",
        help="join the job jax finds by itself (a Cloud TPU pod slice, whose hosts only its "
        "metadata server knows; Slurm, Open MPI): what launch/tpu_pod.sh passes",
    )
    return job


def build_parser() -> argparse.ArgumentParser:
    job = _job_flags()
    parser = argparse.ArgumentParser(
        prog="jaxrl-reason",
        description="Teach language models to reason with RL: SFT, Expert Iteration, PPO, RCRL.",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        "--debug",
        action="store_true",
        help="log at DEBUG level, and show the traceback of an error",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train", parents=[job], help="run the experiment a gin config describes (resumes)"
    )
    p.add_argument("config", nargs="+", help="gin config file(s), e.g. configs/experiments/x.gin")
    p.add_argument(
        "--workdir", required=True, type=_workdir, help="run directory; re-running resumes it"
    )
    p.add_argument(
        "--gin_param",
        action="append",
        default=[],
        metavar="K=V",
        help="gin binding overriding the config files (repeatable)",
    )
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "eval",
        parents=[job],
        help="evaluate a run's saved policy on its test questions (--workdir; writes "
        "eval.json there and changes nothing else; every flag defaults to what the run "
        "used), or a pretrained model (--init_checkpoint DIR --task T --out OUT)",
    )
    p.add_argument("--workdir", default=None, type=_workdir, help="a run directory (train or demo)")
    p.add_argument(
        "--init_checkpoint",
        default=None,
        type=_workdir,
        help="instead of --workdir: an import-hf output directory (from a HF directory or a "
        ".gguf file) or a HF model directory",
    )
    p.add_argument(
        "--out", default=None, type=_workdir, help="with --init_checkpoint: where eval.json goes"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT/eval.json")
    p.add_argument(
        "--tokenizer",
        default=None,
        help="with --init_checkpoint: a tokenizer.json / .model (default: the model directory's)",
    )
    p.add_argument(
        "--prompt_format",
        default=None,
        help="with --init_checkpoint: how questions are asked, a TaskConfig.prompt "
        "(zero_shot, the default 'Q: ...\\nA: ', or few_shot)",
    )
    p.add_argument(
        "--num_shots", type=int, default=None, help="solved examples of few_shot (default 4)"
    )
    p.add_argument(
        "--step", type=int, default=None, help="policy step in WORKDIR/policy (default: newest)"
    )
    p.add_argument(
        "--task", default=None, choices=("gsm8k", "svamp", "arith"), help="default: the run's"
    )
    p.add_argument(
        "--k",
        type=int,
        default=None,
        help="samples per question for maj@K/pass@K (maj@1 is always the greedy decode; "
        "default: the run's K)",
    )
    p.add_argument("--data_dir", default=None, help="directory of the task's files")
    p.add_argument(
        "--num_questions",
        type=int,
        default=None,
        help="evaluate the first N test questions (default: the run's number)",
    )
    p.add_argument("--temperature", type=float, default=None, help="default: the run's")
    p.add_argument(
        "--max_new_tokens",
        type=int,
        default=None,
        help="default: the run's, or what the model's context leaves after the prompt",
    )
    p.add_argument(
        "--orm_workdir",
        default=None,
        help="a run directory holding a trained ORM, for rerank@K (default: this run's own ORM, "
        "if it trained one)",
    )
    p.set_defaults(func=_eval)

    p = sub.add_parser(
        "demo", parents=[job], help="the built-in end-to-end demo on the `arith` task"
    )
    p.add_argument("--workdir", default="workdirs/demo", type=_workdir)
    p.add_argument(
        "--algorithms",
        default="sft,ei",
        help="comma-separated subset of sft,ei,ppo,rcrl,orm,grpo,dr_grpo,rloo,gspo,dapo (ppo "
        "runs once per --ppo_rewards; a GRPO variant takes a reward as e.g. dapo:dense; the "
        "ORM is trained when a reward needs it or 'orm' is listed)",
    )
    p.add_argument(
        "--ppo_rewards",
        default="sparse,dense,orm",
        help="comma-separated PPO rewards: sparse, dense, orm, dense_orm",
    )
    p.add_argument(
        "--scale",
        default="default",
        choices=("default", "smoke"),
        help="'smoke' is a seconds-long setting for tests",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--split",
        default="test",
        choices=("test", "val"),
        help="what the table reports on: the held-out test questions, or the validation "
        "questions carved from the training split (for choosing settings)",
    )
    p.set_defaults(func=_demo)

    p = sub.add_parser(
        parents=[job],
        name="study",
        help="the paper's five findings on arith: every method at equal samples, SFT "
        "epochs, exploration; writes report.md with figures and a verdict per finding",
    )
    p.add_argument("--workdir", default="workdirs/study", type=_workdir)
    p.add_argument("--scale", default="default", choices=("default", "smoke"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="test", choices=("test", "val"))
    p.set_defaults(func=_study)

    p = sub.add_parser(
        "import-hf",
        help="HF directory (Llama, Qwen2/3, Gemma 2/3), or a llama.cpp .gguf file "
        "(de-quantised; its tokenizer written as tokenizer.json beside), -> orbax checkpoint "
        "+ config",
    )
    p.add_argument("src", help="a HF model directory or a .gguf file")
    p.add_argument("dst")
    p.set_defaults(func=_import_hf)

    p = sub.add_parser(
        "export-hf",
        help="a run directory's policy (or an import-hf checkpoint) -> HF directory",
    )
    p.add_argument("src", help="a run directory (with run.json) or an import-hf checkpoint")
    p.add_argument("dst")
    p.add_argument(
        "--step",
        type=int,
        default=None,
        help="which saved policy of a run directory (run.json's policy_step); default: newest",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a DST that is not empty")
    p.set_defaults(func=_export_hf)

    p = sub.add_parser("train-tokenizer", help="train a sentencepiece model on a task's text")
    p.add_argument("--task", default="arith", choices=("gsm8k", "svamp", "arith"))
    p.add_argument("--out", required=True, help="output .model path")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--vocab_size", type=int, default=512)
    p.add_argument("--num_examples", type=int, default=5000)
    p.add_argument("--data_dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_train_tokenizer)
    return parser


_LIBRARIES = re.compile(r"[/\\](gin|orbax|absl|etils)[/\\]")


def _quiet_libraries(record: logging.LogRecord) -> bool:
    """Drop a library's log record (gin's "Path not found", orbax's parse failures): the
    error they lead to is reported by us in one line."""
    return not _LIBRARIES.search(record.pathname or "")


_COMPUTES = ("train", "demo", "study")  # SIGTERM finishes and saves the unit of work


def _join_job(args: argparse.Namespace) -> None:
    """Join the multi-process job when this process is one of several (see `_job_flags`)."""
    from jaxrl_reason.parallel import join_job

    if hasattr(args, "init_timeout"):
        join_job(
            args.coordinator_address,
            args.num_processes,
            args.process_id,
            args.init_timeout,
            what=f"jaxrl-reason {args.command}",
            find_peers=args.find_peers,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand. Any error ends in one line, `jaxrl-reason CMD: error: ...` and exit
    status 2 (the traceback with -v/--debug); SIGTERM ends training after saving, with
    how to resume, and exit status 143."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(  # before importing jax (absl would configure logging first)
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("absl", "jax._src", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING if args.verbose else logging.ERROR)
    if not args.verbose:  # libraries' own error logs before ours (orbax, gin): -v shows them
        for handler in logging.getLogger().handlers:
            handler.addFilter(_quiet_libraries)
    from jaxrl_reason.training.preemption import Preempted, abort_on_sigterm, defer_sigterm

    signals = defer_sigterm() if args.command in _COMPUTES else abort_on_sigterm(args.command)
    try:
        with signals:
            _join_job(args)
            args.func(args)
    except Preempted as stop:
        print(f"jaxrl-reason {args.command}: {stop}", file=sys.stderr)
        return stop.code
    except KeyboardInterrupt:
        print(f"jaxrl-reason {args.command}: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every error ends in one line (see -v)
        if args.verbose:
            traceback.print_exc()
        print(f"jaxrl-reason {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    return 0


def _one_line(err: BaseException) -> str:
    """The error's message on one line; an error of ours says what to do, another gets its
    type named and a pointer to -v."""
    from jaxrl_reason.training.checkpointing import CheckpointRestoreError

    text = " ".join(str(err).split()) or type(err).__name__
    text = re.sub(r"\s*In call to configurable '.*$", "", text)  # gin's suffix: noise here
    if isinstance(err, OSError) and err.filename is not None:  # the system's: say what to do
        return f"{err.filename}: {err.strerror or text}; {_OS_FIXES.get(err.errno, _OS_FIX)}"
    from jaxrl_reason.parallel import OtherProcessError

    ours = (ValueError, FileNotFoundError, FileExistsError, FloatingPointError)
    if isinstance(err, (*ours, CheckpointRestoreError, OtherProcessError)):
        return text
    if "RESOURCE_EXHAUSTED" in text:
        return (
            "out of device memory: lower what runs at once (eval's --k, a phase's batch_size, "
            f"prompts_per_call or num_samples) and re-run ({text[:160]})"
        )
    return f"{type(err).__name__}: {text} (an unexpected error: run with -v for the traceback)"


_OS_FIX = "check the path and its permissions"
_OS_FIXES = {
    errno.ENOTDIR: "a part of the path is a file, not a directory: choose another path",
    errno.EEXIST: "a part of the path is a file, not a directory: choose another path",
    errno.EROFS: "the file system is read-only: choose a writable path",
    errno.EACCES: "it is not writable (or readable) by you: choose another path",
    errno.ENOSPC: "the disk is full: free space and re-run (the run resumes)",
}


if __name__ == "__main__":
    sys.exit(main())
