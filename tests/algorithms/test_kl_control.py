"""KL controllers and running moments against their formulas and numpy."""

import json

import numpy as np
import pytest

from jaxrl_reason.algorithms.kl_control import (
    AdaptiveKLController,
    FixedKLController,
    RunningMoments,
    kl_controller_from_state,
)


def test_adaptive_controller_follows_formula():
    c = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    expected = 0.1
    for kl, n in [(12.0, 64), (6.6, 64), (3.0, 128), (0.0, 64), (5.7, 32)]:
        c.update(kl, n)
        err = np.clip(kl / 6.0 - 1, -0.2, 0.2)
        expected *= 1 + err * n / 10_000
        assert c.value == pytest.approx(expected, rel=1e-12)
    assert c.value != 0.1


def test_controllers_json_round_trip():
    a = AdaptiveKLController(0.05, target=4.0, horizon=500)
    a.update(8.0, 100)
    for ctrl in (a, FixedKLController(0.02)):
        state = json.loads(json.dumps(ctrl.state_dict()))
        back = kl_controller_from_state(state)
        assert type(back) is type(ctrl) and back.state_dict() == ctrl.state_dict()
        ctrl.update(1.0, 10)
        back.update(1.0, 10)
        assert back.value == ctrl.value
    f = FixedKLController(0.02)
    f.update(100.0, 1000)
    assert f.value == 0.02
    with pytest.raises(ValueError, match="kind"):
        kl_controller_from_state({"kind": "pid"})


def test_running_moments_equal_numpy_over_concatenation():
    rng = np.random.default_rng(0)
    batches = [rng.normal(2.0, 3.0, size=n) for n in (1, 7, 64, 3)]
    rm = RunningMoments()
    for x in batches:
        bmean, bstd = rm.update(x)
        assert bmean == pytest.approx(x.mean()) and bstd == pytest.approx(x.std())
    allx = np.concatenate(batches)
    assert rm.mean == pytest.approx(allx.mean(), rel=1e-12)
    assert rm.std == pytest.approx(allx.std(), rel=1e-12)
    assert rm.count == allx.size
    # merging two hosts' moments equals one host seeing everything
    a, b = RunningMoments(), RunningMoments()
    a.update(allx[:30])
    b.update(allx[30:])
    a.merge(b.mean, b.var, b.count)
    assert a.mean == pytest.approx(allx.mean()) and a.std == pytest.approx(allx.std())
    back = RunningMoments.from_state_dict(json.loads(json.dumps(rm.state_dict())))
    assert back.state_dict() == rm.state_dict()


def test_running_scale_divides_by_std_and_clips():
    rm = RunningMoments()
    rm.update([0.0, 2.0])  # std 1
    np.testing.assert_allclose(
        rm.scale([0.5, 30.0, -30.0], clip=10.0), [0.5, 10.0, -10.0], rtol=1e-6
    )
