"""Memory of one SFT train step, from XLA's own accounting of the compiled step.

For a model (a preset, or the config.json of a HF directory) and a batch shape, prints the
bytes of the params, their gradients and the AdamW state, and of the compiled step
(`jax.jit(...).lower(...).compile().memory_analysis()`: arguments, which the step donates
and updates in place, and temporaries, i.e. activations, gradients and logits) with and
without rematerialised layers (`ModelConfig.remat`) and chunked logits
(`training.losses.sft_loss_fn(chunked=...)`). Nothing is allocated: the state is abstract
(`jax.eval_shape`), so a 7B model is measured on a laptop. XLA:CPU's numbers; a GPU or TPU
compiler schedules differently, so read them as the size of what the step must hold.

    python -m benchmarks.step_memory --model smollm2_135m --batch 8 --seq-len 256
    python -m benchmarks.step_memory --hf-dir DIR --batch 8 --seq-len 256
"""

from __future__ import annotations

import argparse
import itertools
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxrl_reason.model import ModelConfig, Transformer, init_params, model_config
from jaxrl_reason.training.losses import sft_loss_fn
from jaxrl_reason.training.train_state import TrainState
from jaxrl_reason.training.train_step import make_train_step

GB = 1e9
# SmolLM2-135M-Instruct's shape (config.json of HuggingFaceTB/SmolLM2-135M-Instruct).
SMOLLM2_135M = ModelConfig(
    vocab_size=49152,
    d_model=576,
    num_layers=30,
    num_heads=9,
    num_kv_heads=3,
    head_dim=64,
    mlp_dim=1536,
    max_seq_len=8192,
    rope_theta=100000.0,
    tie_embeddings=True,
)


def nbytes(tree: Any) -> int:
    return sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def step_memory(config: ModelConfig, batch: int, seq_len: int, chunked: bool) -> dict[str, Any]:
    """Bytes of the state and of one compiled SFT step (abstract: nothing is allocated)."""
    model = Transformer(config)
    tx = optax.adamw(1e-5)
    params = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    state = jax.eval_shape(
        lambda p: TrainState(step=jnp.int32(0), params=p, opt_state=tx.init(p)), params
    )
    tokens = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)
    rng = jax.eval_shape(lambda: jax.random.key(0))
    step = make_train_step(model, tx, sft_loss_fn(model, chunked=chunked))
    start = time.perf_counter()
    analysis = step.lower(state, {"tokens": tokens, "loss_mask": tokens}, rng).compile()
    analysis = analysis.memory_analysis()
    return {
        "params": nbytes(params),
        "opt_state": nbytes(state.opt_state),
        "arguments": analysis.argument_size_in_bytes,
        "temp": analysis.temp_size_in_bytes,
        "compile_s": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2_135m", help="a preset, or smollm2_135m")
    parser.add_argument("--hf-dir", default=None, help="a HF model directory (its config.json)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    args = parser.parse_args()
    if args.hf_dir:
        from jaxrl_reason.model.hf_interop import _read_hf_config

        config, name = _read_hf_config(pathlib.Path(args.hf_dir)), args.hf_dir
    elif args.model == "smollm2_135m":
        config, name = SMOLLM2_135M, "SmolLM2-135M"
    else:
        config, name = model_config(args.model), args.model
    print(f"{name}: {config.num_params() / 1e6:.0f}M params, batch {args.batch} x {args.seq_len}")
    print("| remat | chunked logits | params + grads + AdamW GB | activations, logits GB |", end="")
    print(" step total GB |")
    print("|---|---|---|---|---|")
    for remat, chunked in itertools.product((False, True), (False, True)):
        m = step_memory(config.replace(remat=remat), args.batch, args.seq_len, chunked)
        fixed = m["arguments"] + m["params"]  # the state, plus its gradients (one params)
        print(
            f"| {remat} | {chunked} | {fixed / GB:.2f} | {(m['temp'] - m['params']) / GB:.2f} "
            f"| {(m['arguments'] + m['temp']) / GB:.2f} |"
        )


if __name__ == "__main__":
    main()
