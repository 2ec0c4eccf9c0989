"""Smooth random performances for SynthBMFD: head rotation and translation, expressions, blinks, lighting.

Everything is sampled at the video frame rate with numpy from an explicit ``np.random.Generator``, so a
performance is a pure function of its seed. Movements are chains of minimum-jerk segments (the velocity
profile of human head movements) whose peak speed is drawn up to ``max_speed_deg`` (150 deg/s by
default: quick turns); short holds appear between some of them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["MotionConfig", "Performance", "sample_performance", "min_jerk_chain"]


@dataclass(frozen=True)
class MotionConfig:
    """Ranges of a performance (degrees, centimetres, seconds)."""

    max_speed_deg: float = 150.0  # peak angular speed of the quickest turns
    yaw_range_deg: float = 35.0  # world yaw within +-
    pitch_range_deg: tuple[float, float] = (-18.0, 14.0)  # world pitch range (positive: looking down)
    roll_range_deg: float = 10.0  # world roll within +-
    translation_cm: tuple[float, float, float] = (1.5, 1.0, 3.0)  # x, y, z within +-
    hold_probability: float = 0.12  # chance of a short pause between movements
    expression_activity: float = 0.35  # chance that an expression mode is active in a segment
    blink_interval_s: tuple[float, float] = (1.2, 4.0)  # time between blinks
    blink_duration_s: float = 0.22  # one blink, closing and opening


@dataclass
class Performance:
    """One performance of ``T`` frames."""

    rotation: np.ndarray  # [T, 3] world head (pitch, yaw, roll), radians
    translation: np.ndarray  # [T, 3] world head offset, cm
    expression: np.ndarray  # [T, n_exp] expression coefficients
    light: np.ndarray  # [T, 27] world-frame SH lighting

    @property
    def num_frames(self) -> int:
        return self.rotation.shape[0]


def _min_jerk(t: np.ndarray) -> np.ndarray:
    """Minimum-jerk position profile on t in [0, 1] (peak speed 1.875 / duration)."""
    return 10 * t**3 - 15 * t**4 + 6 * t**5


def min_jerk_chain(rng: np.random.Generator, num_frames: int, fps: float, sample_target, start: float,
                   duration_range: tuple[float, float], max_speed: float | None = None,
                   hold_probability: float = 0.0) -> np.ndarray:
    """A 1-D trajectory ``[T]``: a chain of minimum-jerk moves between targets drawn by ``sample_target()``.

    Each move lasts a random duration in ``duration_range`` seconds, lengthened if needed so its peak
    speed (1.875 * amplitude / duration) stays within ``max_speed`` units per second.
    """
    out = np.empty(num_frames)
    pos, frame = start, 0
    while frame < num_frames:
        if hold_probability and rng.random() < hold_probability:
            length = max(1, int(rng.uniform(0.08, 0.3) * fps))
            out[frame:frame + length] = pos
            frame += length
            continue
        target = sample_target()
        duration = rng.uniform(*duration_range)
        if max_speed is not None:
            duration = max(duration, 1.875 * abs(target - pos) / max_speed)
        length = max(2, int(round(duration * fps)))
        t = np.arange(1, length + 1) / length
        seg = pos + (target - pos) * _min_jerk(t)
        out[frame:frame + length] = seg[: num_frames - frame]
        pos, frame = target, frame + length
    return out


def _random_light(rng: np.random.Generator) -> np.ndarray:
    """World-frame SH lighting [27]: a mostly frontal key light with random direction, tint and fill."""
    light = np.zeros((3, 9))
    direction = rng.normal(size=3) * np.array([0.5, 0.35, 0.2]) + np.array([0.0, -0.2, -1.0])
    direction /= np.linalg.norm(direction)
    strength = rng.uniform(0.25, 0.5)
    tint = 1.0 + rng.normal(size=3) * 0.05
    for c in range(3):
        light[c, 0] = rng.normal() * 0.05 + rng.uniform(-0.1, 0.15)
        light[c, 1:4] = strength * tint[c] * direction
        light[c, 4:] = rng.normal(size=5) * 0.04
    return light.reshape(27)


def sample_performance(rng: np.random.Generator, num_frames: int, fps: float, n_exp: int,
                       config: MotionConfig = MotionConfig(), blink_mode: int | None = 4) -> Performance:
    """Sample a performance of ``num_frames`` frames at ``fps``.

    ``blink_mode`` is the index of the blink expression (in ``procedural.EXPRESSION_NAMES``) driven by
    blink events instead of slow moves; None disables blinks (e.g. for a BFM expression basis).
    """
    deg = math.pi / 180.0
    speed = config.max_speed_deg

    def axis(low, high, dur):
        peak = rng.uniform(0.3, 1.0) * speed  # some movements slow, some quick
        return min_jerk_chain(rng, num_frames, fps, lambda: rng.uniform(low, high), rng.uniform(low, high) * 0.5,
                              dur, max_speed=peak, hold_probability=config.hold_probability)

    yaw = axis(-config.yaw_range_deg, config.yaw_range_deg, (0.25, 0.8))
    pitch = axis(*config.pitch_range_deg, (0.3, 0.9))
    roll = axis(-config.roll_range_deg, config.roll_range_deg, (0.4, 1.0))
    rotation = np.stack([pitch, yaw, roll], -1) * deg

    tx, ty, tz = config.translation_cm
    translation = np.stack([
        min_jerk_chain(rng, num_frames, fps, lambda r=r: rng.uniform(-r, r), 0.0, (0.4, 1.2))
        for r in (tx, ty, tz)
    ], -1)

    expression = np.zeros((num_frames, n_exp))
    for k in range(n_exp):
        if k == blink_mode:
            continue
        high = 0.8 if k == 0 else 1.0  # jaw open at most 0.8
        expression[:, k] = min_jerk_chain(
            rng, num_frames, fps,
            lambda high=high: rng.uniform(0.0, high) if rng.random() < config.expression_activity else 0.0,
            0.0, (0.3, 1.0))
    if blink_mode is not None and blink_mode < n_exp:
        t = rng.uniform(0.0, config.blink_interval_s[1])
        times = np.arange(num_frames) / fps
        while t < times[-1] + config.blink_duration_s:
            phase = (times - t) / config.blink_duration_s
            pulse = np.where((phase >= 0) & (phase <= 1), np.sin(np.pi * np.clip(phase, 0, 1)) ** 2, 0.0)
            expression[:, blink_mode] = np.maximum(expression[:, blink_mode], pulse)
            t += config.blink_duration_s + rng.uniform(*config.blink_interval_s)

    start, end = _random_light(rng), _random_light(rng)
    w = np.linspace(0.0, 1.0, num_frames)[:, None]
    light = (1 - w) * start + w * end
    return Performance(rotation.astype(np.float32), translation.astype(np.float32),
                       expression.astype(np.float32), light.astype(np.float32))
