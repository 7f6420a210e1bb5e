"""Fixtures for the algorithm loops: an arith tokenizer (with the RCRL return tokens), a
tiny policy on it, and arith questions."""

import pathlib

import jax
import pytest

from jaxrl_reason.algorithms.policy import Policy
from jaxrl_reason.algorithms.return_conditioning import return_tokens
from jaxrl_reason.data.prompts import zero_shot
from jaxrl_reason.data.tasks import load_task
from jaxrl_reason.data.tokenizer import train_tokenizer_for_task
from jaxrl_reason.model import ModelConfig, init_params

TINY = ModelConfig(
    vocab_size=384,
    d_model=32,
    num_layers=2,
    num_heads=2,
    num_kv_heads=1,
    head_dim=16,
    mlp_dim=64,
    max_seq_len=256,
)


@pytest.fixture(scope="session")
def arith_tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "arith.model"
    return train_tokenizer_for_task(
        "arith",
        path,
        vocab_size=384,
        num_examples=2000,
        seed=0,
        user_defined_symbols=return_tokens(2),
    )


@pytest.fixture(scope="session")
def arith_examples():
    return load_task("arith", "train", num_examples=64, seed=0)


@pytest.fixture(scope="session")
def tiny_policy(arith_tokenizer):
    return Policy(TINY, arith_tokenizer, zero_shot())


@pytest.fixture(scope="session")
def tiny_params():
    return init_params(TINY, jax.random.key(0))


def phase_context(policy, params, train, workdir, eval_examples=(), eval_config=None, **kw):
    """A `PhaseContext` for running one algorithm alone (tests: no progress bars)."""
    from jaxrl_reason.algorithms.rounds import PhaseContext
    from jaxrl_reason.evaluation.evaluate import EvalConfig
    from jaxrl_reason.training.optimizer import OptimizerConfig

    return PhaseContext(
        policy=policy,
        init_params=params,
        train=list(train),
        eval_examples=list(eval_examples),
        eval_config=eval_config or EvalConfig(num_samples=0, max_new_tokens=12),
        optimizer=kw.pop("optimizer", OptimizerConfig(learning_rate=1e-3)),
        workdir=pathlib.Path(workdir),
        show_progress=False,
        **kw,
    )


def rollouts_of(examples, texts):
    """Rollouts of `examples` with `texts[b]` as question b's K samples (dummy token ids)."""
    import numpy as np

    from jaxrl_reason.sampling.rollouts import Rollouts

    k = len(texts[0])
    flat = [t for row in texts for t in row]
    return Rollouts(
        examples=[ex for ex in examples for _ in range(k)],
        texts=flat,
        prompt_ids=[[1]] * len(flat),
        response_ids=[[2]] * len(flat),
        policy_logprobs=[np.zeros(1, np.float32)] * len(flat),
        num_samples=k,
    )
