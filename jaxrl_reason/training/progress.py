"""A tqdm progress bar that shows tokens/s and, when the device's peak is known, MFU."""

from __future__ import annotations

import time
from typing import Any

import jax
from tqdm.auto import tqdm

# Dense bf16 peak FLOP/s per device, by substrings of `jax.Device.device_kind`.
PEAK_FLOPS = (
    ("v5p", 459e12),
    ("v5 lite", 197e12),
    ("v5e", 197e12),
    ("v6", 918e12),
    ("v4", 275e12),
    ("h200", 989e12),
    ("h100", 989e12),
    ("a100", 312e12),
)


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
    """The bf16 peak of `device` (default: the first device), or None when unknown (CPU)."""
    kind = (device or jax.devices()[0]).device_kind.lower()
    for name, flops in PEAK_FLOPS:
        if name in kind:
            return flops
    return None


class ThroughputBar:
    """`update(steps, tokens)` advances the bar and shows tokens/s (and MFU if known).

    MFU = achieved model FLOP/s / (peak FLOP/s per device x devices), where achieved
    FLOP/s = tokens/s x `flops_per_token` (e.g. `ModelConfig.flops_per_token(seq_len)`).
    """

    def __init__(
        self,
        total: int,
        initial: int = 0,
        desc: str = "train",
        flops_per_token: float | None = None,
        peak_flops: float | None = None,
        num_devices: int | None = None,
        disable: bool | None = None,
    ) -> None:
        if disable is None:
            disable = jax.process_index() != 0
        self._bar = tqdm(
            total=total, initial=initial, desc=desc, disable=disable, dynamic_ncols=True
        )
        self.flops_per_token = flops_per_token
        peak = peak_flops if peak_flops is not None else peak_flops_per_device()
        self.total_peak = None if peak is None else peak * (num_devices or jax.device_count())
        self._start = time.perf_counter()
        self._updates = 0
        self.tokens = 0
        self.tokens_per_s = 0.0

    def rates(self) -> dict[str, float]:
        """{"tokens_per_s", "mfu" (when the peak is known)} as of the last update."""
        out = {"tokens_per_s": self.tokens_per_s}
        if self.flops_per_token and self.total_peak:
            out["mfu"] = self.tokens_per_s * self.flops_per_token / self.total_peak
        return out

    def update(self, steps: int = 1, tokens: int = 0, **postfix: Any) -> dict[str, float]:
        """Count `steps` and `tokens` done since the last call; returns `rates()`.

        The first update usually includes compilation, so it is rated alone and the
        average restarts after it.
        """
        now = time.perf_counter()
        self._updates += 1
        self.tokens += tokens
        self.tokens_per_s = self.tokens / max(now - self._start, 1e-9)
        if self._updates == 1:
            self._start, self.tokens = now, 0
        rates = self.rates()
        shown = {"tok/s": f"{rates['tokens_per_s']:.3g}"}
        if "mfu" in rates:
            shown["mfu"] = f"{100 * rates['mfu']:.1f}%"
        shown.update({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in postfix.items()})
        self._bar.set_postfix(shown, refresh=False)
        self._bar.update(steps)
        return rates

    def close(self) -> None:
        self._bar.close()
