"""A tiny SFT run for the resume/preemption tests, and the toy data they share.

Run as a script: `python sft_run_script.py WORKDIR --num_steps N ...`; on completion it
writes the final params to WORKDIR/final_params.npz. Logging goes to stdout so a test can
watch for "saving checkpoint at step K" lines.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any

import numpy as np

VOCAB = 64
PAD = 0
PROMPT_LEN = 4
RESPONSE_LEN = 8
SEQ_LEN = 16  # prompt + response + right padding


def tiny_config() -> Any:
    from jaxrl_reason.model import ModelConfig

    return ModelConfig(
        vocab_size=VOCAB,
        d_model=32,
        num_layers=2,
        num_heads=2,
        num_kv_heads=2,
        head_dim=16,
        mlp_dim=64,
        max_seq_len=SEQ_LEN,
    )


def toy_sequences(num: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`num` fixed right-padded rows: tokens [num, SEQ_LEN] and loss_mask (response only)."""
    rng = np.random.default_rng(seed)
    tokens = np.full((num, SEQ_LEN), PAD, np.int32)
    loss_mask = np.zeros((num, SEQ_LEN), np.float32)
    for i in range(num):
        resp = int(rng.integers(RESPONSE_LEN // 2, RESPONSE_LEN + 1))
        n = PROMPT_LEN + resp
        tokens[i, :n] = rng.integers(1, VOCAB, n)
        loss_mask[i, PROMPT_LEN:n] = 1.0
    return tokens, loss_mask


class ToyBatches:
    """A resumable iterator: batch i holds rows drawn by `default_rng((seed, i))`."""

    def __init__(
        self, batch_size: int = 4, num_sequences: int = 8, seed: int = 0, delay: float = 0.0
    ) -> None:
        self.tokens, self.loss_mask = toy_sequences(num_sequences, seed)
        self.batch_size, self.seed, self.delay = batch_size, seed, delay
        self.position = 0

    def __iter__(self) -> ToyBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.delay:
            time.sleep(self.delay)
        rows = np.random.default_rng((self.seed, self.position)).choice(
            len(self.tokens), self.batch_size, replace=False
        )
        batch = {
            "tokens": self.tokens[rows],
            "loss_mask": self.loss_mask[rows],
            "positions": np.broadcast_to(
                np.arange(SEQ_LEN, dtype=np.int32), (self.batch_size, SEQ_LEN)
            ).copy(),
            "batch_index": np.full((self.batch_size,), self.position, np.int32),
        }
        self.position += 1
        return batch

    def state(self) -> dict[str, Any]:
        return {"position": self.position}

    def restore(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("--num_steps", type=int, default=30)
    parser.add_argument("--checkpoint_every", type=int, default=5)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per batch")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stdout, level=logging.WARNING, format="%(message)s")
    logging.getLogger("jaxrl_reason").setLevel(logging.INFO)

    import jax

    from jaxrl_reason.model import init_params
    from jaxrl_reason.training import OptimizerConfig, train_sft

    config = tiny_config()
    params = jax.jit(init_params, static_argnums=0)(config, jax.random.key(0))
    opt = OptimizerConfig(
        learning_rate=3e-3, warmup_steps=3, total_steps=args.num_steps, weight_decay=0.01
    )
    state = train_sft(
        config,
        params,
        lambda: ToyBatches(delay=args.delay),
        opt,
        args.workdir,
        num_steps=args.num_steps,
        seed=1,
        checkpoint_every=args.checkpoint_every,
        show_progress=False,
    )
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(state.params))
    np.savez(
        os.path.join(args.workdir, "final_params.npz"),
        **{jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves},
    )
    print("finished", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
