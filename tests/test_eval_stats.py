"""FID and KID against independent SciPy/NumPy computations and hand-derived values (issue 6)."""

import numpy as np
import pytest
import scipy.linalg

from cptrans_jax.eval_stats import (
    feature_statistics,
    fid,
    frechet_distance,
    kid,
    mmd2_unbiased,
    paper_scale,
)


def features(seed, n=300, d=16, shift=0.0, scale=1.0):
    """Correlated Gaussian features; the mixing matrix is shared, so equal shift and scale
    mean one distribution."""
    mix = np.random.default_rng(1234).normal(size=(d, d)) / np.sqrt(d)
    return (np.random.default_rng(seed).normal(size=(n, d)) @ mix) * scale + shift


def scipy_fid(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def loop_mmd2(x, y, degree):
    """Unbiased MMD² written as explicit sums over pairs."""
    k = lambda a, b: (a @ b / x.shape[1] + 1.0) ** degree  # noqa: E731
    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_fid_matches_scipy_sqrtm():
    a, b = features(0), features(1, shift=0.3, scale=1.2)
    ours, ref = fid(a, b), scipy_fid(a, b)
    assert ref > 1.0
    assert abs(ours - ref) <= 1e-6 * abs(ref)


def test_fid_hand_values():
    a = features(2)
    assert abs(fid(a, a)) < 1e-8
    # same covariance, mean moved by v: FID = ‖v‖²
    v = np.arange(16) / 10.0
    assert abs(fid(a, a + v) - float(v @ v)) < 1e-8
    # 1-D Gaussians: (μ1−μ2)² + (σ1 − σ2)²
    assert abs(frechet_distance([0.0], [[4.0]], [1.0], [[1.0]]) - (1 + 1)) < 1e-12


@pytest.mark.parametrize("degree", [3, 21])
def test_kid_subset_estimate_matches_pair_sums(degree):
    x, y = features(3, n=12, d=6), features(4, n=12, d=6, shift=0.5)
    ours = mmd2_unbiased(x, y, degree=degree)
    ref = loop_mmd2(x, y, degree)
    assert abs(ours - ref) <= 1e-6 * abs(ref)


def test_kid_is_reproducible_and_near_zero_for_one_distribution():
    a, b = features(5, n=400), features(6, n=400)
    m1, s1 = kid(a, b, num_subsets=20, subset_size=100, seed=7)
    assert (m1, s1) == kid(a, b, num_subsets=20, subset_size=100, seed=7)
    far, _ = kid(a, features(8, n=400, shift=1.0), num_subsets=20, subset_size=100)
    assert abs(m1) < 3 * s1 + 1e-3 and far > 10 * abs(m1)
    assert paper_scale(250.0, 0.0123) == {"FID/100": 2.5, "KIDx100": 1.23}


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="features1 must be"):
        kid(np.zeros(5), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="widths differ"):
        kid(np.ones((5, 2)), np.ones((5, 3)))
    with pytest.raises(ValueError, match="NaN or Inf"):
        feature_statistics(np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="statistics do not match"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
