"""One experiment in one workdir: task, tokenizer, model, then SFT and the RL algorithms.

`jaxrl-reason train CONFIG.gin --workdir DIR` calls `run_from_config`; the demo calls
`train_experiment` with its built-in settings. The workdir holds:

  run.json              model config, tokenizer path, prompt format, task (for `eval`)
  config.gin            the resolved gin config
  tokenizer.model       when the tokenizer was trained for this run
  sft/ ei/ rcrl/        each algorithm's checkpoints, metrics and state
  ppo_<reward>/         one PPO run per reward (sparse, dense, orm, dense_orm)
  orm/                  the outcome reward model: labelled samples, checkpoints, orm/
  policy/               params after each finished phase (`eval --step N` reads these)
  results.json / .md    one row per method: maj@1, maj@K, rerank@K, pass@K, samples drawn
  eval.json             written by `jaxrl-reason eval`

Re-running the same command on the same workdir resumes every phase where it stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gin
import jax

from jaxrl_reason.algorithms.expert_iteration import ExpertIterationConfig, run_expert_iteration
from jaxrl_reason.algorithms.orm_scoring import ORMScorer, load_orm
from jaxrl_reason.algorithms.orm_training import ORMConfig, run_orm_training
from jaxrl_reason.algorithms.policy import Policy, load_policy, save_policy
from jaxrl_reason.algorithms.ppo import PPO_REWARDS, PPOConfig, run_ppo
from jaxrl_reason.algorithms.rcrl import RCRLConfig, rcrl_policy, run_rcrl
from jaxrl_reason.algorithms.return_conditioning import return_tokens
from jaxrl_reason.algorithms.sft import SFTConfig, flat_summary, run_sft
from jaxrl_reason.data.prompts import PromptFormat, prompt_format
from jaxrl_reason.data.tasks import load_task
from jaxrl_reason.data.tokenizer import load_tokenizer, train_tokenizer_for_task
from jaxrl_reason.evaluation.evaluate import EvalConfig, Scorer
from jaxrl_reason.evaluation.report import markdown_table, plot_accuracy_vs_samples, write_json
from jaxrl_reason.model import ModelConfig, init_params, model_config, param_logical_axes
from jaxrl_reason.parallel import logical_shardings, make_mesh
from jaxrl_reason.training.optimizer import OptimizerConfig

log = logging.getLogger(__name__)
ALGORITHMS = ("sft", "ei", "ppo", "rcrl", "orm")


def _task_kwargs(task: str, data_dir: str | None, seed: int) -> dict[str, Any]:
    if task == "arith":
        return {"seed": seed}
    if data_dir is None:
        raise ValueError(
            f"task {task!r} needs data_dir: the directory holding its files "
            "(e.g. ../shared/data/gsm8k)"
        )
    return {"data_dir": data_dir}


def load_examples(
    task: str, data_dir: str | None, seed: int, num_train: int | None, num_eval: int | None
) -> tuple[list, list]:
    kwargs = _task_kwargs(task, data_dir, seed)
    if task == "arith":
        train = load_task(task, "train", num_examples=num_train, **kwargs)
        test = load_task(task, "test", num_examples=num_eval, **kwargs)
    else:
        train = load_task(task, "train", **kwargs)[:num_train]
        test = load_task(task, "test", **kwargs)[:num_eval]
    return train, test


def _policy_from_run(run: dict[str, Any], mesh: Any = None) -> Policy:
    fmt = PromptFormat(
        **{k: (tuple(v) if isinstance(v, list) else v) for k, v in run["prompt_format"].items()}
    )
    return Policy(ModelConfig(**run["model_config"]), load_tokenizer(run["tokenizer"]), fmt, mesh)


def _mesh_or_none() -> Any:
    return make_mesh() if jax.device_count() > 1 else None


def _check_same_run(path: Path, run: dict[str, Any]) -> None:
    """Refuse to resume a workdir that holds a different run, before anything is touched.

    Its checkpoints would not fit this model, and its results would be mixed with ours.
    """
    if not path.exists():
        return
    old = json.loads(path.read_text())
    keys = ("task", "model_config", "prompt_format")
    changed = [
        k
        for k in keys
        if json.dumps(old.get(k), sort_keys=True)
        != json.dumps(json.loads(json.dumps(run[k])), sort_keys=True)
    ]
    if changed:
        raise ValueError(
            f"{path.parent} holds a run with a different {', '.join(changed)}; nothing was "
            "changed there. Use a new --workdir, or the settings that run was started with."
        )


def _load_pretrained(path: str, mesh: Any) -> tuple[ModelConfig, Any]:
    """An `import-hf` checkpoint, each tensor placed straight onto its sharding."""
    from jaxrl_reason.model.hf_interop import load_checkpoint, model_config_from_json

    config = model_config_from_json((Path(path) / "model_config.json").read_text())
    shardings = None
    if mesh is not None:
        shardings = logical_shardings(param_logical_axes(config), mesh)
    return load_checkpoint(path, shardings)


@gin.configurable
def train_experiment(
    workdir: str | os.PathLike,
    task: str = "arith",
    algorithms: Sequence[str] = ("sft", "ei"),
    data_dir: str | None = None,
    num_train: int | None = None,
    num_eval: int | None = 200,
    tokenizer_path: str | None = None,
    tokenizer_vocab_size: int = 512,
    init_checkpoint: str | None = None,
    model: ModelConfig | None = None,
    dtype: str | None = None,
    remat: bool | None = None,
    prompt: str = "zero_shot",
    num_shots: int = 4,
    seed: int = 0,
    sft: SFTConfig | None = None,
    ei: ExpertIterationConfig | None = None,
    ppo: PPOConfig | None = None,
    ppo_rewards: Sequence[str] = ("sparse", "dense", "orm"),
    rcrl: RCRLConfig | None = None,
    orm: ORMConfig | None = None,
    optimizer: OptimizerConfig | None = None,
    evaluation: EvalConfig | None = None,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Run the configured algorithms; every RL method starts from SFT's result if SFT runs.

    `algorithms` is a subset of ALGORITHMS. "ppo" runs one PPO per entry of `ppo_rewards`
    (PPO_REWARDS). The ORM is trained (from the start policy's samples) when "orm" is
    listed or a PPO reward needs it; once trained, every evaluation reports rerank@K.
    `model` defaults to gin's `model_config()` (its vocab_size is set from the tokenizer);
    `init_checkpoint` (an `import-hf` output directory) replaces it with a pretrained model;
    `dtype` (compute dtype, e.g. "bfloat16") and `remat` override the model's when set.
    `prompt` is "zero_shot" or "few_shot" (`num_shots` train exemplars, for a pretrained
    start). Returns the results rows (also written to results.json / .md / .png).
    """
    unknown = [a for a in algorithms if a not in ALGORITHMS]
    unknown += [f"ppo reward {r}" for r in ppo_rewards if r not in PPO_REWARDS]
    if unknown:
        raise ValueError(
            f"unknown algorithm(s) {unknown}; choose from {ALGORITHMS} and PPO rewards "
            f"from {PPO_REWARDS}"
        )
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    sft, ei, rcrl = sft or SFTConfig(), ei or ExpertIterationConfig(), rcrl or RCRLConfig()
    ppo, orm = ppo or PPOConfig(), orm or ORMConfig()
    optimizer, evaluation = optimizer or OptimizerConfig(), evaluation or EvalConfig()
    train, test = load_examples(task, data_dir, seed, num_train, num_eval)

    if tokenizer_path is None:
        tokenizer_path = str(workdir / "tokenizer.model")
        if not Path(tokenizer_path).exists():
            train_tokenizer_for_task(
                task,
                tokenizer_path,
                vocab_size=tokenizer_vocab_size,
                # RCRL's return tokens as single pieces (they change the tokenizer,
                # so only when RCRL runs; elsewhere they would be plain text).
                user_defined_symbols=return_tokens(rcrl.num_bins) if "rcrl" in algorithms else (),
                **_task_kwargs(task, data_dir, seed),
            )
    tokenizer = load_tokenizer(tokenizer_path)
    mesh = _mesh_or_none()
    if init_checkpoint is not None:
        config, params = _load_pretrained(init_checkpoint, mesh)
    else:
        config = (model or model_config()).replace(vocab_size=tokenizer.vocab_size)
        params = init_params(config, jax.random.key(seed))
    if dtype is not None:
        config = config.replace(dtype=dtype)
    if remat is not None:
        config = config.replace(remat=remat)
    fmt = prompt_format(kind=prompt, exemplars=train, num_shots=num_shots, seed=seed)
    policy = Policy(config, tokenizer, fmt, mesh)
    run = {
        "task": task,
        "data_dir": data_dir,
        "tokenizer": os.path.abspath(tokenizer_path),
        "model_config": dataclasses.asdict(config),
        "algorithms": list(algorithms),
        "prompt_format": dataclasses.asdict(fmt),
    }
    _check_same_run(workdir / "run.json", run)
    write_json(workdir / "run.json", run)

    rows, curves = [], {}
    start = params
    if "sft" in algorithms:
        start, _ = run_sft(
            policy, params, train, test, sft, optimizer, evaluation, workdir / "sft", show_progress
        )
    scorer = None
    ppo_runs = list(ppo_rewards) if "ppo" in algorithms else []
    if "orm" in algorithms or any(r in ("orm", "dense_orm") for r in ppo_runs):
        orm_params, summary = run_orm_training(
            policy, start, train, orm, optimizer, workdir / ORM_DIR, show_progress
        )
        scorer = ORMScorer(policy, orm_params)
        log.info("ORM: %s", summary)
    finish = functools.partial(_finish, policy, test, evaluation, workdir, scorer, rows, curves)
    if "sft" in algorithms:
        finish("SFT", "sft", start, [])
    if "ei" in algorithms:
        params, history = run_expert_iteration(
            policy, start, train, test, ei, optimizer, evaluation, workdir, show_progress
        )
        last_round = workdir / "ei" / f"eval_round_{len(history)}.json"
        finish("EI", "ei", params, history, None if scorer else last_round)
    for reward in ppo_runs:
        cfg = dataclasses.replace(ppo, reward=reward)
        phase = f"ppo_{reward}"
        params, history = run_ppo(
            policy,
            start,
            train,
            test,
            cfg,
            optimizer,
            evaluation,
            workdir / phase,
            orm_scorer=scorer,
            show_progress=show_progress,
        )
        finish(f"PPO {PPO_NAMES[reward]}", phase, params, history)
    if "rcrl" in algorithms:
        params, history = run_rcrl(
            policy, start, train, test, rcrl, optimizer, evaluation, workdir, show_progress
        )
        last_round = workdir / "rcrl" / f"eval_round_{len(history)}.json"
        conditioned = rcrl_policy(policy, rcrl.num_bins)
        finish("RCRL", "rcrl", params, history, None if scorer else last_round, conditioned)
    write_results(workdir, rows, curves, evaluation.num_samples)
    return rows


ORM_DIR = "orm"  # run_orm_training's directory in a run
PPO_NAMES = {"sparse": "sparse", "dense": "dense", "orm": "ORM", "dense_orm": "dense ORM"}


def _finish(
    policy: Policy,
    test: Sequence,
    evaluation: EvalConfig,
    workdir: Path,
    scorer: Any,
    rows: list[dict[str, Any]],
    curves: dict[str, list[tuple[int, float]]],
    method: str,
    phase: str,
    params: Any,
    history: list[dict[str, Any]],
    done: Path | None = None,
    eval_policy: Policy | None = None,
) -> None:
    """Evaluate a finished method, add its row and its maj@1-against-samples curve."""
    drawn = history[-1]["samples_drawn"] if history else 0
    result = _final_eval(
        eval_policy or policy, params, test, evaluation, workdir, phase, drawn, done, scorer
    )
    rows.append({"method": method, **result["summary"], "samples": drawn})
    points = [
        (h["samples_drawn"], h["eval"]["maj@1"]) for h in history if "maj@1" in h.get("eval", {})
    ]
    curves[method] = (
        [*curves.get("SFT", []), *points] if history else [(0, result["summary"]["maj@1"])]
    )


def _final_eval(
    policy: Policy,
    params: Any,
    test: Sequence,
    cfg: EvalConfig,
    workdir: Path,
    phase: str,
    samples_drawn: int,
    done: Path | None = None,
    scorer: Scorer | None = None,
) -> dict[str, Any]:
    """Evaluate a finished phase once (cached in workdir/<phase>_eval.json) and save it.

    `done`: an evaluation of these params already on disk (e.g. EI's last round), reused.
    `scorer` (a trained ORM) adds rerank@K.
    """
    path = workdir / f"{phase}_eval.json"
    if path.exists():
        return json.loads(path.read_text())
    if done is not None and done.exists():
        result = json.loads(done.read_text())
    else:
        result = policy.evaluate(params, test, cfg, scorer)
    save_policy(
        workdir, params, {"phase": phase, "samples_drawn": samples_drawn, **flat_summary(result)}
    )
    write_json(path, result)
    return result


def write_results(
    workdir: Path, rows: list[dict[str, Any]], curves: dict[str, list[tuple[int, float]]], k: int
) -> str:
    table = markdown_table(rows, k)
    write_json(workdir / "results.json", {"k": k, "rows": rows, "curves": curves})
    (workdir / "results.md").write_text(table + "\n")
    if curves:
        plot_accuracy_vs_samples(curves, workdir / "results.png")
    return table


def run_from_config(
    config_files: Sequence[str], bindings: Sequence[str], workdir: str | os.PathLike
) -> None:
    """`jaxrl-reason train`: parse gin, record the resolved config, run the experiment."""
    from jaxrl_reason.configuration import parse_config, write_resolved_config

    parse_config(config_files, bindings)
    Path(workdir).mkdir(parents=True, exist_ok=True)
    rows = train_experiment(workdir)
    write_resolved_config(workdir)
    print(markdown_table(rows, EvalConfig().num_samples))


def load_run(
    workdir: str | os.PathLike, step: int | None = None
) -> tuple[Policy, Any, dict[str, Any]]:
    """(policy, params, meta) of a run directory's newest (or `step`) saved policy.

    The params land on the run's mesh when several devices are present.
    """
    run_path = Path(workdir) / "run.json"
    if not run_path.exists():
        raise FileNotFoundError(
            f"{run_path} not found: {workdir} is not a jaxrl_reason run "
            "directory (train one with `jaxrl-reason train` or `demo`)"
        )
    policy = _policy_from_run(json.loads(run_path.read_text()), _mesh_or_none())
    config = policy.model_config
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    if policy.mesh is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, shapes)
    else:
        shardings = logical_shardings(param_logical_axes(config), policy.mesh)
    target = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings
    )
    params, meta = load_policy(workdir, target, step)
    return policy, params, meta


def _orm_scorer(run_dir: Path, required: bool) -> ORMScorer | None:
    """The ORM trained in run directory `run_dir` (its `orm/`), or None if it has none."""
    if not (run_dir / ORM_DIR / "orm").is_dir():
        if required:
            raise FileNotFoundError(
                f"{run_dir} holds no trained ORM ({run_dir / ORM_DIR / 'orm'} is missing): "
                "train one with algorithms including 'orm' or a PPO ORM reward"
            )
        return None
    run_path = run_dir / "run.json"
    if not run_path.exists():
        raise FileNotFoundError(f"{run_path} not found: {run_dir} is not a jaxrl_reason run")
    policy = _policy_from_run(json.loads(run_path.read_text()), _mesh_or_none())
    params, _ = load_orm(run_dir / ORM_DIR, policy)
    return ORMScorer(policy, params)


def evaluate_workdir(
    workdir: str | os.PathLike,
    task: str,
    k: int,
    step: int | None = None,
    data_dir: str | None = None,
    num_questions: int | None = None,
    temperature: float = 0.7,
    max_new_tokens: int = 256,
    orm_workdir: str | None = None,
) -> dict[str, Any]:
    """`jaxrl-reason eval`: evaluate a saved policy of a run and write `eval.json`.

    rerank@K uses the ORM trained in `orm_workdir` (a run directory), by default the
    run's own ORM when it trained one.
    """
    policy, params, meta = load_run(workdir, step)
    if meta.get("phase") == "rcrl":  # an RCRL policy answers prompts with the best token
        state = json.loads((Path(workdir) / "rcrl" / "state.json").read_text())
        policy = rcrl_policy(policy, state["num_bins"])
    scorer = _orm_scorer(Path(orm_workdir or workdir), required=orm_workdir is not None)
    run = json.loads((Path(workdir) / "run.json").read_text())
    data_dir = data_dir or run.get("data_dir")
    _, test = load_examples(task, data_dir, 0, None, num_questions)
    cfg = EvalConfig(num_samples=k, temperature=temperature, max_new_tokens=max_new_tokens)
    result = policy.evaluate(params, test, cfg, scorer)
    result.update(task=task, policy_meta=meta, workdir=str(workdir))
    write_json(Path(workdir) / "eval.json", result)
    row = {
        "method": meta.get("phase", "policy"),
        **result["summary"],
        "samples": meta.get("samples_drawn", 0),
    }
    print(markdown_table([row], k))
    return result
