"""jaxrl_reason: teach language models to reason with reinforcement learning, in JAX."""

__version__ = "0.1.0"
