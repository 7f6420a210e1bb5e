"""Rollouts: K sampled solutions per question, as text and as the exact token ids drawn.

Every consumer of samples goes through `sample_rollouts`: the RL algorithms (EI keeps the
texts, PPO the ids and log-probs, the ORM both) and evaluation (the greedy decode and the K
samples behind maj@K, pass@K and rerank@K). Samples are cut at the prompt format's stop
sequences, with EOS kept when it was sampled; each kept token has its raw-policy log-prob,
so log-probs and scores refer to the tokens the policy chose, never to a re-tokenisation.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxrl_reason.data.example import Example
from jaxrl_reason.data.prompts import PromptFormat
from jaxrl_reason.sampling.config import SamplingConfig
from jaxrl_reason.sampling.text import TextSampler


@dataclasses.dataclass(frozen=True)
class Rollouts:
    """N = B * K sampled solutions, row n = sample n % K of question n // K."""

    examples: list[Example]  # [N] the question of each row
    texts: list[str]  # [N] completions, cut at the first stop sequence
    prompt_ids: list[list[int]]  # [N] prompt ids (BOS included)
    response_ids: list[list[int]]  # [N] kept sampled ids (EOS included when sampled)
    policy_logprobs: list[np.ndarray]  # [N] raw-policy log-prob of each response id
    num_samples: int  # K

    def __len__(self) -> int:
        return len(self.texts)

    def grouped(self) -> list[list[str]]:
        """The texts as [B][K]."""
        k = self.num_samples
        return [self.texts[i : i + k] for i in range(0, len(self.texts), k)]

    def questions(self) -> list[Example]:
        """The B questions, in order."""
        return self.examples[:: self.num_samples]

    def num_tokens(self) -> int:
        """Response tokens sampled, over all rows."""
        return sum(map(len, self.response_ids))

    def select(self, rows: Sequence[int]) -> Rollouts:
        """The rows `rows`, in that order (whole groups of K keep `grouped` meaningful)."""
        pick = lambda xs: [xs[i] for i in rows]
        return Rollouts(
            pick(self.examples),
            pick(self.texts),
            pick(self.prompt_ids),
            pick(self.response_ids),
            pick(self.policy_logprobs),
            self.num_samples,
        )

    def __add__(self, other: Rollouts) -> Rollouts:
        """These rows, then `other`'s (the same K)."""
        if other.num_samples != self.num_samples:
            raise ValueError(
                f"cannot join rollouts of K = {self.num_samples} and K = {other.num_samples}"
            )
        return Rollouts(
            self.examples + other.examples,
            self.texts + other.texts,
            self.prompt_ids + other.prompt_ids,
            self.response_ids + other.response_ids,
            self.policy_logprobs + other.policy_logprobs,
            self.num_samples,
        )


class _TokenRate:
    """Tokens generated per second on a tqdm bar, over the calls so far and the running
    one (as its decode loop reports them; a call too short to report counts its kept
    tokens)."""

    def __init__(self, bar: tqdm) -> None:
        self.bar = bar
        self.start = time.perf_counter()
        self.done = 0
        self.current = 0

    def within_call(self, generated: int) -> None:
        self.current = generated
        self._show(self.done + generated)

    def call_done(self, kept: int) -> None:
        self.done += max(self.current, kept)
        self.current = 0
        self._show(self.done)

    def _show(self, tokens: int) -> None:
        seconds = max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{tokens:,} tokens, {tokens / seconds:,.0f} tokens/s")


def sample_rollouts(
    text_sampler: TextSampler,
    prompt_format: PromptFormat,
    params: Any,
    examples: Sequence[Example],
    cfg: SamplingConfig,
    rng: jax.Array,
    prompts_per_call: int = 64,
    progress: str | None = None,
) -> Rollouts:
    """K = `cfg.num_samples` solutions per question, `prompts_per_call` prompts per call.

    Call n of the sampler uses `fold_in(rng, n)`, so a run's samples depend only on the
    key, the questions and `prompts_per_call`. `progress` names a progress bar over the
    questions that also shows the tokens generated per second, updated from inside each
    sampler call (on process 0; None: no bar).
    """
    if not examples:
        raise ValueError("sample_rollouts: no questions to sample")
    prompts = [prompt_format.format(ex.question) for ex in examples]
    k = cfg.num_samples
    rows: dict[str, list[Any]] = {"texts": [], "prompt_ids": [], "response_ids": [], "lp": []}
    bar = tqdm(
        total=len(prompts),
        desc=progress,
        unit="q",
        disable=progress is None or jax.process_index() != 0,
    )
    rate = _TokenRate(bar)
    with bar:  # closed (its line ended) also when an error or SIGTERM stops the sampling
        for n, start in enumerate(range(0, len(prompts), prompts_per_call)):
            out = text_sampler.generate(
                params,
                prompts[start : start + prompts_per_call],
                cfg,
                jax.random.fold_in(rng, n),
                stop_sequences=tuple(prompt_format.stop_sequences),
                progress=None if bar.disable else rate.within_call,
            )
            rate.call_done(int(out.num_tokens.sum()))
            for b, ids in enumerate(out.prompt_ids):
                for j in range(k):
                    m = int(out.num_tokens[b, j])
                    rows["texts"].append(out.texts[b][j])
                    rows["prompt_ids"].append(list(ids))
                    rows["response_ids"].append(out.tokens[b, j, :m].tolist())
                    rows["lp"].append(np.asarray(out.policy_logprobs[b, j, :m], np.float32))
            bar.update(len(out.prompt_ids))
    return Rollouts(
        examples=[ex for ex in examples for _ in range(k)],
        texts=rows["texts"],
        prompt_ids=rows["prompt_ids"],
        response_ids=rows["response_ids"],
        policy_logprobs=rows["lp"],
        num_samples=k,
    )
