"""Adapter-only checkpoints for LoRA runs, on top of `checkpointing.Checkpointer`.

A state whose params hold LoRA adapters is saved as its trained part only (adapters,
heads, optimizer state, step: `lora.split_trainable`) plus, in the JSON meta, the
fingerprint of the frozen base it was trained on (paths, shapes, dtypes, SHA-256). A
restore reads that part onto a state built on a base (e.g. from `ModelSetup.
init_checkpoint`, a path) and joins it with that base's arrays; a base of other shapes
or another hash is refused with a message naming both. A state without adapters is saved
and restored exactly as before.
"""

from __future__ import annotations

from typing import Any

import jax

from jaxrl_reason.model import lora
from jaxrl_reason.training.checkpointing import Checkpointer
from jaxrl_reason.training.train_state import TrainState, join_state, split_state

BASE_KEY = "lora_base"  # meta key of the base's fingerprint


def _params_of(arrays: Any) -> Any:
    return arrays.params if isinstance(arrays, TrainState) else arrays


def _concrete(tree: Any) -> bool:
    return all(isinstance(x, jax.Array) for x in jax.tree.leaves(tree))


def _shapes(tree: Any) -> dict[str, list[Any]]:
    return {
        jax.tree_util.keystr(p): [list(x.shape), str(x.dtype)]
        for p, x in jax.tree_util.tree_leaves_with_path(tree)
    }


class AdapterCheckpointer:
    """A `Checkpointer` over the trained part of LoRA states (see the module docstring).

    `base`: the state (or params) the run trains; its frozen arrays are what restored
    parts are joined with, and its fingerprint is written into every save's meta.
    `base_name` names the base in messages (e.g. its path).
    """

    def __init__(self, ckpt: Checkpointer, base: Any, base_name: str = "this run's base"):
        self._ckpt = ckpt
        self._base_name = base_name
        frozen = split_state(base)[1]
        self._fingerprint = {"shapes": _shapes(frozen), "name": base_name}
        if _concrete(frozen):
            self._fingerprint["sha256"] = lora.base_fingerprint(frozen)["sha256"]

    def __getattr__(self, name: str) -> Any:  # latest_step, meta, wait, close, directory ...
        return getattr(self._ckpt, name)

    def save(
        self,
        step: int,
        state: Any,
        meta: dict[str, Any] | None = None,
        force: bool = False,
        final: bool = False,
    ) -> bool:
        part, _ = split_state(state)
        meta = {**(meta or {}), BASE_KEY: self._fingerprint}
        return self._ckpt.save(step, part, meta, force, final)

    def restore(
        self, target: Any, step: int | None = None, read_only: bool = False
    ) -> tuple[Any, dict[str, Any]]:
        """(state, meta): the saved part of `step` joined with `target`'s base, after
        checking that the checkpoint was trained on that base."""
        self.check_base(self._ckpt.meta(step))
        part, frozen = split_state(target)
        restored, meta = self._ckpt.restore(part, step, read_only)
        return join_state(restored, frozen), meta

    def check_base(self, meta: dict[str, Any]) -> None:
        """Refuse a checkpoint whose meta names another base than this one."""
        saved = meta.get(BASE_KEY)
        if saved is None:
            raise ValueError(
                f"{self._ckpt.directory}: not an adapter-only checkpoint (no {BASE_KEY} in "
                "its meta) but this run trains LoRA adapters; use a fresh workdir"
            )
        mine = self._fingerprint
        problem = None
        if saved["shapes"] != mine["shapes"]:
            problem = f"other shapes ({_first(saved['shapes'], mine['shapes'])})"
        elif "sha256" in saved and "sha256" in mine and saved["sha256"] != mine["sha256"]:
            problem = "other weights"
        if problem:
            raise ValueError(
                f"{self._ckpt.directory}: LoRA adapters trained on base {_name(saved)} cannot "
                f"be restored onto base {_name(mine)}: {problem}; restore them onto the base "
                "they were trained on"
            )


def _first(a: dict[str, Any], b: dict[str, Any]) -> str:
    """The first leaf whose shape or dtype differs between two bases."""
    k = next(k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
    return f"{k}: {a.get(k)} vs {b.get(k)}"


def _name(fingerprint: dict[str, Any]) -> str:
    sha = fingerprint.get("sha256")
    return f"{fingerprint.get('name')!r}" + (f" (sha256 {sha[:12]})" if sha else "")


def adapter_checkpointer(ckpt: Checkpointer, base: Any, base_name: str | None = None) -> Any:
    """`ckpt` itself when `base` holds no adapters, else an `AdapterCheckpointer` on it."""
    if not lora.has_adapters(_params_of(base)):
        return ckpt
    return AdapterCheckpointer(ckpt, base, base_name or "this run's base")
