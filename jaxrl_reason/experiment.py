"""One experiment in one workdir: a task, a model, then SFT and the registered RL algorithms.

`jaxrl-reason train CONFIG.gin --workdir DIR` and `jaxrl-reason demo` call
`train_experiment`. Every RL algorithm starts from SFT's result (or the initial model when
SFT is not listed) and runs on the one loop (`algorithms/rounds.py`); an algorithm that
needs the ORM gets one trained first. The workdir holds:

  run.json              layout version, task, model config, tokenizer, prompt format, and for
                        each finished phase what `eval` needs (policy step, prompt format);
                        `hosts`: the process and device counts of the latest start
  config.gin            the resolved gin config (`jaxrl-reason train`)
  tokenizer.model       when the tokenizer was trained for this run
  sft/                  SFT's checkpoints and metrics
  <phase>/              each RL phase (ei, rcrl, ppo_<reward>, orm): its phase state, round
                        scratch and metrics (see algorithms/rounds.py)
  policy/               params after each finished phase (`eval --step N` reads these)
  <phase>_eval.json     each phase's final evaluation
  results.json / .md    one row per method: maj@1, maj@K, rerank@K, pass@K, samples drawn
  results.png           maj@1 against samples drawn
  eval.json             written by `jaxrl-reason eval`

Re-running the same command on the same workdir resumes every phase where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gin
import jax

from jaxrl_reason.algorithms.orm_scoring import ORMScorer, load_orm
from jaxrl_reason.algorithms.policy import Policy
from jaxrl_reason.algorithms.registry import build_algorithm, names
from jaxrl_reason.algorithms.rounds import PhaseContext, PhaseResult, run_rounds
from jaxrl_reason.algorithms.sft import SFTConfig, run_sft
from jaxrl_reason.data.prompts import PromptFormat, prompt_format
from jaxrl_reason.data.tasks import TASKS, load_task
from jaxrl_reason.data.tokenizer import load_tokenizer, train_tokenizer_for_task
from jaxrl_reason.evaluation.evaluate import EvalConfig, flat_summary
from jaxrl_reason.evaluation.report import (
    compare_to_baseline,
    markdown_table,
    plot_accuracy_vs_samples,
    table_note,
)
from jaxrl_reason.model import LoraConfig, ModelConfig, init_params, lora, model_config
from jaxrl_reason.parallel import check_shared_workdir, make_mesh, on_main_process
from jaxrl_reason.run_files import read_json, write_json
from jaxrl_reason.training.checkpointing import (
    CheckpointRestoreError,
    abstract_params,
    load_params,
    move_aside,
    save_params,
)
from jaxrl_reason.training.optimizer import OptimizerConfig
from jaxrl_reason.training.preemption import stop_if_requested
from jaxrl_reason.validation import NON_NEGATIVE, POSITIVE, Spec, validate

log = logging.getLogger(__name__)

LAYOUT = 2  # of a run directory; 1 (no "layout" in run.json) is before the one loop
_write_json = on_main_process(write_json)  # a run file: process 0 writes, every process waits
ORM_PHASE = "orm"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """Which questions: the task, where its files are, how many, and how they are asked.

    The training questions split three ways. The last `num_val` of them are a validation
    split (never trained on) for choosing settings; of the others, `num_train`, the first
    `num_sft` come with their reference solutions for SFT, and the RL algorithms sample
    from all `num_train` using only their final answers (the realistic setting: a few
    solved problems, many more questions with answers). `eval_split` is what every row of
    the results is measured on: "test" (read once per reported run) or "val" (tuning).
    """

    name: str = "arith"  # "arith" (built in), "gsm8k" or "svamp"
    data_dir: str | None = None  # the task's files (not needed for arith)
    num_train: int | None = None  # None: every training question
    num_eval: int | None = 200  # held-out test questions; None: all
    # or "few_shot": `num_shots` train exemplars (pretrained start); or "chat": the model's
    # chat template (instruct models; `prompt_format.system` / `.instruction` in gin)
    prompt: str = "zero_shot"
    num_shots: int = 4
    num_val: int = 0  # validation questions carved from the end of the training split
    num_sft: int | None = None  # training questions SFT learns from; None: all num_train
    eval_split: str = "test"  # "test" or "val"

    def __post_init__(self) -> None:
        validate(
            self,
            {
                "name": Spec(choices=tuple(TASKS)),
                "prompt": Spec(choices=("zero_shot", "few_shot", "chat")),
                "num_shots": POSITIVE,
                "num_val": NON_NEGATIVE,
            },
        )
        if self.eval_split not in ("test", "val"):
            raise ValueError(
                f"TaskConfig.eval_split must be 'test' or 'val', got {self.eval_split!r}"
            )
        if self.eval_split == "val" and self.num_val <= 0:
            raise ValueError("TaskConfig.eval_split='val' needs num_val > 0 validation questions")
        for field in ("num_train", "num_eval", "num_sft"):
            value = getattr(self, field)
            if value is not None and value <= 0:
                raise ValueError(f"TaskConfig.{field} must be > 0 or None (all), got {value}")
        if self.num_val < 0:
            raise ValueError(f"TaskConfig.num_val must be >= 0, got {self.num_val}")
        if None not in (self.num_sft, self.num_train) and self.num_sft > self.num_train:
            raise ValueError(
                f"TaskConfig.num_sft ({self.num_sft}) must be <= num_train ({self.num_train}): "
                "SFT's questions are the first num_sft training questions"
            )


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ModelSetup:
    """Which model: a config trained from scratch, or an `import-hf` checkpoint."""

    config: ModelConfig | None = None  # None: gin's `model_config()`; vocab from the tokenizer
    init_checkpoint: str | None = None  # an `import-hf` output directory (replaces `config`)
    tokenizer_path: str | None = None  # None: train a sentencepiece model on the task
    tokenizer_vocab_size: int = 512
    dtype: str | None = None  # compute dtype over the model's, e.g. "bfloat16"
    remat: bool | None = None
    lora: LoraConfig | None = None  # train LoRA adapters (and heads) only; QLoRA's base

    def __post_init__(self) -> None:
        validate(self, {"tokenizer_vocab_size": POSITIVE})


@dataclasses.dataclass(frozen=True)
class TaskData:
    """A task's questions as an experiment uses them (see `TaskConfig`)."""

    train: list  # RL's questions (answers only); SFT's are the first of them
    sft: list  # with reference solutions
    val: list
    test: list
    eval_split: str = "test"

    @property
    def eval(self) -> list:
        """The split every row of the results is measured on."""
        return self.test if self.eval_split == "test" else self.val


def load_task_data(task: TaskConfig, seed: int) -> TaskData:
    """The train / SFT / validation / test questions of `task` (disjoint except SFT ⊂ train)."""
    kwargs = _task_kwargs(task.name, task.data_dir, seed)
    if task.name == "arith":
        n = None if task.num_train is None else task.num_train + task.num_val
        pool = load_task("arith", "train", num_examples=n, **kwargs)
        test = load_task("arith", "test", num_examples=task.num_eval, **kwargs)
    else:
        pool = load_task(task.name, "train", **kwargs)
        test = load_task(task.name, "test", **kwargs)[: task.num_eval]
    if task.num_val >= len(pool):
        raise ValueError(
            f"TaskConfig.num_val={task.num_val} leaves no training questions of {len(pool)}"
        )
    cut = len(pool) - task.num_val
    train, val = pool[:cut][: task.num_train], pool[cut:]
    return TaskData(train, train[: task.num_sft], val, test, task.eval_split)


def load_examples(task: TaskConfig, seed: int) -> tuple[list, list]:
    """(train, evaluation) examples of `task`: RL's training questions and the split that
    `task.eval_split` names."""
    data = load_task_data(task, seed)
    return data.train, data.eval


def _task_kwargs(task: str, data_dir: str | None, seed: int) -> dict[str, Any]:
    if task == "arith":
        return {"seed": seed}
    if data_dir is None:
        raise ValueError(
            f"task {task!r} needs data_dir: the directory holding its files "
            "(e.g. ../shared/data/gsm8k)"
        )
    return {"data_dir": data_dir}


@gin.configurable
def train_experiment(
    workdir: str | os.PathLike,
    task: TaskConfig | None = None,
    model: ModelSetup | None = None,
    algorithms: Sequence[str] = ("sft", "ei"),
    configs: Mapping[str, Any] | None = None,
    optimizer: OptimizerConfig | None = None,
    evaluation: EvalConfig | None = None,
    seed: int = 0,
    show_progress: bool = True,
    on_start: Callable[[Path], None] | None = None,
) -> list[dict[str, Any]]:
    """Run SFT (when listed) and then each listed RL algorithm from its result.

    `algorithms` holds "sft" and names of `algorithms.registry` ("ei", "ppo:dense" ...);
    `configs` maps a name ("sft", "ei", "ppo" ...) to its settings, and a name it lacks
    gets its settings class built by gin. `seed` seeds the built-in task, the initial
    weights and the few-shot exemplars. `on_start(workdir)` is called once every setting
    has been checked, before any work (`train` writes config.gin there). Returns the
    results rows (also written to results.json / .md / .png).
    """
    algorithms = _algorithm_list(algorithms)
    configs = dict(configs or {})
    rl = [build_algorithm(n, configs) for n in algorithms if n != "sft"]  # refuses bad names
    if any(a.needs_orm for a in rl) and not any(a.makes_scorer for a in rl):
        rl.insert(0, build_algorithm(ORM_PHASE, configs))
    phases = [a.phase for a in rl]
    if twice := sorted({p for p in phases if phases.count(p) > 1}):
        raise ValueError(
            f"algorithms {list(algorithms)} run phase(s) {twice} twice; list each once"
        )
    sft = (configs.get("sft") or SFTConfig()) if "sft" in algorithms else None
    task, model = task or TaskConfig(), model or ModelSetup()
    optimizer, evaluation = optimizer or OptimizerConfig(), evaluation or EvalConfig()
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"--workdir {workdir} is a file, not a directory: pick another path")
    if not (workdir / "run.json").exists():
        inside = [p for p in workdir.absolute().parents if (p / "run.json").is_file()]
        if inside:
            raise ValueError(
                f"--workdir {workdir} is inside the run directory {inside[0]}: a new run there "
                "would mix with that run's files; pick a path outside it"
            )
    check_shared_workdir(workdir, create=False)  # (a resumed run's: before reading it)
    _check_layout(workdir)
    settings = _settings(seed, model, optimizer, evaluation, sft, rl)
    _check_settings(workdir, task, settings)  # before the tokenizer or model is made
    workdir.mkdir(parents=True, exist_ok=True)
    check_shared_workdir(workdir)  # (a new run's)
    if on_start is not None:
        on_main_process(on_start)(workdir)
    data = load_task_data(task, seed)
    train, test = data.train, data.eval
    symbols = tuple(dict.fromkeys(s for a in rl for s in a.tokenizer_symbols))
    policy, params = _policy_and_params(workdir, task, model, train, symbols, seed)
    _write_run(workdir, task, policy, list(algorithms), settings)

    start = params
    if sft is not None:
        sft_dir = workdir / "sft"
        start, _ = run_sft(
            policy,
            params,
            data.sft,
            data.val or test,
            sft,
            optimizer,
            evaluation,
            sft_dir,
            show_progress,
        )
        stop_if_requested("SFT (saved in sft/)")
    ctx = PhaseContext(
        policy, start, train, test, evaluation, optimizer, workdir, None, show_progress, data.sft
    )
    for algo in (a for a in rl if a.makes_scorer):
        result = run_rounds(algo, dataclasses.replace(ctx, workdir=workdir / algo.phase))
        stop_if_requested(f"{algo.phase} (saved in {algo.phase}/)")
        ctx = dataclasses.replace(ctx, scorer=algo.scorer(policy, result.params))
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[tuple[int, float]]] = {}
    if sft is not None:
        _finish(ctx, "SFT", "sft", start, None, policy, rows, curves)
        stop_if_requested("SFT's evaluation (saved in sft_eval.json)")
    for algo in (a for a in rl if not a.makes_scorer):
        result = run_rounds(algo, dataclasses.replace(ctx, workdir=workdir / algo.phase))
        stop_if_requested(f"{algo.phase} (saved in {algo.phase}/)")
        _finish(
            ctx,
            algo.title,
            algo.phase,
            result.params,
            result,
            algo.eval_policy(policy),
            rows,
            curves,
        )
        stop_if_requested(f"{algo.phase}'s evaluation (saved in {algo.phase}_eval.json)")
    rows = compare_to_baseline(rows)  # each method's paired difference to SFT
    write_results(workdir, rows, curves, evaluation.num_samples)
    return rows


def _policy_and_params(
    workdir: Path,
    task: TaskConfig,
    model: ModelSetup,
    train: Sequence,
    symbols: tuple[str, ...],
    seed: int,
) -> tuple[Policy, Any]:
    """The run's tokenizer (trained here unless given), model, prompt format and mesh."""
    tokenizer_path = model.tokenizer_path
    if tokenizer_path is None and model.init_checkpoint is not None:
        tokenizer_path = checkpoint_tokenizer(model.init_checkpoint, "ModelSetup.tokenizer_path")
    if tokenizer_path is None:
        tokenizer_path = str(workdir / "tokenizer.model")
        if not Path(tokenizer_path).exists():
            on_main_process(train_tokenizer_for_task)(
                task.name,
                tokenizer_path,
                vocab_size=model.tokenizer_vocab_size,
                # Algorithms' special pieces (RCRL's return tokens) only when they run:
                # they change the tokenizer and so every method's results.
                user_defined_symbols=symbols,
                **_task_kwargs(task.name, task.data_dir, seed),
            )
    tokenizer = load_tokenizer(tokenizer_path)
    mesh = _mesh_or_none()
    if model.init_checkpoint is not None:
        config, params = _load_pretrained(model.init_checkpoint, mesh)
    else:
        config = (model.config or model_config()).replace(vocab_size=tokenizer.vocab_size)
        params = init_params(config, jax.random.key(seed))
    if model.dtype is not None:
        config = config.replace(dtype=model.dtype)
    if model.remat is not None:
        config = config.replace(remat=model.remat)
    if model.lora is not None:
        config = config.replace(lora=model.lora)
        params = lora.add_adapters(config, params, jax.random.fold_in(jax.random.key(seed), 1))
    fmt = prompt_format(
        kind=task.prompt,
        exemplars=train,
        num_shots=task.num_shots,
        seed=seed,
        tokenizer=tokenizer,
    )
    return Policy(config, tokenizer, fmt, mesh), params


def _mesh_or_none() -> Any:
    return make_mesh() if jax.device_count() > 1 else None


def _load_pretrained(path: str | os.PathLike, mesh: Any) -> tuple[ModelConfig, Any]:
    """An `import-hf` checkpoint, each tensor placed straight onto its sharding, or a HF
    model directory (read into memory, then placed)."""
    from jaxrl_reason.model.hf_interop import load_checkpoint, load_hf_llama

    path = Path(path)
    _check_pretrained(path)
    if (path / "model_config.json").is_file():
        return load_checkpoint(path, mesh)
    config, params = load_hf_llama(path)
    if mesh is not None:
        shardings = jax.tree.map(lambda a: a.sharding, abstract_params(config, mesh=mesh))
        params = jax.device_put(params, shardings)
    return config, params


def _check_pretrained(path: Path) -> None:
    """Refuse a path that is neither an `import-hf` checkpoint nor a HF model directory."""
    if path.suffix.lower() == ".gguf":
        raise ValueError(
            f"{path} is a GGUF file: import it first, `jaxrl-reason import-hf {path} DIR`, "
            "and give DIR"
        )
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} not found: give an `import-hf` checkpoint or a HF model directory"
        )
    if not (path / "model_config.json").is_file() and not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} is neither an `import-hf` checkpoint (no model_config.json) nor a HF "
            "model directory (no config.json)"
        )


def checkpoint_tokenizer(path: str | os.PathLike, flag: str) -> str:
    """The tokenizer a pretrained model directory carries (tokenizer.json or
    tokenizer.model, as `import-hf` of a GGUF or a HF download has); `flag` names where to
    give one when it has none."""
    path = Path(path)
    for name in ("tokenizer.json", "tokenizer.model"):
        if (path / name).is_file():
            return str(path / name)
    raise FileNotFoundError(
        f"{path} holds no tokenizer (tokenizer.json or tokenizer.model): give the model's "
        f"own with {flag}"
    )


# ----------------------------------------------------------------------------- run.json


def _algorithm_list(algorithms: Any) -> tuple[str, ...]:
    """`algorithms` as a tuple of names; a bare string (which would become letters) or an
    empty list is refused."""
    if isinstance(algorithms, str):
        raise ValueError(
            f"train_experiment.algorithms must be a list of names, got the string "
            f"{algorithms!r}: write e.g. ['sft', 'ei'] (in gin: ('sft', 'ei'))"
        )
    algorithms = tuple(algorithms)
    if not algorithms:
        raise ValueError(
            "train_experiment.algorithms is empty: list what to run, e.g. ('sft', 'ei') "
            f"(known: {', '.join(algorithm_names())}); to evaluate a model without training "
            "it, run `jaxrl-reason eval --init_checkpoint DIR`"
        )
    return algorithms


def _settings(
    seed: int,
    model: ModelSetup,
    optimizer: OptimizerConfig,
    evaluation: EvalConfig,
    sft: SFTConfig | None,
    rl: Sequence[Any],
) -> dict[str, Any]:
    """Every setting that changes a run's results, as JSON: the run's own (`run`) and each
    phase's (`sft`, `ei`, `ppo_dense` ...), recorded in run.json and checked on resume."""
    as_json = lambda x: json.loads(json.dumps(dataclasses.asdict(x), default=str))
    run = {
        "seed": seed,
        "model": as_json(model),
        "optimizer": as_json(optimizer),
        "evaluation": as_json(evaluation),
    }
    phases = {"sft": as_json(sft)} if sft is not None else {}
    for algo in rl:
        cfg = getattr(algo, "cfg", None)
        phases[algo.phase] = as_json(cfg) if dataclasses.is_dataclass(cfg) else None
    return {"run": run, **phases}


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for k, v in value.items():
            flat.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return flat
    return {prefix: value}


def _check_settings(workdir: Path, task: TaskConfig, settings: dict[str, Any]) -> None:
    """Refuse, before anything is touched, a workdir whose run was started with other
    settings: the task, or any setting of the run or of a phase run both times."""
    path = workdir / "run.json"
    if not path.exists():
        return
    old = read_json(path, "run.json")
    before = {"task": old.get("task"), "task_config": old.get("task_config")}
    before.update(old.get("settings") or {})
    now = {"task": task.name, "task_config": dataclasses.asdict(task), **settings}
    diff = []
    for key in (k for k in now if k in before):  # the task, the run's, then each phase's
        if before[key] is None:  # recorded by a version that did not keep it
            continue
        a = _flatten(json.loads(json.dumps(before[key])), key)
        b = _flatten(json.loads(json.dumps(now[key])), key)
        diff += [
            f"{k} {a.get(k)!r} -> {b.get(k)!r}"
            for k in dict.fromkeys([*b, *a])  # in the order the settings are declared
            if a.get(k) != b.get(k)
        ]
    if diff:
        more = len(diff) - 10
        shown = "; ".join(diff[:10]) + (f"; and {more} more" if more > 0 else "")
        raise ValueError(
            f"{workdir} holds a run started with other settings ({shown}); nothing was changed "
            "there. Use a new --workdir, or the settings that run was started with."
        )


def _write_run(
    workdir: Path,
    task: TaskConfig,
    policy: Policy,
    algorithms: list[str],
    settings: dict[str, Any] | None = None,
) -> None:
    """Write run.json, refusing (before anything is touched) a workdir of another run."""
    tokenizer = Path(os.path.abspath(policy.tokenizer.path))
    if tokenizer.is_relative_to(workdir.resolve()):  # the run's own: moves with the run
        tokenizer = tokenizer.relative_to(workdir.resolve())
    run = {
        "layout": LAYOUT,
        "task": task.name,
        "task_config": dataclasses.asdict(task),  # its splits: what every row is measured on
        "data_dir": task.data_dir,
        "tokenizer": str(tokenizer),  # relative: to the workdir
        "model_config": dataclasses.asdict(policy.model_config),
        "algorithms": algorithms,
        "prompt_format": dataclasses.asdict(policy.prompt_format),
        "settings": settings or {},
        "phases": {},
        # what this (latest) start ran on; a resume may run on other hosts
        "hosts": {
            "process_count": jax.process_count(),
            "device_count": jax.device_count(),
            "local_device_count": jax.local_device_count(),
            "platform": jax.devices()[0].platform,
        },
    }
    path = workdir / "run.json"
    if path.exists():
        old = read_json(path, "run.json")
        keys = ("task", "task_config", "model_config", "prompt_format")
        # (a run written before task_config was recorded is checked on the rest)
        changed = [k for k in keys if k in old and _canonical(old.get(k)) != _canonical(run[k])]
        if changed:
            raise ValueError(
                f"{workdir} holds a run with a different {', '.join(changed)}; nothing was "
                "changed there. Use a new --workdir, or the settings that run was started with."
            )
        run["phases"] = old.get("phases", {})
        run["settings"] = {**(old.get("settings") or {}), **run["settings"]}
    _write_json(path, run)


def _check_layout(workdir: Path) -> None:
    """Refuse a workdir that a version with another layout wrote, before touching it."""
    path = workdir / "run.json"
    layout = read_json(path, "run.json").get("layout", 1) if path.exists() else LAYOUT
    if layout != LAYOUT:
        raise ValueError(
            f"{workdir} holds a run of an older layout ({layout}, this version writes "
            f"{LAYOUT}); nothing was changed there. Use a new --workdir."
        )


def _canonical(value: Any) -> str:
    return json.dumps(json.loads(json.dumps(value)), sort_keys=True)


def _record_phase(workdir: Path, phase: str, entry: dict[str, Any]) -> None:
    path = workdir / "run.json"
    run = read_json(path, "run.json")
    run["phases"][phase] = entry
    _write_json(path, run)


# ----------------------------------------------------------------------------- results


def _finish(
    ctx: PhaseContext,
    title: str,
    phase: str,
    params: Any,
    result: PhaseResult | None,
    eval_policy: Policy,
    rows: list[dict[str, Any]],
    curves: dict[str, list[tuple[int, float]]],
) -> None:
    """Evaluate a finished phase once (cached in workdir/<phase>_eval.json), save its
    policy, and add its row and maj@1-against-samples curve."""
    history = result.state.history if result else ()
    drawn = result.state.samples_drawn if result else 0
    path = ctx.workdir / f"{phase}_eval.json"
    if path.exists():
        redo = "delete it and re-run: the evaluation is computed again from the saved phase"
        evaluation = read_json(path, f"{phase}_eval.json", redo)
        meta = {"phase": phase, "samples_drawn": drawn, **flat_summary(evaluation)}
        _recreate_policy_if_lost(ctx.workdir, phase, params, eval_policy, meta)
    else:
        evaluation = result.evaluation if result and result.evaluation else None
        if evaluation is None:
            evaluation = eval_policy.evaluate(
                params, ctx.eval_examples, ctx.eval_config, ctx.scorer
            )
        meta = {"phase": phase, "samples_drawn": drawn, **flat_summary(evaluation)}
        step = save_params(ctx.workdir / "policy", params, meta)
        fmt = dataclasses.asdict(eval_policy.prompt_format)
        _record_phase(ctx.workdir, phase, {"policy_step": step, "prompt_format": fmt})
        _write_json(path, evaluation)
    rows.append(
        {
            "method": title,
            **evaluation["summary"],
            "samples": drawn,
            "num_questions": evaluation["num_questions"],
            "per_question": evaluation.get("per_question"),  # None: written before it existed
        }
    )
    points = [(h.samples_drawn, h.eval["maj@1"]) for h in history if "maj@1" in h.eval]
    sft = curves.get("SFT", [])
    curves[title] = [*sft, *points] if history else [(0, evaluation["summary"]["maj@1"])]


def _recreate_policy_if_lost(
    workdir: Path, phase: str, params: Any, policy: Policy, meta: dict[str, Any]
) -> None:
    """Save a finished phase's policy again when its step in policy/ is missing or damaged
    (it is what `eval` reads); the damaged step is moved aside as `damaged_step_N`."""
    entry = read_json(workdir / "run.json", "run.json")["phases"].get(phase)
    if entry is None:
        return
    step = entry["policy_step"]
    target = abstract_params(policy.model_config, mesh=policy.mesh)
    try:
        load_params(workdir / "policy", target, step, what="policy", read_only=True)
        return
    except (FileNotFoundError, CheckpointRestoreError) as err:
        log.warning("re-creating %s's policy (step %d): %s", phase, step, err)
    on_main_process(move_aside)(workdir / "policy", step)
    save_params(workdir / "policy", params, meta, step)


@on_main_process
def write_results(
    workdir: Path, rows: list[dict[str, Any]], curves: dict[str, list[tuple[int, float]]], k: int
) -> str:
    """results.json / .md / .png (by process 0; returns the table there)."""
    table = markdown_table(rows, k)
    write_json(workdir / "results.json", {"k": k, "rows": rows, "curves": curves})
    (workdir / "results.md").write_text(f"{table}\n\n{table_note(k)}\n")
    if curves:
        plot_accuracy_vs_samples(curves, workdir / "results.png")
    return table


# -------------------------------------------------------------------------------- eval


def load_run(
    workdir: str | os.PathLike, step: int | None = None, read_only: bool = False
) -> tuple[Policy, Any, dict[str, Any]]:
    """(policy, params, meta) of a run directory's newest (or `step`) saved policy, the
    policy asked as that phase is evaluated (RCRL: with its best return token).

    The params land on the run's mesh when several devices are present. `read_only`
    (what `eval` uses) changes nothing in the run: a damaged step is an error, not a
    fallback to an older policy.
    """
    workdir = Path(workdir)
    run = _read_run(workdir)
    policy = _policy_from_run(run, workdir, _mesh_or_none())
    target = abstract_params(policy.model_config, mesh=policy.mesh)
    finished = {p: e["policy_step"] for p, e in run.get("phases", {}).items()}
    newest = max(finished.values(), default=None)
    try:
        params, meta = load_params(
            workdir / "policy", target, newest if step is None else step, "policy", read_only
        )
    except FileNotFoundError as err:
        if step is not None or newest is None:
            raise
        phase = max(finished, key=finished.get)
        raise FileNotFoundError(
            f"{workdir}: the newest finished phase, {phase}, saved policy step {newest}, which "
            f"is missing ({err}); re-run the training command to re-create it, or pass --step"
        ) from None
    meta = {**meta, "policy_step": newest if step is None else step}
    phase = run.get("phases", {}).get(meta.get("phase"), {})
    if "prompt_format" in phase:
        policy = policy.with_prompt_format(_prompt_format(phase["prompt_format"]))
    elif meta.get("phase") == "rcrl":
        raise ValueError(
            f"{workdir} was written by an older jaxrl_reason (run layout 1) that did not "
            "record how its RCRL policy is asked; re-run the experiment into a new --workdir"
        )
    return policy, params, meta


def _read_run(workdir: Path) -> dict[str, Any]:
    path = workdir / "run.json"
    if workdir.is_file():
        raise ValueError(f"--workdir {workdir} is a file, not a run directory")
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: {workdir} is not a jaxrl_reason run "
            "directory (train one with `jaxrl-reason train` or `demo`)"
        )
    return read_json(path, "run.json")


def _prompt_format(fields: dict[str, Any]) -> PromptFormat:
    return PromptFormat(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in fields.items()})


def _policy_from_run(run: dict[str, Any], workdir: str | os.PathLike, mesh: Any = None) -> Policy:
    """The run's model config, tokenizer (a relative path is the workdir's) and prompt."""
    config = ModelConfig.from_dict(run["model_config"])
    tokenizer = Path(workdir) / run["tokenizer"]  # (an absolute path stays itself)
    if not tokenizer.exists():
        raise FileNotFoundError(
            f"{workdir}: the run's tokenizer {tokenizer} is missing; restore it (its model "
            "was trained with it), or re-run the experiment into a new --workdir"
        )
    loaded = load_tokenizer(tokenizer)
    own = not Path(run["tokenizer"]).is_absolute()  # trained for this run: sizes must match
    if loaded.vocab_size > config.vocab_size or (own and loaded.vocab_size != config.vocab_size):
        raise ValueError(
            f"{workdir}: the tokenizer {tokenizer} has {loaded.vocab_size} pieces but the "
            f"run's model has a vocabulary of {config.vocab_size}; it was replaced: restore "
            "the run's own tokenizer"
        )
    return Policy(config, loaded, _prompt_format(run["prompt_format"]), mesh)


def _orm_scorer(run_dir: Path, required: bool) -> ORMScorer | None:
    """The ORM trained in run directory `run_dir` (its `orm/`), or None if it has none."""
    if not (run_dir / ORM_PHASE / "state").is_dir():
        if (run_dir / ORM_PHASE / "orm").is_dir():  # where layout 1 kept it
            raise ValueError(
                f"{run_dir} was written by an older jaxrl_reason (run layout 1) whose ORM "
                "this version does not read; re-run the experiment into a new --workdir"
            )
        if required:
            raise FileNotFoundError(
                f"{run_dir} holds no trained ORM ({run_dir / ORM_PHASE / 'state'} is missing): "
                "train one with algorithms including 'orm' or a PPO ORM reward"
            )
        return None
    run = _read_run(run_dir)
    policy = _policy_from_run(run, run_dir, _mesh_or_none())
    params, _ = load_orm(run_dir / ORM_PHASE, policy)
    return ORMScorer(policy, params)


def evaluate_workdir(
    workdir: str | os.PathLike,
    task: str | None = None,
    k: int | None = None,
    step: int | None = None,
    data_dir: str | None = None,
    num_questions: int | None = None,
    temperature: float | None = None,
    max_new_tokens: int | None = None,
    orm_workdir: str | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """`jaxrl-reason eval`: evaluate a saved policy of a run and write `eval.json`.

    Reads the run and changes nothing in it but eval.json. What is left None comes from
    run.json: the task, its data and test questions (the run's `num_eval`), and K, the
    temperature and the generation length the run evaluated with (for a run that did not
    record them: K = 16, 0.7, and what the model's context leaves after the longest
    prompt, at most 256). rerank@K uses the ORM trained in `orm_workdir` (a run
    directory), by default the run's own ORM when it trained one.
    """
    workdir = Path(workdir)
    check_shared_workdir(workdir, create=False)
    run = _read_run(workdir)
    if num_questions is not None and num_questions <= 0:
        raise ValueError(f"--num_questions must be a positive number, got {num_questions}")
    if k is not None and k < 0:
        raise ValueError(f"--k must be >= 0 samples per question (0: greedy only), got {k}")
    if data_dir is not None and (task or run["task"]) == "arith":
        raise ValueError(
            f"--data_dir {data_dir}: the task is arith (built in, no files); to evaluate on "
            "GSM8K or SVAMP pass --task gsm8k or --task svamp with it"
        )
    if not os.access(workdir, os.W_OK):
        raise ValueError(f"{workdir} is not writable, so eval.json cannot be written there")
    policy, params, meta = load_run(workdir, step, read_only=True)
    scorer = _orm_scorer(Path(orm_workdir or workdir), required=orm_workdir is not None)
    recorded = dict(run.get("task_config") or {})
    if task is not None and task != run["task"]:
        recorded = {}  # another task than the run's: only what the flags say
    name = task or run["task"]
    seed = (run.get("settings") or {}).get("run", {}).get("seed", 0)
    questions = TaskConfig(
        name=name,
        data_dir=data_dir or recorded.get("data_dir") or run.get("data_dir"),
        num_train=recorded.get("num_train"),
        num_eval=num_questions or recorded.get("num_eval"),
        num_val=recorded.get("num_val", 0),
    )
    test = load_task_data(questions, seed).test
    ran = (run.get("settings") or {}).get("run", {}).get("evaluation") or {}
    if max_new_tokens is None:
        max_new_tokens = ran.get("max_new_tokens") or _room_to_generate(policy, test)
    cfg = EvalConfig(
        num_samples=ran.get("num_samples", 16) if k is None else k,
        temperature=ran.get("temperature", 0.7) if temperature is None else temperature,
        max_new_tokens=max_new_tokens,
    )
    what = f"{meta.get('phase', 'policy')} policy ({_policy_step_text(workdir, meta, step)})"
    return _evaluate_and_write(
        f"{workdir}: {what}",
        policy,
        params,
        test,
        cfg,
        scorer,
        {"method": meta.get("phase", "policy"), "samples": meta.get("samples_drawn", 0)},
        {"task": name, "policy_meta": meta, "workdir": str(workdir)},
        workdir / "eval.json",
        show_progress,
    )


def _evaluate_and_write(
    what: str,
    policy: Policy,
    params: Any,
    test: Sequence,
    cfg: EvalConfig,
    scorer: ORMScorer | None,
    row: dict[str, Any],
    about: dict[str, Any],
    out: Path,
    show_progress: bool,
) -> dict[str, Any]:
    """What both kinds of `eval` do once the model is loaded: evaluate, print the table,
    write `out` (the result with `about` added)."""
    print(
        f"jaxrl-reason eval: {what} on {len(test)} {about['task']} test questions, greedy + "
        f"K = {cfg.num_samples} samples at temperature {cfg.temperature}, up to "
        f"{cfg.max_new_tokens} new tokens"
    )
    result = policy.evaluate(params, test, cfg, scorer, show_progress=show_progress)
    result.update(about)
    row = {"method": row["method"], **result["summary"], "samples": row["samples"]}
    print(markdown_table([row], cfg.num_samples))  # first: shown even if writing fails
    print(f"\n{table_note(cfg.num_samples)}")
    _write_json(out, result)
    print(f"wrote {out}")
    return result


def evaluate_checkpoint(
    init_checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    task: str,
    data_dir: str | None = None,
    k: int | None = None,
    num_questions: int | None = None,
    temperature: float | None = None,
    max_new_tokens: int | None = None,
    prompt: str = "zero_shot",
    num_shots: int = 4,
    tokenizer: str | None = None,
    orm_workdir: str | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """`jaxrl-reason eval --init_checkpoint DIR --out OUT`: evaluate a pretrained model (an
    `import-hf` checkpoint or a HF model directory) as a run evaluates its policies, and
    write `OUT/eval.json`.

    The tokenizer is DIR's own (tokenizer.json or tokenizer.model) unless `tokenizer` is
    given. What is left None takes `EvalConfig`'s and `TaskConfig`'s defaults: K = 16 at
    temperature 0.7, the first 200 test questions, and what the model's context leaves
    after the longest prompt (at most 256 new tokens). `prompt` is a `TaskConfig.prompt`
    ("few_shot": `num_shots` solved training questions before each). Every argument is
    checked, and the model and its tokenizer found, before anything is loaded or written.
    """
    path, out_file = Path(init_checkpoint), Path(out) / "eval.json"
    if num_questions is not None and num_questions <= 0:
        raise ValueError(f"--num_questions must be a positive number, got {num_questions}")
    if k is not None and k < 0:
        raise ValueError(f"--k must be >= 0 samples per question (0: greedy only), got {k}")
    if data_dir is not None and task == "arith":
        raise ValueError(
            f"--data_dir {data_dir}: the task is arith (built in, no files); to evaluate on "
            "GSM8K or SVAMP pass --task gsm8k or --task svamp with it"
        )
    if Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--out {out} is a file: give a directory for eval.json")
    if out_file.exists() and not overwrite:
        raise FileExistsError(
            f"{out_file} exists: choose another --out, or pass --overwrite to replace it"
        )
    _check_pretrained(path)
    check_shared_workdir(out)
    tok = load_tokenizer(tokenizer or checkpoint_tokenizer(path, "--tokenizer"))
    sizes = {} if num_questions is None else {"num_eval": num_questions}
    questions = TaskConfig(
        name=task, data_dir=data_dir, prompt=prompt, num_shots=num_shots, **sizes
    )
    data = load_task_data(questions, seed=0)
    chat = {"tokenizer": tok} if prompt == "chat" else {}  # the model's chat template
    fmt = prompt_format(kind=prompt, exemplars=data.train, num_shots=num_shots, seed=0, **chat)
    scorer = _orm_scorer(Path(orm_workdir), required=True) if orm_workdir else None
    mesh = _mesh_or_none()
    config, params = _load_pretrained(path, mesh)
    policy = Policy(config, tok, fmt, mesh)
    defaults = EvalConfig()
    cfg = EvalConfig(
        num_samples=defaults.num_samples if k is None else k,
        temperature=defaults.temperature if temperature is None else temperature,
        max_new_tokens=max_new_tokens or _room_to_generate(policy, data.test),
    )
    about = {
        "task": task,
        "init_checkpoint": str(path.absolute()),
        "tokenizer": str(Path(tok.path).absolute()),
        "prompt_format": dataclasses.asdict(fmt),
    }
    row = {"method": path.name or "pretrained", "samples": 0}
    return _evaluate_and_write(
        f"{path}: pretrained model",
        policy,
        params,
        data.test,
        cfg,
        scorer,
        row,
        about,
        out_file,
        show_progress,
    )


def _policy_step_text(workdir: Path, meta: dict[str, Any], step: int | None) -> str:
    """Which saved step was read: the one asked for, or the newest finished phase's."""
    if step is not None:
        return f"step {step}"
    if meta.get("policy_step") is not None:
        return f"step {meta['policy_step']}, the newest"
    steps = sorted(int(p.name) for p in (workdir / "policy").iterdir() if p.name.isdigit())
    return f"step {steps[-1]}, the newest" if steps else "the newest step"


def _room_to_generate(policy: Policy, examples: Sequence) -> int:
    """New tokens the model's context leaves after the longest prompt (at most 256)."""
    fmt, tok = policy.prompt_format, policy.tokenizer
    longest = max(len(tok.encode(fmt.format(ex.question))) for ex in examples)
    room = policy.model_config.max_seq_len - longest
    if room < 1:
        raise ValueError(
            f"the longest prompt has {longest} tokens, which fills the model's max_seq_len "
            f"({policy.model_config.max_seq_len}); evaluate fewer shots or another model"
        )
    return min(256, room)


def algorithm_names() -> list[str]:
    """What `train_experiment(algorithms=...)` accepts."""
    return ["sft", *names()]
