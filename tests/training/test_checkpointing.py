"""Checkpoints: exact round trip, pruning, fallback from a damaged newest step, errors."""

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_reason.parallel import make_mesh
from jaxrl_reason.run_files import RunFileError
from jaxrl_reason.training import (
    Checkpointer,
    CheckpointRestoreError,
    OptimizerConfig,
    TrainState,
    init_train_state,
    make_optimizer,
)

TX = make_optimizer(OptimizerConfig(accumulation_steps=2, weight_decay=0.1))


def _state(seed: int) -> TrainState:
    rng = np.random.default_rng(seed)
    params = {
        "dense": {"kernel": jnp.asarray(rng.normal(size=(4, 8)), jnp.float32)},
        "norm": {"scale": jnp.asarray(rng.normal(size=(8,)), jnp.bfloat16)},
    }
    state = TrainState.create(params, TX)
    # Non-trivial optimizer state: a few updates with random gradients.
    for _ in range(3):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
        _, opt = TX.update(grads, state.opt_state, state.params)
        state = state.replace(opt_state=opt, step=state.step + 1)
    return state


def _assert_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _damage(step_dir: str) -> None:
    """Delete the array data files of a saved state (a lost or truncated write)."""
    removed = 0
    for root, _, files in os.walk(os.path.join(step_dir, "state")):
        for name in files:
            if root.endswith(os.sep + "d"):
                os.remove(os.path.join(root, name))
                removed += 1
    assert removed


def test_round_trip_is_exact_and_keeps_meta(tmp_path):
    state = _state(0)
    meta = {"data": {"position": 17}, "rng": [1, 2], "phase": "ei_round_2"}
    with Checkpointer(tmp_path, async_save=True) as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.save(5, state, meta)
        ckpt.wait()
        assert ckpt.latest_step() == 5
        restored, restored_meta = ckpt.restore(_state(1))  # a different concrete target
        abstract = jax.eval_shape(lambda: state)
        from_abstract, _ = ckpt.restore(abstract)
    _assert_equal(restored, state)
    _assert_equal(from_abstract, state)
    assert restored_meta == meta


def test_keep_prunes_old_steps_and_save_every_skips(tmp_path):
    state = _state(0)
    with Checkpointer(tmp_path, keep=2, save_every=2, async_save=False) as ckpt:
        saved = [ckpt.save(s, state, {"s": s}) for s in range(1, 8)]
        assert ckpt.save(9, state, {"s": 9}, force=True)
        assert ckpt.all_steps() == [6, 9]
    assert saved == [False, True, False, True, False, True, False]
    assert sorted(int(d) for d in os.listdir(tmp_path) if d.isdigit()) == [6, 9]


def test_damaged_newest_falls_back_with_a_warning(tmp_path, caplog):
    old, new = _state(0), _state(1)
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, old, {"s": 1})
        ckpt.save(2, new, {"s": 2})
    _damage(os.path.join(tmp_path, "2"))
    with Checkpointer(tmp_path) as ckpt, caplog.at_level(logging.WARNING):
        restored, meta = ckpt.restore(new)
        assert meta == {"s": 1}
        # Step 1 lost its optimizer state when step 2 was saved: the target's is used.
        _assert_equal(restored, old.replace(opt_state=new.opt_state))
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("step 2" in w and "failed to restore" in w for w in warnings), warnings
        assert any("step 1" in w and "no optimizer state" in w for w in warnings), warnings
        # The damaged step is moved aside, so the resumed run can save step 2 again.
        assert ckpt.all_steps() == [1]
        assert ckpt.save(2, new, {"s": 2}, force=True)
        ckpt.wait()
        _assert_equal(ckpt.restore(old)[0], new)
    assert os.path.isdir(os.path.join(tmp_path, "damaged_step_2"))


def test_only_the_newest_step_keeps_optimizer_state_and_a_final_save_none(tmp_path):
    states = [_state(s) for s in range(4)]
    with Checkpointer(tmp_path, keep=3, async_save=True) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(step, states[step], {"s": step})
        ckpt.wait()
        has_opt = [os.path.isdir(os.path.join(tmp_path, str(s), "opt")) for s in (1, 2, 3)]
        assert has_opt == [False, False, True]
        # The newest restores exactly, optimizer state included, onto another target.
        _assert_equal(ckpt.restore(states[0])[0], states[3])
        # An older step restores its params, step and meta; the optimizer is the target's.
        older, meta = ckpt.restore(states[0], step=2)
        _assert_equal(older, states[2].replace(opt_state=states[0].opt_state))
        assert meta == {"s": 2}
        with pytest.raises(ValueError, match="no optimizer state"):
            ckpt.restore(jax.eval_shape(lambda: states[0]), step=2)
        ckpt.save(4, states[1], {"s": 4}, final=True)
        ckpt.wait()
        assert not any(os.path.isdir(os.path.join(tmp_path, str(s), "opt")) for s in (2, 3, 4))
        _assert_equal(ckpt.restore(states[0])[0], states[1].replace(opt_state=states[0].opt_state))
        assert ckpt.meta() == {"s": 4}


def test_checkpoints_without_a_train_state_and_of_the_old_layout_restore(tmp_path):
    import orbax.checkpoint as ocp

    params = _state(0).params
    with Checkpointer(tmp_path / "p", async_save=False) as ckpt:
        ckpt.save(1, params, {"a": 1})
        ckpt.save(2, params, {"a": 2})
        _assert_equal(ckpt.restore(params)[0], params)
    # A step written before the optimizer state had its own item (state + meta only).
    state = _state(2)
    old = ocp.CheckpointManager(tmp_path / "old", item_names=("state", "meta"))
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave({"b": 1}))
    old.save(7, args=args)
    old.wait_until_finished()
    old.close()
    with Checkpointer(tmp_path / "old") as ckpt:
        restored, meta = ckpt.restore(_state(0))
    _assert_equal(restored, state)
    assert meta == {"b": 1}


def test_no_restorable_checkpoint_raises(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(FileNotFoundError, match="no checkpoint"):
            ckpt.restore(_state(0))
        ckpt.save(3, _state(0), {})
    _damage(os.path.join(tmp_path, "3"))
    with Checkpointer(tmp_path) as ckpt, pytest.raises(CheckpointRestoreError, match="step"):
        ckpt.restore(_state(0))


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_restore_lands_on_the_target_shardings(tmp_path):
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = make_mesh(data=2, fsdp=2, tensor=2, devices=jax.devices()[:8])
    params = {"w": jnp.arange(32.0).reshape(4, 8)}
    shardings = {"w": NamedSharding(mesh, P("fsdp", "tensor"))}
    state = init_train_state(params, TX, mesh, shardings)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state, {})
        ckpt.wait()
        target = init_train_state({"w": jnp.zeros((4, 8))}, TX, mesh, shardings)
        restored, _ = ckpt.restore(target)
    assert restored.params["w"].sharding.spec == P("fsdp", "tensor")
    mirrors = [x for x in jax.tree.leaves(restored.opt_state) if x.shape == (4, 8)]
    assert len(mirrors) == 3  # Adam's mu and nu, and the accumulated gradient
    assert all(x.sharding.spec == P("fsdp", "tensor") for x in mirrors)
    _assert_equal(restored, state)


def test_a_damaged_meta_names_its_file_and_the_newest_falls_back(tmp_path, caplog):
    state = {"w": jnp.ones(3)}
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, state, {"rounds_done": 1}, force=True)
        ckpt.save(2, state, {"rounds_done": 2}, force=True)
    meta_file = tmp_path / "2" / "meta" / "metadata"
    meta_file.write_text('{"rounds_done": 2, "hist')  # a truncated write on a flaky disk
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        with pytest.raises(RunFileError, match=rf"{meta_file}:1:\d+: the meta of the .* step 2"):
            ckpt.meta(2)
        with caplog.at_level(logging.WARNING):
            assert ckpt.meta() == {"rounds_done": 1}
        assert f"{meta_file}:1:" in caplog.text and "trying the previous" in caplog.text
    (tmp_path / "1" / "meta" / "metadata").write_text("")
    with (
        Checkpointer(tmp_path, async_save=False) as ckpt,
        pytest.raises(RunFileError, match="no checkpoint in .* has a readable meta"),
    ):
        ckpt.meta()
