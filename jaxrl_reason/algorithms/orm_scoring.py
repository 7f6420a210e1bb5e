"""Score samples with a trained outcome reward model (ORM), and load a trained ORM.

`ORMScorer` gives the ORM's probability that a sample's final answer is right: at the last
token of a finished sample (a `Scorer` for rerank@K in evaluation), and after every
response token of exact token ids (PPO's sparse and dense ORM rewards). The ORM is a
`Transformer(config, heads=("reward",))`; `orm_training.py` trains it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxrl_reason.algorithms.policy import Policy
from jaxrl_reason.algorithms.rollouts import sequence_batch
from jaxrl_reason.data.example import Example
from jaxrl_reason.data.pipeline import bucket_length
from jaxrl_reason.model import ModelConfig, Transformer, param_logical_axes
from jaxrl_reason.parallel import activation_sharding, batch_shards, logical_shardings
from jaxrl_reason.parallel.hosts import to_host
from jaxrl_reason.rewards.orm import final_scores, reward_logits
from jaxrl_reason.training.checkpointing import abstract_params, load_params
from jaxrl_reason.training.train_step import shard_batch

ORM_HEADS = ("reward",)


@functools.lru_cache(maxsize=8)
def _scoring_fn(config: ModelConfig) -> Any:
    """Jitted `(params, batch) -> (final [N], sigmoid of every logit [N, T])`."""
    model = Transformer(config, heads=ORM_HEADS)

    def score(params: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        logits = reward_logits(model, params, batch)  # [N, T]
        return final_scores(logits, batch["response_mask"]), jax.nn.sigmoid(logits)

    return jax.jit(score)


def _orm_shardings(config: ModelConfig, mesh: Any) -> Any:
    return logical_shardings(param_logical_axes(config, ORM_HEADS), mesh)


class ORMScorer:
    """ORM scores of finished samples: a `Scorer` for rerank@K, and token-level scores for
    PPO's sparse/dense ORM rewards.

    Rows are scored in chunks of at most `rows_per_call`, sorted by length, with the row
    count bucketed to a power of two (times the mesh's batch shards) and the length to a
    multiple of `length_multiple`, so few shapes compile.
    """

    def __init__(
        self,
        policy: Policy,
        orm_params: Any,
        rows_per_call: int = 64,
        length_multiple: int = 64,
    ):
        self.policy = policy
        self.mesh = policy.mesh
        self.shards = batch_shards(self.mesh)
        self.rows_per_call = -(-rows_per_call // self.shards) * self.shards
        self.length_multiple = length_multiple
        if self.mesh is not None:
            orm_params = jax.device_put(orm_params, _orm_shardings(policy.model_config, self.mesh))
        self.params = orm_params
        self._score = _scoring_fn(policy.model_config)

    def __call__(
        self, examples: Sequence[Example], samples: Sequence[Sequence[str]]
    ) -> list[list[float]]:
        """[B][K] scores: the ORM at the last token of `prompt + text + EOS`."""
        if len(examples) != len(samples):
            raise ValueError(f"{len(examples)} questions but {len(samples)} rows of samples")
        tok, fmt = self.policy.tokenizer, self.policy.prompt_format
        prompts = tok.encode_batch([fmt.format(ex.question) for ex in examples])
        flat = [text for row in samples for text in row]
        responses = tok.encode_batch(flat, add_bos=False, add_eos=True)
        prompt_rows = [prompts[b] for b, row in enumerate(samples) for _ in row]
        final, _ = self.score_tokens(prompt_rows, responses)
        out, start = [], 0
        for row in samples:
            out.append([float(x) for x in final[start : start + len(row)]])
            start += len(row)
        return out

    def score_tokens(
        self,
        prompt_ids: Sequence[Sequence[int]],
        response_ids: Sequence[Sequence[int]],
        step_end_masks: Sequence[np.ndarray] | None = None,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """(final scores [N] float32, per row the scores over its response tokens).

        A row's token scores are the ORM's sigmoid after each response token, kept at its
        `step_end_masks` (0 elsewhere), or at every token when no masks are given; feed them
        to `place_response_values` and `rewards.orm.dense_orm_rewards` for dense rewards.
        """
        n = len(prompt_ids)
        if n != len(response_ids):
            raise ValueError(f"{n} prompts but {len(response_ids)} responses")
        if step_end_masks is not None:
            if len(step_end_masks) != n:
                raise ValueError(f"{len(step_end_masks)} step-end masks for {n} rows")
            for i, (m, r) in enumerate(zip(step_end_masks, response_ids)):
                if len(m) != len(r):
                    raise ValueError(
                        f"row {i}: step-end mask of length {len(m)} for {len(r)} response tokens"
                    )
        final = np.zeros(n, np.float32)
        steps: list[np.ndarray] = [np.zeros(0, np.float32)] * n
        order = sorted(range(n), key=lambda i: -(len(prompt_ids[i]) + len(response_ids[i])))
        for start in range(0, n, self.rows_per_call):
            rows = order[start : start + self.rows_per_call]
            prompts = [prompt_ids[i] for i in rows]
            rows_bucket = bucket_length(len(rows), self.shards, powers_of_two=True)
            batch = sequence_batch(
                prompts,
                [response_ids[i] for i in rows],
                self.policy.tokenizer.pad_id,
                self.length_multiple,
                rows_multiple=min(rows_bucket, self.rows_per_call),
            )
            chunk_final, probs = self._run(batch)
            for j, i in enumerate(rows):
                final[i] = chunk_final[j]
                p, r = len(prompt_ids[i]), len(response_ids[i])
                row = probs[j, p : p + r].astype(np.float32)
                if step_end_masks is not None:
                    row = np.where(np.asarray(step_end_masks[i], np.bool_), row, 0.0)
                steps[i] = row
        return final, steps

    def _run(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        arrays = shard_batch(batch, self.mesh)
        if self.mesh is None:
            out = self._score(self.params, arrays)
        else:
            with activation_sharding(self.mesh):
                out = self._score(self.params, arrays)
        final, probs = to_host(out)
        return np.asarray(final, np.float32), np.asarray(probs, np.float32)


def load_orm(phase_dir: str | os.PathLike, policy: Policy) -> tuple[Any, dict[str, Any]]:
    """(params, phase meta) of the ORM trained in `phase_dir` (a run's `orm/`), laid out on
    `policy.mesh`."""
    target = abstract_params(policy.model_config, ORM_HEADS, policy.mesh)
    return load_params(os.path.join(phase_dir, "state"), target, what="ORM")
