"""The `jaxrl-reason` command: subcommands that parse arguments and call the library."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def _train(args: argparse.Namespace) -> None:
    """Parse gin, run the experiment, record the resolved config."""
    from jaxrl_reason.configuration import parse_config, write_resolved_config
    from jaxrl_reason.evaluation.evaluate import EvalConfig
    from jaxrl_reason.evaluation.report import markdown_table
    from jaxrl_reason.experiment import train_experiment

    parse_config(args.config, args.gin_param)
    rows = train_experiment(args.workdir)
    write_resolved_config(args.workdir)
    print(markdown_table(rows, EvalConfig().num_samples))


def _eval(args: argparse.Namespace) -> None:
    from jaxrl_reason.experiment import evaluate_workdir

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


def _demo(args: argparse.Namespace) -> None:
    from jaxrl_reason.demo import run_demo

    run_demo(
        args.workdir,
        algorithms=tuple(a for a in args.algorithms.split(",") if a),
        ppo_rewards=tuple(r for r in args.ppo_rewards.split(",") if r),
        scale=args.scale,
        seed=args.seed,
        eval_split=args.split,
    )


def _study(args: argparse.Namespace) -> None:
    from jaxrl_reason.study import run_study

    run_study(args.workdir, scale=args.scale, seed=args.seed, eval_split=args.split)


def _import_hf(args: argparse.Namespace) -> None:
    from jaxrl_reason.model.hf_interop import import_hf_to_checkpoint

    import_hf_to_checkpoint(args.src, args.dst)
    print(f"imported {args.src} -> {args.dst}")


def _export_hf(args: argparse.Namespace) -> None:
    from jaxrl_reason.model.hf_interop import export_checkpoint_to_hf

    export_checkpoint_to_hf(args.src, args.dst)
    print(f"exported {args.src} -> {args.dst}")


def _train_tokenizer(args: argparse.Namespace) -> None:
    from jaxrl_reason.data.tokenizer import train_tokenizer_for_task

    task_kwargs = {} if args.data_dir is None else {"data_dir": args.data_dir}
    tok = train_tokenizer_for_task(
        args.task,
        args.out,
        vocab_size=args.vocab_size,
        num_examples=args.num_examples,
        seed=args.seed,
        **task_kwargs,
    )
    print(f"wrote {args.out} (vocab {tok.vocab_size})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxrl-reason",
        description="Teach language models to reason with RL: SFT, Expert Iteration, PPO, RCRL.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="run the experiment a gin config describes (resumes)")
    p.add_argument("config", nargs="+", help="gin config file(s), e.g. configs/experiments/x.gin")
    p.add_argument("--workdir", required=True, help="run directory; re-running resumes it")
    p.add_argument(
        "--gin_param",
        action="append",
        default=[],
        metavar="K=V",
        help="gin binding overriding the config files (repeatable)",
    )
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="evaluate a run's checkpoint; writes eval.json")
    p.add_argument("--workdir", required=True)
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--task", required=True, choices=("gsm8k", "svamp", "arith"))
    p.add_argument("--k", type=int, default=16, help="samples per question for @K metrics")
    p.add_argument("--data_dir", default=None, help="directory of the task's files")
    p.add_argument("--num_questions", type=int, default=None, help="evaluate the first N only")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument(
        "--orm_workdir",
        default=None,
        help="a run directory holding a trained ORM, for rerank@K (default: this run's own ORM, "
        "if it trained one)",
    )
    p.set_defaults(func=_eval)

    p = sub.add_parser("demo", help="the built-in end-to-end demo on the `arith` task")
    p.add_argument("--workdir", default="workdirs/demo")
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
        "study",
        help="the paper's five findings on arith: every method at equal samples, SFT "
        "epochs, exploration; writes report.md with figures and a verdict per finding",
    )
    p.add_argument("--workdir", default="workdirs/study")
    p.add_argument("--scale", default="default", choices=("default", "smoke"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="test", choices=("test", "val"))
    p.set_defaults(func=_study)

    p = sub.add_parser("import-hf", help="HF Llama directory -> orbax checkpoint + config")
    p.add_argument("src")
    p.add_argument("dst")
    p.set_defaults(func=_import_hf)

    p = sub.add_parser("export-hf", help="orbax checkpoint + config -> HF Llama directory")
    p.add_argument("src")
    p.add_argument("dst")
    p.set_defaults(func=_export_hf)

    p = sub.add_parser("train-tokenizer", help="train a sentencepiece model on a task's text")
    p.add_argument("--task", default="arith", choices=("gsm8k", "svamp", "arith"))
    p.add_argument("--out", required=True, help="output .model path")
    p.add_argument("--vocab_size", type=int, default=512)
    p.add_argument("--num_examples", type=int, default=5000)
    p.add_argument("--data_dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_train_tokenizer)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("absl", "jax._src", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"jaxrl-reason {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
