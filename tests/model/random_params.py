"""Random model params drawn with numpy: fast, and large enough to exercise every weight."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_reason.model import init_params


def random_params(config, seed=0, heads=()):
    """Params in the model's tree: norm scales near 1, other weights N(0, 0.3^2)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0), heads))
    return jax.tree_util.tree_map_with_path(
        lambda path, s: jnp.asarray(
            (1 + 0.2 * rng.standard_normal(s.shape))
            if "norm" in jax.tree_util.keystr(path)
            else 0.3 * rng.standard_normal(s.shape),
            s.dtype,
        ),
        shapes,
    )


def randomize_hf_model(model, seed=0):
    """A `transformers` model's params drawn in place as `random_params` draws ours: norm
    weights near 1 (non-unit scales catch swapped norms), others N(0, 0.3^2) (large enough
    to make RoPE and mask errors visible). Returns the model, in eval mode."""
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    return model.eval()
