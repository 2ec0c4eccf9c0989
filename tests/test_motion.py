import numpy as np

from deblur_rotate.data.motion import MotionConfig, sample_performance


def _perf(seed, frames=448):
    return sample_performance(np.random.default_rng(seed), frames, 112.0, n_exp=10)


def test_deterministic_and_shapes():
    a, b = _perf(1), _perf(1)
    assert np.array_equal(a.rotation, b.rotation) and np.array_equal(a.expression, b.expression)
    assert a.rotation.shape == (448, 3) and a.expression.shape == (448, 10) and a.light.shape == (448, 27)
    assert not np.array_equal(a.rotation, _perf(2).rotation)


def test_speeds_are_realistic_and_sometimes_quick():
    config = MotionConfig()
    peaks = []
    for seed in range(12):
        perf = _perf(seed)
        speed = np.abs(np.diff(np.degrees(perf.rotation), axis=0)) * 112.0  # deg/s per axis
        assert speed.max() <= config.max_speed_deg * 1.01
        peaks.append(speed[:, 1].max())
        yaw = np.degrees(perf.rotation[:, 1])
        assert np.abs(yaw).max() <= config.yaw_range_deg + 1e-3
    assert max(peaks) > 90.0  # quick turns happen
    assert np.median(peaks) > 30.0  # and most performances move enough to blur


def test_blinks_and_expressions_stay_in_range():
    perf = _perf(3, frames=1120)  # 10 s
    blink = perf.expression[:, 4]
    assert blink.max() > 0.95 and blink.min() >= 0.0  # at least one full blink
    assert (perf.expression >= -1e-6).all() and perf.expression.max() <= 1.0 + 1e-6
