"""Orbax checkpoints of a train state plus a JSON dict of algorithm state.

Each checkpoint holds up to three items: `state` (any pytree of arrays, usually a `TrainState`,
with the optimizer state of every `TrainState` in it cut out), `opt` (those optimizer states)
and `meta` (JSON: data position, EI round, RNG key as ints, phase name ...). Only the newest
step keeps `opt`, and the save that ends a phase (`final=True`) writes none: resuming needs
the optimizer state of one step only, and it is most of a checkpoint's bytes (Adam: twice the
params). Restoring an older step, as the fallback from a damaged newest one does, starts the
optimizer afresh from the target's and says so. Orbax writes a
step into a temporary directory and renames it when complete, so a process killed while
saving leaves no half-written step behind. A step that is damaged later (a lost file, a
truncated write on a flaky file system) is skipped with a warning and the previous one is
restored; we never silently start over.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from jaxrl_reason.model import init_params, param_logical_axes
from jaxrl_reason.parallel import logical_shardings
from jaxrl_reason.run_files import RunFileError
from jaxrl_reason.training.train_state import TrainState

log = logging.getLogger(__name__)
_MAX_REASON = 400  # characters of an orbax/tensorstore error kept in messages
# Meta key of a checkpoint whose optimizer states are their own item: "kept" (in `opt`) or
# "dropped" (a final save, or an older step after a newer one was saved).
_OPT_KEY = "_optimizer_state"


class CheckpointRestoreError(RuntimeError):
    """No checkpoint in the directory could be restored."""


class NoOptimizerStateError(ValueError):
    """An abstract target asks for the optimizer state of a step that holds none."""


def _abstract(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a concrete or abstract pytree."""

    def leaf(x: Any) -> Any:
        if isinstance(x, jax.ShapeDtypeStruct):
            return x
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))

    return jax.tree.map(leaf, tree)


def _is_train_state(x: Any) -> bool:
    return isinstance(x, TrainState)


def split_optimizer(tree: Any) -> tuple[Any, list[Any]]:
    """(`tree` with the `opt_state` of every `TrainState` in it set to None, those optimizer
    states in tree order)."""
    opts: list[Any] = []

    def cut(x: Any) -> Any:
        if _is_train_state(x):
            opts.append(x.opt_state)
            return x.replace(opt_state=None)
        return x

    return jax.tree.map(cut, tree, is_leaf=_is_train_state), opts


def join_optimizer(slim: Any, opts: list[Any]) -> Any:
    """The inverse of `split_optimizer`."""
    it = iter(opts)
    return jax.tree.map(
        lambda x: x.replace(opt_state=next(it)) if _is_train_state(x) else x,
        slim,
        is_leaf=_is_train_state,
    )


class Checkpointer:
    """Keeps the newest `keep` checkpoints of a run in `workdir`.

    `save(step, ...)` writes only steps that are multiples of `save_every`, unless
    `force=True`; `final=True` (the end of a phase, which is never trained on from) writes
    no optimizer state. Once a newer step is saved, older steps lose theirs (see the module
    doc). With `async_save` the arrays are copied to host memory and written in the
    background; call `wait()` before relying on a save, and `close()` at the end.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        keep: int = 3,
        save_every: int = 1,
        async_save: bool = True,
        cleanup_tmp: bool = True,
    ) -> None:
        if keep < 1:
            raise ValueError(f"Checkpointer keep={keep}: keep at least 1 checkpoint")
        if save_every < 1:
            raise ValueError(f"Checkpointer save_every={save_every}: must be >= 1")
        self.directory = os.path.abspath(os.fspath(workdir))
        self.save_every = save_every
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            create=cleanup_tmp,
            cleanup_tmp_directories=cleanup_tmp,  # False: a reader leaves a writer's saves be
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "opt", "meta")
        )
        self._writes = cleanup_tmp  # False: a reader, which must not drop anything either

    def save(
        self,
        step: int,
        state: Any,
        meta: dict[str, Any] | None = None,
        force: bool = False,
        final: bool = False,
    ) -> bool:
        """Save `state` and `meta` as `step` when `force` or `step % save_every == 0`.

        Returns whether a save was started (False as well when `step` is already saved).
        `final`: the phase ends here; its optimizer state is not written.
        """
        if not (force or step % self.save_every == 0) or step in self._manager.all_steps():
            return False
        if _OPT_KEY in (meta or {}):
            raise ValueError(f"checkpoint meta may not use the key {_OPT_KEY!r}")
        # The previous save has finished by now (saves are many steps apart), so older
        # steps can give up their optimizer state before this one is written.
        self.wait()
        slim, opts = split_optimizer(state)
        items = {"state": ocp.args.StandardSave(slim)}
        if opts and not final:
            items["opt"] = ocp.args.StandardSave(opts)
        kept = "kept" if "opt" in items else "dropped"
        items["meta"] = ocp.args.JsonSave({**dict(meta or {}), _OPT_KEY: kept})
        saved = self._manager.save(int(step), args=ocp.args.Composite(**items), force=True)
        if saved:
            log.info("saving checkpoint at step %d in %s", step, self.directory)
        return saved

    def _drop_stale_optimizer_states(self) -> None:
        """Delete the `opt` item of every step but the newest (process 0; all wait)."""
        steps = sorted(self._manager.all_steps())
        if not self._writes or len(steps) < 2:
            return
        if jax.process_index() == 0:
            for step in steps[:-1]:
                item = os.path.join(self.directory, str(step), "opt")
                if os.path.isdir(item):
                    # A rename first: a crash mid-delete leaves no half `opt` to restore.
                    gone = f"{item}.dropped"
                    os.rename(item, gone)
                    shutil.rmtree(gone, ignore_errors=True)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("jaxrl_reason_checkpoint_drop_opt")

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def meta(self, step: int | None = None) -> dict[str, Any]:
        """The JSON meta of `step` (default: the newest), without reading any array.

        A damaged meta file raises `RunFileError` naming it; when `step` is None a WARNING
        names it and older steps are tried in turn (as `restore` does).
        """
        self.wait()
        steps = [step] if step is not None else sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no checkpoint to read in {self.directory}")
        errors = []
        for s in steps:
            try:
                args = ocp.args.Composite(meta=ocp.args.JsonRestore())
                meta = dict(self._manager.restore(s, args=args).meta or {})
                meta.pop(_OPT_KEY, None)
                return meta
            except Exception as e:  # noqa: BLE001 - any failure means "damaged"
                errors.append(self._meta_error(s, e))
                if step is None:
                    log.warning("%s; trying the previous checkpoint", errors[-1])
        if step is not None:
            raise RunFileError(errors[0])
        raise RunFileError(
            f"no checkpoint in {self.directory} has a readable meta; delete or repair the "
            "directory, or point the run at a fresh workdir: " + "; ".join(errors)
        )

    def _meta_error(self, step: int, err: Exception) -> str:
        """One line naming the meta file of `step` and what is wrong with it."""
        path = os.path.join(self.directory, str(step), "meta", "metadata")
        if isinstance(err, json.JSONDecodeError):
            where, reason = f"{path}:{err.lineno}:{err.colno}", f"not valid JSON ({err.msg})"
        else:
            where, reason = path, f"unreadable ({type(err).__name__}: {str(err)[:_MAX_REASON]})"
        return (
            f"{where}: the meta of the checkpoint at step {step} is {reason}; move "
            f"{os.path.join(self.directory, str(step))} aside to resume from the previous step"
        )

    def restore(
        self, target: Any, step: int | None = None, read_only: bool = False
    ) -> tuple[Any, dict[str, Any]]:
        """(state, meta) of `step` (default: the newest that restores) onto `target`'s layout.

        `target` is a concrete or abstract (`jax.ShapeDtypeStruct`) state; its shapes,
        dtypes and shardings are used. When `step` is None and the newest checkpoint is
        damaged, a WARNING names it and older ones are tried in turn (and the damaged ones
        are moved aside as `damaged_step_N`). `read_only` (what `eval` reads with) changes
        nothing on disk and never falls back: a damaged step is an error.
        """
        self.wait()
        saved = sorted(self._manager.all_steps())
        if step is not None and step not in saved:
            raise FileNotFoundError(
                f"no step {step} in {self.directory}: it holds steps {saved or 'none'}"
            )
        steps = [step] if step is not None else saved[::-1]
        if read_only:
            steps = steps[:1]
        if not steps:
            raise FileNotFoundError(f"no checkpoint to restore in {self.directory}")
        abstract = _abstract(target)
        errors = []
        for s in steps:
            try:
                state, meta = self._restore_step(s, target, abstract)
            except NoOptimizerStateError:
                raise  # the step is whole; the caller asked for what it does not hold
            except Exception as e:  # noqa: BLE001 - any failure means "damaged"
                reason = f"{type(e).__name__}: {str(e)[:_MAX_REASON]}"
                errors.append(f"step {s}: {_first_line(reason)}")
                if read_only:
                    break
                log.warning(
                    "checkpoint at step %d in %s failed to restore (%s); "
                    "falling back to the previous checkpoint",
                    s,
                    self.directory,
                    reason,
                )
                continue
            if errors:
                self._quarantine([d for d in steps if d > s])
                log.warning(
                    "restored checkpoint step %d in %s after skipping %d damaged one(s)",
                    s,
                    self.directory,
                    len(errors),
                )
            return state, meta
        if read_only:
            raise CheckpointRestoreError(
                f"step {steps[0]} in {self.directory} is damaged ({errors[0]}); re-run the "
                "training command to re-create it, or pick another step (it holds steps "
                f"{saved})"
            )
        raise CheckpointRestoreError(
            f"no checkpoint in {self.directory} could be restored (tried steps {steps}: "
            f"{'; '.join(errors)}); delete or repair the directory, or point the run at a "
            "fresh workdir"
        )

    def _restore_step(self, step: int, target: Any, abstract: Any) -> tuple[Any, dict[str, Any]]:
        """(state, meta) of one step; raises whatever orbax raises for a damaged one."""
        meta_args = ocp.args.Composite(meta=ocp.args.JsonRestore())
        meta = dict(self._manager.restore(step, args=meta_args).meta or {})
        layout = meta.pop(_OPT_KEY, None)
        if layout is None:  # written before the optimizer state was its own item
            args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            return self._manager.restore(step, args=args).state, meta
        slim, opts = split_optimizer(abstract)
        items = {"state": ocp.args.StandardRestore(slim)}
        has_opt = os.path.isdir(os.path.join(self.directory, str(step), "opt"))
        if opts and has_opt:
            items["opt"] = ocp.args.StandardRestore(opts)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        if not opts:
            return restored.state, meta
        if has_opt:
            return join_optimizer(restored.state, list(restored.opt)), meta
        fresh = split_optimizer(target)[1]
        if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(fresh)):
            raise NoOptimizerStateError(
                f"step {step} in {self.directory} holds no optimizer state (only the "
                "newest step of a phase that has not ended keeps it); restore it onto a "
                "concrete state, whose optimizer state is then used"
            )
        if layout == "kept":  # an older step: its optimizer state went when a newer came
            log.warning(
                "step %d in %s holds no optimizer state (only the newest step keeps it); "
                "resuming with the optimizer state started afresh",
                step,
                self.directory,
            )
        return join_optimizer(restored.state, fresh), meta

    def _quarantine(self, steps: list[int]) -> None:
        """Move damaged steps aside (kept for inspection) so the run can save them anew."""
        if jax.process_index() == 0:
            for step in steps:
                move_aside(self.directory, step)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("jaxrl_reason_checkpoint_quarantine")
        self._manager.reload()

    def wait(self) -> None:
        """Block until any background save has finished (then drop stale optimizer state)."""
        self._manager.wait_until_finished()
        self._drop_stale_optimizer_states()

    def close(self) -> None:
        self.wait()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def move_aside(directory: str | os.PathLike, step: int) -> str | None:
    """Rename the damaged `directory/step` to `damaged_step_N` (kept for inspection; `.1`,
    `.2` ... when that name is taken) and return the new path; None if it is not there."""
    src = os.path.join(os.fspath(directory), str(step))
    if not os.path.isdir(src):
        return None
    dst = os.path.join(os.fspath(directory), f"damaged_step_{step}")
    n = 0
    while os.path.exists(dst):
        n += 1
        dst = os.path.join(os.fspath(directory), f"damaged_step_{step}.{n}")
    os.rename(src, dst)
    log.warning("moved damaged checkpoint %s to %s", src, dst)
    return dst


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def abstract_params(config: Any, heads: tuple[str, ...] = (), mesh: Any = None) -> Any:
    """ShapeDtypeStructs of a model's params, placed on `mesh` by the logical-axis rules
    (or on the first device): the target `load_params` restores onto."""
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0), heads=heads))
    if mesh is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, shapes)
    else:
        shardings = logical_shardings(param_logical_axes(config, heads), mesh)
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings
    )


def save_params(
    directory: str | os.PathLike, params: Any, meta: dict[str, Any], step: int | None = None
) -> int:
    """Save `params` (and JSON `meta`) in `directory` as `step` (default: after the newest
    step); return the step. A `step` already there is an error (steps are never replaced)."""
    with Checkpointer(directory, keep=1000, async_save=False) as ckpt:
        steps = ckpt.all_steps()
        if step is None:
            step = max(steps) + 1 if steps else 0
        if not ckpt.save(step, params, meta, force=True):
            raise FileExistsError(f"{directory} already holds step {step}; nothing was written")
    return step


def load_params(
    directory: str | os.PathLike,
    target: Any,
    step: int | None = None,
    what: str = "params",
    read_only: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """(params, meta) of `directory`'s newest (or `step`) checkpoint onto `target`'s layout
    (e.g. `abstract_params(...)`). `what` names them in the error when there are none;
    `read_only` as in `Checkpointer.restore`."""
    if not os.path.isdir(directory) or not os.listdir(directory):
        raise FileNotFoundError(
            f"no saved {what} in {os.fspath(directory)}: train the run first "
            "(`jaxrl-reason train ...` or `jaxrl-reason demo`)"
        )
    with Checkpointer(directory, keep=1000, async_save=False, cleanup_tmp=not read_only) as ckpt:
        return ckpt.restore(target, step, read_only)
