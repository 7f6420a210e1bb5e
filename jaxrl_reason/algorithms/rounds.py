"""One loop for every RL algorithm: an `Algorithm` supplies its step, `run_rounds` the rest.

Every method here is the same loop (Havrilla et al. 2024, §2):

    pi_0 <- the start policy (SFT)
    for r = 1 .. N:
        Q_r  <- the round's training questions                  Algorithm.plan
        Y_r  <- K samples per question of Q_r from pi_{r-1}      driver (sample_rollouts;
                                                                 more draws while
                                                                 Algorithm.more_rollouts
                                                                 asks, e.g. DAPO's)
        pi_r <- improve(pi_{r-1}, Q_r, Y_r)                      Algorithm.improve
        evaluate pi_r on held-out questions, on a cadence        driver
        save the phase state                                     driver

EI's improve keeps the correct samples and fine-tunes; PPO's turns rewards into advantages
and minibatch epochs; RCRL's labels samples with return tokens and fine-tunes; the ORM is a
one-round algorithm whose improve trains a reward model. The driver owns sampling,
evaluation, checkpoint/resume, SIGTERM, metrics and progress, so an algorithm file holds
none of them.

A phase lives in one directory:
  state/<r>/        the `PhaseState` after round r (orbax: the algorithm's arrays, and JSON
                    meta: rounds done, samples drawn, history, the algorithm's host state)
  round_<r>/        scratch of round r's inner training (its own checkpoints, dropped once
                    the phase state holding the round is saved; its metrics are kept)
  metrics.jsonl, tb/  one record per round (phase `<name>`) and per evaluation (`<name>_eval`)

Round r samples with the key and the questions its algorithm derives from (seed, r), so a
run killed mid-round and resumed draws the same rollouts from the same policy, and ends
bitwise where an uninterrupted run ends.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax

from jaxrl_reason.algorithms.policy import Policy
from jaxrl_reason.data.example import Example
from jaxrl_reason.data.prompts import PromptFormat
from jaxrl_reason.evaluation.evaluate import EvalConfig, Scorer, flat_summary, greedy_only
from jaxrl_reason.sampling import SamplingConfig
from jaxrl_reason.sampling.rollouts import Rollouts, sample_rollouts
from jaxrl_reason.training.adapter_checkpoints import adapter_checkpointer
from jaxrl_reason.training.checkpointing import Checkpointer
from jaxrl_reason.training.metrics_writer import MetricWriter
from jaxrl_reason.training.optimizer import OptimizerConfig
from jaxrl_reason.training.preemption import Preempted, PreemptionGuard
from jaxrl_reason.training.progress import ThroughputBar

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True)
class RoundRecord:
    """What one round did: cumulative samples, the algorithm's statistics, the evaluation."""

    round: int
    samples_drawn: int  # cumulative over the phase
    stats: dict[str, Any]  # JSON scalars from Algorithm.improve
    eval: dict[str, float]  # flat summary of the evaluation after the round ({}: none)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RoundRecord:
        return cls(int(d["round"]), int(d["samples_drawn"]), dict(d["stats"]), dict(d["eval"]))


@dataclasses.dataclass(frozen=True)
class PhaseState:
    """Everything a phase needs to resume: saved whole after a round, restored whole."""

    arrays: Any  # the algorithm's pytree (EI: policy params; PPO: its TrainState)
    host: dict[str, Any]  # the algorithm's JSON state (EI's dataset, PPO's KL controller)
    rounds_done: int = 0
    samples_drawn: int = 0
    history: tuple[RoundRecord, ...] = ()


@dataclasses.dataclass(frozen=True)
class PhaseContext:
    """What a phase runs in: the policy, its start, the data, and where it writes."""

    policy: Policy
    init_params: Any  # the start policy pi_0 (also PPO's frozen reference)
    train: Sequence[Example]
    eval_examples: Sequence[Example]
    eval_config: EvalConfig
    optimizer: OptimizerConfig
    workdir: Path  # the phase's directory
    scorer: Scorer | None = None  # the run's ORM: rerank@K, ORM rewards
    show_progress: bool = True
    sft_examples: Sequence[Example] = ()  # SFT's (question, reference solution) pairs

    def round_dir(self, round_index: int) -> Path:
        """Scratch directory of a round's inner training (e.g. EI's fine-tuning)."""
        return self.workdir / f"round_{round_index}"


@dataclasses.dataclass(frozen=True)
class RoundPlan:
    """How round r samples: which questions, from which params, with which settings."""

    questions: list[Example]
    params: Any  # the policy params to sample from
    sampling: SamplingConfig
    key: jax.Array
    prompts_per_call: int
    prompt_format: PromptFormat | None = None  # None: the policy's (RCRL conditions it)


class Improved(NamedTuple):
    """What `Algorithm.improve` returns: the new arrays and host state, and statistics
    (JSON values; not named step, phase, time or samples_drawn)."""

    arrays: Any
    host: dict[str, Any]
    stats: dict[str, Any]


# ------------------------------------------------------------------------ the protocol


class Algorithm(abc.ABC):
    """An RL method as a plug-in of `run_rounds`.

    Subclasses set `phase` (directory and metrics name), `num_rounds`, `title` (its
    results row) and implement `init`, `plan` and `improve`. The defaults: a phase-state
    save every round, greedy maj@1 after every round, the full evaluation after the last.
    """

    phase: str
    title: str
    num_rounds: int
    checkpoint_every: int = 1  # rounds between phase-state saves (the last always saves)
    eval_every: int = 1  # rounds between greedy maj@1 evaluations; 0: the last only
    needs_orm: bool = False  # it reads PhaseContext.scorer (trained first by the experiment)
    makes_scorer: bool = False  # its result scores samples (`scorer`) instead of a policy
    tokenizer_symbols: tuple[str, ...] = ()  # pieces it needs in a trained tokenizer

    @abc.abstractmethod
    def init(self, ctx: PhaseContext) -> tuple[Any, dict[str, Any]]:
        """Fresh (arrays, host state); the arrays are also the layout a resume restores to."""

    @abc.abstractmethod
    def plan(self, ctx: PhaseContext, state: PhaseState, round_index: int) -> RoundPlan:
        """How round `round_index` (from 1) samples."""

    @abc.abstractmethod
    def improve(
        self, ctx: PhaseContext, state: PhaseState, rollouts: Rollouts, round_index: int
    ) -> Improved:
        """The algorithm's step: the round's rollouts -> new arrays, host state, statistics."""

    def more_rollouts(
        self, ctx: PhaseContext, state: PhaseState, rollouts: Rollouts, round_index: int
    ) -> RoundPlan | None:
        """After each draw of round `round_index` (`rollouts`: all its rows so far), a plan
        for another draw to append before `improve`, or None (the default) to improve now.
        DAPO's dynamic sampling keeps drawing until enough groups are informative; every
        row drawn counts in `samples_drawn`."""
        return None

    def policy_params(self, arrays: Any) -> Any:
        """The policy's LM params within the arrays (what is evaluated and returned)."""
        return arrays

    def eval_config(self, round_index: int, cfg: EvalConfig) -> EvalConfig | None:
        """The evaluation after `round_index`: full on the last, greedy on the cadence."""
        if round_index == self.num_rounds:
            return cfg
        if self.eval_every and round_index % self.eval_every == 0:
            return greedy_only(cfg)
        return None

    def eval_policy(self, policy: Policy) -> Policy:
        """The policy as evaluated (RCRL asks with the best return token)."""
        return policy

    def scorer(self, policy: Policy, params: Any) -> Scorer:
        """The `Scorer` that `params` make (for algorithms with `makes_scorer`)."""
        raise NotImplementedError(f"{self.phase} trains a policy, not a scorer")

    def fingerprint(self) -> dict[str, Any]:
        """Settings a resumed phase must share with the one that wrote it."""
        return {}


# -------------------------------------------------------------------------- the driver


class PhaseResult(NamedTuple):
    state: PhaseState
    params: Any  # Algorithm.policy_params of the final arrays
    evaluation: dict[str, Any] | None  # the last round's evaluation; None if it ran before


def run_rounds(algo: Algorithm, ctx: PhaseContext) -> PhaseResult:
    """Run (or resume) `algo` in `ctx.workdir` until `algo.num_rounds` rounds are done.

    Saves the phase state every `algo.checkpoint_every` rounds, after the last, and when
    SIGTERM arrives (then raises `Preempted`); a re-run resumes after the newest save.
    """
    arrays, host = algo.init(ctx)  # first: bad settings are refused before anything is written
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    state = PhaseState(arrays, host)
    ckpt = Checkpointer(ctx.workdir / "state", keep=2, async_save=False)
    ckpt = adapter_checkpointer(ckpt, arrays)  # LoRA: adapters, heads, optimizer state only
    writer = bar = None
    result = None
    try:
        if ckpt.latest_step() is not None:
            state = _restore(algo, ckpt, state)
        if state.rounds_done >= algo.num_rounds:
            return PhaseResult(state, algo.policy_params(state.arrays), None)
        # Records of rounds after the restored state (written before a crash) are redone.
        phases = (algo.phase, f"{algo.phase}_eval")
        writer = MetricWriter(ctx.workdir, resume_step=state.rounds_done, phases=phases)
        bar = ThroughputBar(
            algo.num_rounds,
            initial=state.rounds_done,
            desc=algo.phase,
            disable=not ctx.show_progress or None,
        )
        with PreemptionGuard() as guard:
            for r in range(state.rounds_done + 1, algo.num_rounds + 1):
                state, result, num_tokens = _run_round(algo, ctx, state, r)
                _log_round(algo, writer, state.history[-1])
                bar.update(1, num_tokens)
                last, stop = r == algo.num_rounds, guard.should_stop
                if last or stop or r % algo.checkpoint_every == 0:
                    _save(algo, ckpt, ctx, state, final=last)
                if stop and not last:
                    message = (
                        f"received SIGTERM: saved {algo.phase} after round {r} in "
                        f"{ckpt.directory}; re-run the same command to resume"
                    )
                    log.warning(message)
                    raise Preempted(message)
    finally:
        for closing in (bar, writer, ckpt):
            if closing is not None:
                closing.close()
    return PhaseResult(state, algo.policy_params(state.arrays), result)


def _run_round(
    algo: Algorithm, ctx: PhaseContext, state: PhaseState, r: int
) -> tuple[PhaseState, dict[str, Any] | None, int]:
    """Sample, improve, evaluate: (the state after round r, its evaluation, tokens sampled)."""
    policy = ctx.policy

    def draw(plan: RoundPlan) -> Rollouts:
        return sample_rollouts(
            policy.text_sampler,
            plan.prompt_format or policy.prompt_format,
            plan.params,
            plan.questions,
            plan.sampling,
            plan.key,
            plan.prompts_per_call,
        )

    rollouts = draw(algo.plan(ctx, state, r))
    while (more := algo.more_rollouts(ctx, state, rollouts, r)) is not None:
        rollouts = rollouts + draw(more)
    arrays, host, stats = algo.improve(ctx, state, rollouts, r)
    if clash := sorted(_RESERVED & set(stats)):
        raise ValueError(f"{algo.phase}: statistics may not be named {clash} (metrics use them)")
    result = None
    eval_cfg = algo.eval_config(r, ctx.eval_config)
    if ctx.eval_examples and eval_cfg is not None:
        result = algo.eval_policy(policy).evaluate(
            algo.policy_params(arrays), ctx.eval_examples, eval_cfg, ctx.scorer
        )
    drawn = state.samples_drawn + len(rollouts)
    record = RoundRecord(r, drawn, stats, flat_summary(result) if result else {})
    new = PhaseState(arrays, host, r, drawn, (*state.history, record))
    return new, result, rollouts.num_tokens()


_RESERVED = {"step", "phase", "time", "samples_drawn"}  # keys of every metrics record


def _log_round(algo: Algorithm, writer: MetricWriter, record: RoundRecord) -> None:
    writer.write(record.round, {"samples_drawn": record.samples_drawn, **record.stats}, algo.phase)
    if record.eval:
        writer.write(record.round, record.eval, f"{algo.phase}_eval")
    shown = {k: v for k, v in {**record.stats, **record.eval}.items() if isinstance(v, float)}
    log.info(
        "%s round %d/%d: %d samples drawn; %s",
        algo.phase,
        record.round,
        algo.num_rounds,
        record.samples_drawn,
        ", ".join(f"{k} {v:.4g}" for k, v in shown.items()),
    )


def _meta(algo: Algorithm, state: PhaseState) -> dict[str, Any]:
    return {
        "phase": algo.phase,
        "fingerprint": algo.fingerprint(),
        "rounds_done": state.rounds_done,
        "samples_drawn": state.samples_drawn,
        "history": [h.to_json() for h in state.history],
        "host": state.host,
    }


def _save(
    algo: Algorithm, ckpt: Checkpointer, ctx: PhaseContext, state: PhaseState, final: bool
) -> None:
    """Save the phase state (after its last round without optimizer state: nothing trains
    on from it); the rounds it covers need their scratch checkpoints no more."""
    meta = {**_meta(algo, state), "final": final}
    ckpt.save(state.rounds_done, state.arrays, meta, force=True, final=final)
    ckpt.wait()
    if jax.process_index() == 0:
        for r in range(1, state.rounds_done + 1):
            shutil.rmtree(ctx.round_dir(r) / "checkpoints", ignore_errors=True)


def _restore(algo: Algorithm, ckpt: Checkpointer, fresh: PhaseState) -> PhaseState:
    """The newest saved phase state, after checking (on its meta alone, so that nothing
    is read into, or moved aside in, a directory of another phase) that it fits."""
    meta = ckpt.meta()
    written = {"phase": meta.get("phase"), **meta.get("fingerprint", {})}
    wanted = {"phase": algo.phase, **algo.fingerprint()}
    changed = [k for k in wanted if written.get(k) != wanted[k]]
    if changed:
        k = changed[0]
        raise ValueError(
            f"{ckpt.directory} was written with {k}={written.get(k)!r} but this run has "
            f"{k}={wanted[k]!r}; its state would not fit: use a fresh workdir"
        )
    arrays, meta = ckpt.restore(fresh.arrays)
    log.info("%s: resumed after round %d from %s", algo.phase, meta["rounds_done"], ckpt.directory)
    if meta.get("final") and int(meta["rounds_done"]) < algo.num_rounds:
        log.warning(
            "%s: continuing a finished phase (%d rounds) to %d rounds: its optimizer state "
            "was not kept, so it starts afresh",
            algo.phase,
            meta["rounds_done"],
            algo.num_rounds,
        )
    return PhaseState(
        arrays,
        meta["host"],
        int(meta["rounds_done"]),
        int(meta["samples_drawn"]),
        tuple(RoundRecord.from_json(h) for h in meta["history"]),
    )
