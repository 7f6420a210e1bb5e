"""KL-coefficient controllers and running reward moments for PPO (host-side state).

These live outside jit: the loop reads `controller.value`, passes it into the jitted step
as an array, and calls `update` with the measured KL once per rollout batch. Every object
round-trips through `state_dict()` / `from_state_dict()` as plain JSON-able dicts so the
training loop can store it in its checkpoint metadata.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, coef: float) -> None:
        if coef < 0:
            raise ValueError(f"KL coef must be >= 0, got {coef}")
        self.value = float(coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: the coefficient is fixed."""
        del current_kl, n_steps

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "fixed", "value": self.value}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> FixedKLController:
        return cls(state["value"])


class AdaptiveKLController:
    """Ziegler et al. 2019 proportional controller, as in trlX.

    After a rollout batch of `n_steps` samples with measured KL `current_kl`:
      err = clip(current_kl / target - 1, -0.2, 0.2);  coef *= 1 + err * n_steps / horizon.
    """

    def __init__(self, init_coef: float, target: float, horizon: float) -> None:
        if init_coef < 0:
            raise ValueError(f"init_coef must be >= 0, got {init_coef}")
        if target <= 0:
            raise ValueError(f"target KL must be > 0, got {target}; use FixedKLController")
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value = float(init_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        err = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + err * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "adaptive",
            "value": self.value,
            "target": self.target,
            "horizon": self.horizon,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> AdaptiveKLController:
        return cls(state["value"], state["target"], state["horizon"])


def kl_controller_from_state(state: dict[str, Any]) -> FixedKLController | AdaptiveKLController:
    """Rebuild whichever controller wrote `state`."""
    kinds = {"fixed": FixedKLController, "adaptive": AdaptiveKLController}
    if state.get("kind") not in kinds:
        raise ValueError(
            f"unknown KL controller kind {state.get('kind')!r}; expected one of {sorted(kinds)}"
        )
    return kinds[state["kind"]].from_state_dict(state)


class RunningMoments:
    """Mean and (population) variance of every value seen so far.

    Batches are merged with Chan et al.'s parallel formula, so updating with batches one
    by one, or merging the moments of several hosts, equals the moments of the whole
    concatenation. Used for trlX-style reward scaling: divide by the running std and clip.
    """

    def __init__(self, mean: float = 0.0, var: float = 1.0, count: float = 0.0) -> None:
        self.mean, self.var, self.count = float(mean), float(var), float(count)

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def merge(self, mean: float, var: float, count: float) -> None:
        """Fold in the moments (mean, population var, count) of another set of values."""
        if count <= 0:
            return
        if self.count <= 0:
            self.mean, self.var, self.count = float(mean), float(var), float(count)
            return
        total = self.count + count
        delta = mean - self.mean
        m2 = self.var * self.count + var * count + delta**2 * self.count * count / total
        self.mean += delta * count / total
        self.var = m2 / total
        self.count = total

    def update(self, xs: Any) -> tuple[float, float]:
        """Fold in a batch of values; returns that batch's (mean, std)."""
        x = np.asarray(xs, np.float64).ravel()
        if x.size == 0:
            return 0.0, 0.0
        mean, var = float(x.mean()), float(x.var())
        self.merge(mean, var, x.size)
        return mean, math.sqrt(var)

    def scale(self, xs: Any, clip: float | None = 10.0, eps: float = 1e-8) -> np.ndarray:
        """xs / running std, clipped to +-clip (trlX "running" scaling; no mean shift)."""
        out = np.asarray(xs, np.float64) / (self.std + eps)
        if clip is not None:
            out = np.clip(out, -clip, clip)
        return out.astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> RunningMoments:
        return cls(state["mean"], state["var"], state["count"])
