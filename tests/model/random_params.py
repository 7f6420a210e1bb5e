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
