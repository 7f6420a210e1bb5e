"""Return-Conditioned RL (paper §2.4): label samples with their return, train on them all,
then ask for the best return.

Round i draws K solutions per training question from pi_{i-1}, scores each (sparse
correctness, or a `scorer` such as an ORM's probability in [0, 1]) and bins the score into
a return token (`[BAD]`/`[GOOD]`, or `[SCORE_0]`.. for `num_bins` > 2). Every sample, bad
ones too, becomes a training example whose prompt ends with its token:
  "Q: <question>\nA: [BAD] " -> <sampled solution>
The token is part of the prompt, so it carries no loss. Examples accumulate over rounds,
de-duplicated per question and token (exact match after collapsing whitespace); with
`include_references` each question's reference solution is added under the best token, so
that the best token means "a right answer" from round 1 on. pi_i is fine-tuned on the
cumulative set, by default from the INITIAL weights (as in EI), and evaluated conditioned
on the best token.

Round 1 samples with plain prompts (the initial policy has never seen a return token);
later rounds sample conditioned on the best token, as at inference.

Resume (as EI): each finished round is recorded in `workdir/rcrl/state.json` with its
dataset in `workdir/rcrl/dataset_round_<i>.jsonl` (written atomically) and its evaluation
in `workdir/rcrl/eval_round_<i>.json`; a round's fine-tuning checkpoints live in
`workdir/rcrl/round_<i>`, so a killed run picks up mid-round.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gin
import jax

from jaxrl_reason.algorithms.expert_iteration import (
    dedup_key,
    fine_tune_round,
    round_batches,
    round_questions,
)
from jaxrl_reason.algorithms.policy import Policy
from jaxrl_reason.algorithms.return_conditioning import (
    best_return_token,
    condition_prompt,
    return_token_for,
    return_tokens,
)
from jaxrl_reason.algorithms.rollouts import sample_rollouts
from jaxrl_reason.algorithms.sft import flat_summary
from jaxrl_reason.data.example import Example
from jaxrl_reason.data.pipeline import SupervisedBatches
from jaxrl_reason.data.prompts import PromptFormat
from jaxrl_reason.evaluation.evaluate import EvalConfig, Scorer, greedy_only
from jaxrl_reason.evaluation.report import write_atomic, write_json
from jaxrl_reason.rewards.heuristic import sparse_reward
from jaxrl_reason.training.optimizer import OptimizerConfig

log = logging.getLogger(__name__)
# question id -> distinct (return token, solution) pairs, in the order found
Dataset = dict[str, list[tuple[str, str]]]
_SCORE_TOL = 1e-6  # scores a hair outside [0, 1] (float error) are fine; logits are not


@gin.configurable
@dataclasses.dataclass(frozen=True)
class RCRLConfig:
    num_rounds: int = 2
    samples_per_question: int = 4  # K
    temperature: float = 0.7
    max_new_tokens: int = 256
    questions_per_round: int | None = None  # None: every training question
    epochs_per_round: float = 2.0
    batch_size: int = 32
    max_len: int = 512
    length_multiple: int | None = 64
    num_bins: int = 2  # 2: [BAD]/[GOOD]; more: [SCORE_0] .. [SCORE_{n-1}]
    include_references: bool = True  # reference solutions as best-return examples
    retrain_from_initial: bool = True
    learning_rate: float | None = None  # fine-tuning rate per round; None: the optimizer's
    prompts_per_call: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        required = {
            "num_rounds": self.num_rounds,
            "samples_per_question": self.samples_per_question,
            "max_new_tokens": self.max_new_tokens,
            "batch_size": self.batch_size,
            "max_len": self.max_len,
            "prompts_per_call": self.prompts_per_call,
            "epochs_per_round": self.epochs_per_round,
        }
        optional = {  # None means "all" / "no bucketing" / "the optimizer's"
            "questions_per_round": self.questions_per_round,
            "length_multiple": self.length_multiple,
            "learning_rate": self.learning_rate,
        }
        for name, value in [*required.items(), *optional.items()]:
            if (value is not None or name in required) and not value > 0:
                raise ValueError(f"RCRLConfig.{name} must be > 0, got {value}")
        if self.temperature < 0:
            raise ValueError(f"RCRLConfig.temperature must be >= 0, got {self.temperature}")
        if self.num_bins < 2:
            raise ValueError(
                f"RCRLConfig.num_bins must be >= 2 (2 gives [BAD]/[GOOD]), got {self.num_bins}"
            )


def conditioned_format(prompt_format: PromptFormat, token: str) -> PromptFormat:
    """`prompt_format` with `token` (and a space) right after the answer prefix:
    "Q: {question}\\nA: " -> "Q: {question}\\nA: [GOOD] "."""
    escaped = token.replace("{", "{{").replace("}", "}}")  # the template is str.format'ted
    return dataclasses.replace(
        prompt_format, template=condition_prompt(prompt_format.template, escaped)
    )


def inference_format(prompt_format: PromptFormat, num_bins: int = 2) -> PromptFormat:
    """`prompt_format` conditioned on the best return token: how an RCRL policy is asked."""
    return conditioned_format(prompt_format, best_return_token(num_bins))


def rcrl_policy(policy: Policy, num_bins: int = 2) -> Policy:
    """`policy` sampling and evaluating conditioned on the best return token."""
    conditioned = dataclasses.replace(
        policy, prompt_format=inference_format(policy.prompt_format, num_bins)
    )
    # The text sampler does not depend on the prompt format; sharing it keeps its
    # compiled programs instead of compiling them again.
    sampler = getattr(policy, "text_sampler", None)
    if sampler is not None:
        conditioned.text_sampler = sampler
    return conditioned


def score_samples(
    examples: Sequence[Example],
    samples: Sequence[Sequence[str]],
    scorer: Scorer | None = None,
) -> list[list[float]]:
    """[B][K] returns in [0, 1]: sparse correctness (1/0), or `scorer`'s probabilities."""
    if len(examples) != len(samples):
        raise ValueError(f"{len(examples)} questions but {len(samples)} rows of samples")
    if scorer is None:
        return [
            sparse_reward(row, [ex.answer] * len(row)).tolist()
            for ex, row in zip(examples, samples)
        ]
    scores = [[float(s) for s in row] for row in scorer(examples, samples)]
    if [len(r) for r in scores] != [len(r) for r in samples]:
        raise ValueError(
            f"scorer returned rows of lengths {[len(r) for r in scores]} for samples of "
            f"lengths {[len(r) for r in samples]}; it must return one score per sample"
        )
    for ex, row in zip(examples, scores):
        bad = [s for s in row if not -_SCORE_TOL <= s <= 1 + _SCORE_TOL]
        if bad:
            raise ValueError(
                f"scorer returned {bad[0]} for question {ex.id!r}; RCRL bins returns in "
                "[0, 1], so pass probabilities (e.g. sigmoid of an ORM logit)"
            )
    return scores


def label_samples(
    examples: Sequence[Example],
    samples: Sequence[Sequence[str]],
    scores: Sequence[Sequence[float]],
    num_bins: int = 2,
) -> Dataset:
    """Per question, its distinct non-empty samples, each with the token of its score."""
    labelled: Dataset = {}
    for ex, row, row_scores in zip(examples, samples, scores, strict=True):
        seen: set[tuple[str, str]] = set()
        for text, score in zip(row, row_scores, strict=True):
            token = return_token_for(score, num_bins)
            key = (token, dedup_key(text))
            if key[1] and key not in seen:
                seen.add(key)
                labelled.setdefault(ex.id, []).append((token, text.strip()))
    return labelled


def reference_examples(examples: Sequence[Example], num_bins: int = 2) -> Dataset:
    """Each question's reference solution under the best return token."""
    best = best_return_token(num_bins)
    return {ex.id: [(best, ex.solution.strip())] for ex in examples if ex.solution.strip()}


def merge(
    dataset: Mapping[str, Sequence[tuple[str, str]]], new: Mapping[str, Sequence[tuple[str, str]]]
) -> tuple[Dataset, int]:
    """The union, de-duplicated per question and token; also the number newly added."""
    merged = {q: list(pairs) for q, pairs in dataset.items()}
    added = 0
    for q, pairs in new.items():
        have = {(t, dedup_key(s)) for t, s in merged.get(q, [])}
        for token, solution in pairs:
            if (token, dedup_key(solution)) not in have:
                have.add((token, dedup_key(solution)))
                merged.setdefault(q, []).append((token, solution))
                added += 1
    return merged, added


def training_data(
    dataset: Mapping[str, Sequence[tuple[str, str]]],
    by_id: Mapping[str, Example],
    prompt_format: PromptFormat,
) -> tuple[list[Example], list[str]]:
    """(examples, prompt texts): each solution with its question's prompt + return token."""
    examples, prompts = [], []
    for q in sorted(dataset):
        ex = by_id[q]
        for i, (token, solution) in enumerate(dataset[q]):
            examples.append(dataclasses.replace(ex, id=f"{q}#{i}", solution=solution))
            prompts.append(condition_prompt(prompt_format.format(ex.question), token))
    return examples, prompts


def training_batches(
    policy: Policy,
    dataset: Dataset,
    by_id: Mapping[str, Example],
    cfg: RCRLConfig,
    round_index: int,
) -> SupervisedBatches | None:
    """The round's batches (loss on solutions only), or None for an empty dataset."""
    examples, prompts = training_data(dataset, by_id, policy.prompt_format)
    if not examples:
        return None
    return round_batches(policy, examples, prompts, cfg, round_index)


def _load_state(rcrl_dir: Path, cfg: RCRLConfig) -> dict[str, Any]:
    path = rcrl_dir / "state.json"
    if not path.exists():
        return {"rounds_done": 0, "samples_drawn": 0, "num_bins": cfg.num_bins, "history": []}
    state = json.loads(path.read_text())
    if state["num_bins"] != cfg.num_bins:
        raise ValueError(
            f"{path} was written with num_bins={state['num_bins']} but RCRLConfig.num_bins="
            f"{cfg.num_bins}; its return tokens would not match: use a fresh workdir"
        )
    return state


def _load_dataset(rcrl_dir: Path, round_index: int) -> Dataset:
    if round_index == 0:
        return {}
    lines = (rcrl_dir / f"dataset_round_{round_index}.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line]
    return {r["id"]: [(e["token"], e["solution"]) for e in r["examples"]] for r in rows}


def _dataset_jsonl(dataset: Dataset) -> str:
    return "".join(
        json.dumps({"id": q, "examples": [{"token": t, "solution": s} for t, s in pairs]}) + "\n"
        for q, pairs in sorted(dataset.items())
    )


def run_rcrl(
    policy: Policy,
    init_params: Any,
    train_examples: Sequence[Example],
    eval_examples: Sequence[Example],
    cfg: RCRLConfig,
    optimizer: OptimizerConfig,
    eval_cfg: EvalConfig,
    workdir: str | os.PathLike,
    show_progress: bool = True,
    scorer: Scorer | None = None,
) -> tuple[Any, list[dict[str, Any]]]:
    """Run (or resume) RCRL from `init_params`; return (final params, per-round history).

    `scorer` gives each sample's return in [0, 1] (default: sparse correctness). Each
    history entry has the round, cumulative `samples_drawn`, the prompt's return token
    during sampling (None in round 1), the fraction of samples labelled with the best
    token, per-token counts, dataset size, and the held-out metrics of the policy
    conditioned on the best token (maj@1 each round, `eval_cfg` in full on the last).
    """
    if not train_examples:
        raise ValueError("run_rcrl: no training questions")
    rcrl_dir = Path(workdir) / "rcrl"
    rcrl_dir.mkdir(parents=True, exist_ok=True)
    state = _load_state(rcrl_dir, cfg)
    by_id = {ex.id: ex for ex in train_examples}
    best = best_return_token(cfg.num_bins)
    best_format = inference_format(policy.prompt_format, cfg.num_bins)
    evaluator = rcrl_policy(policy, cfg.num_bins)
    dataset = _load_dataset(rcrl_dir, state["rounds_done"])
    params = init_params
    if state["rounds_done"]:
        # The last finished round's fine-tuning is complete: this restores its params.
        params = _train_round(
            policy,
            init_params,
            dataset,
            by_id,
            cfg,
            optimizer,
            rcrl_dir,
            state["rounds_done"],
            show_progress,
        )
    for r in range(state["rounds_done"] + 1, cfg.num_rounds + 1):
        questions = round_questions(train_examples, cfg.questions_per_round, cfg.seed, r)
        sampling = policy.sampling_config(
            cfg.samples_per_question, cfg.temperature, cfg.max_new_tokens
        )
        key = jax.random.fold_in(jax.random.key(cfg.seed), r)
        sample_format = policy.prompt_format if r == 1 else best_format
        rollouts = sample_rollouts(
            policy, params, questions, sampling, key, cfg.prompts_per_call, sample_format
        )
        samples = rollouts.grouped()
        scores = score_samples(questions, samples, scorer)
        counts = Counter(return_token_for(s, cfg.num_bins) for row in scores for s in row)
        new = label_samples(questions, samples, scores, cfg.num_bins)
        if cfg.include_references:
            new, _ = merge(reference_examples(questions, cfg.num_bins), new)
        dataset, added = merge(dataset, new)
        dataset_size = sum(map(len, dataset.values()))
        num_samples = len(questions) * cfg.samples_per_question
        drawn = state["samples_drawn"] + num_samples
        log.info(
            "RCRL round %d: %d/%d samples %s, %d new examples, dataset %d",
            r,
            counts[best],
            num_samples,
            best,
            added,
            dataset_size,
        )
        start = init_params if cfg.retrain_from_initial else params
        params = _train_round(
            policy, start, dataset, by_id, cfg, optimizer, rcrl_dir, r, show_progress
        )
        result = None
        if eval_examples:
            last = r == cfg.num_rounds
            result = evaluator.evaluate(
                params, eval_examples, eval_cfg if last else greedy_only(eval_cfg)
            )
            write_json(rcrl_dir / f"eval_round_{r}.json", result)
        entry = {
            "round": r,
            "samples_drawn": drawn,
            "questions": len(questions),
            "sampled_with": None if r == 1 else best,
            "good_fraction": counts[best] / num_samples,
            "token_counts": {t: counts[t] for t in return_tokens(cfg.num_bins)},
            "new_examples": added,
            "dataset_size": dataset_size,
            "eval": flat_summary(result) if result else {},
        }
        write_atomic(rcrl_dir / f"dataset_round_{r}.jsonl", _dataset_jsonl(dataset))
        state = {
            "rounds_done": r,
            "samples_drawn": drawn,
            "num_bins": cfg.num_bins,
            "history": [*state["history"], entry],
        }
        write_json(rcrl_dir / "state.json", state)
    return params, state["history"]


def _train_round(
    policy: Policy,
    start_params: Any,
    dataset: Dataset,
    by_id: Mapping[str, Example],
    cfg: RCRLConfig,
    optimizer: OptimizerConfig,
    rcrl_dir: Path,
    round_index: int,
    show_progress: bool,
) -> Any:
    """Fine-tune on the conditioned dataset; a round already finished is just restored."""
    batches = training_batches(policy, dataset, by_id, cfg, round_index)
    if batches is None:
        log.warning("RCRL round %d: no examples; the policy is unchanged", round_index)
        return start_params
    return fine_tune_round(
        policy, start_params, batches, cfg, optimizer, rcrl_dir, round_index, show_progress, "rcrl"
    )
