"""Sinusoid tasks and episode validation."""

import math

import numpy as np
import pytest

from refmeta import checks
from refmeta.data import tasks


def test_phase_sign_is_explicit():
    x = np.array([0.5])
    assert tasks.sinusoid(x, 2.0, 0.3, phase_sign=-1)[0] == pytest.approx(2.0 * math.sin(0.2))
    assert tasks.sinusoid(x, 2.0, 0.3, phase_sign=+1)[0] == pytest.approx(2.0 * math.sin(0.8))


def test_sinusoid_episode_ranges_shapes_and_determinism():
    family = tasks.SinusoidFamily()
    first = tasks.sample_sinusoid_episode(np.random.default_rng(5), family, 25, 10, 7)
    again = tasks.sample_sinusoid_episode(np.random.default_rng(5), family, 25, 10, 7)
    assert first.support_x.shape == (25, 10, 1) and first.query_y.shape == (25, 7, 1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert first.support_x.min() >= -5 and first.support_x.max() <= 5
    assert np.abs(first.support_y).max() <= 5


def test_targets_follow_the_drawn_task():
    family = tasks.SinusoidFamily(phase_sign=+1, phase_range=(0.0, 2 * math.pi))
    rng = np.random.default_rng(0)
    amplitudes, phases = tasks.sample_sinusoid_tasks(rng, family, 3)
    episode = tasks.sinusoid_episode(rng, family, amplitudes, phases, 4, 4)
    expected = amplitudes[:, None, None] * np.sin(episode.query_x + phases[:, None, None])
    np.testing.assert_allclose(episode.query_y, expected, rtol=1e-15)


@pytest.mark.parametrize("family, message", [
    (tasks.SinusoidFamily(phase_sign=0), "phase_sign"),
    (tasks.SinusoidFamily(amplitude_range=(5.0, 0.1)), "amplitude_range"),
    (tasks.SinusoidFamily(x_range=(-math.inf, 5.0)), "x_range"),
])
def test_bad_family_is_refused(family, message):
    with pytest.raises(ValueError, match=message):
        tasks.sample_sinusoid_tasks(np.random.default_rng(0), family, 1)


def test_episode_validation(dev):
    x, y = dev.asarray(np.zeros((2, 5, 1))), dev.asarray(np.zeros((2, 5, 1)))
    checks.episode(tasks.Episode(x, y, x, y))
    with pytest.raises(ValueError, match="NaN or inf"):
        checks.episode(tasks.Episode(dev.asarray(np.full((2, 5, 1), np.nan)), y, x, y))
    with pytest.raises(ValueError, match="NaN or inf"):
        checks.episode(tasks.Episode(x, dev.asarray(np.full((2, 5, 1), np.inf)), x, y))
    with pytest.raises(ValueError, match="disagree"):
        checks.episode(tasks.Episode(x, y, dev.asarray(np.zeros((3, 5, 1))), dev.asarray(np.zeros((3, 5, 1)))))
    with pytest.raises(ValueError, match="same"):
        checks.episode(tasks.Episode(x, dev.asarray(np.zeros((2, 4, 1))), x, y))
    with pytest.raises(TypeError, match="array"):
        checks.episode(tasks.Episode([[0.0]], y, x, y))


def test_classification_labels_are_checked(dev):
    images = dev.asarray(np.zeros((1, 4, 1, 3, 3)))
    good = dev.asarray(np.array([[0, 1, 2, 0]]))
    checks.episode(tasks.Episode(images, good, images, good), n_way=3)
    with pytest.raises(ValueError, match=r"0\.\.2 \(n_way=3\); got values from 0 to 7"):
        checks.episode(tasks.Episode(images, dev.asarray(np.array([[0, 1, 7, 0]])), images, good), n_way=3)
    with pytest.raises(TypeError, match="integers"):
        checks.episode(tasks.Episode(images, dev.asarray(np.zeros((1, 4))), images, good), n_way=3)
    with pytest.raises(ValueError, match="labels"):
        checks.episode(tasks.Episode(images, dev.asarray(np.zeros((1, 3), dtype=int)), images, good), n_way=3)
