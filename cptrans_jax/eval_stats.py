"""FID and KID from feature arrays (SPEC §7): the statistics behind ``cptrans_jax.evaluate``.

Both take Inception pool features (N, D) of translated frames and of real visible frames; the
feature extractor lives elsewhere. Everything here is float64 NumPy: the numbers are small and
their reproducibility matters more than speed.

* FID = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½). The trace of the matrix square root is computed
  as Σ √λ over the eigenvalues λ of the symmetric PSD matrix Σ₁^½ Σ₂ Σ₁^½ (similar to Σ₁Σ₂), which
  avoids the complex-valued ``sqrtm`` of a non-symmetric product.
* KID = the unbiased MMD² with the polynomial kernel k(x, y) = (γ x·y + c₀)^d (γ = 1/D, c₀ = 1;
  degree 3 by default, the CPTrans paper uses 21), averaged over random subsets.

The papers' tables print FID/100 and KID×100; :func:`paper_scale` gives those, labelled.
"""

from __future__ import annotations

import numpy as np


def _features(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must be (N ≥ 2, D) features, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or Inf")
    return x


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features (what FID compares)."""
    f = _features(features, "features")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """The Fréchet distance between two Gaussians (FID from feature statistics)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(
            f"statistics do not match: means {mu1.shape}, {mu2.shape}; covariances "
            f"{s1.shape}, {s2.shape}"
        )
    root1 = _sqrt_psd(s1)
    middle = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = float(np.sum(np.sqrt(np.clip(eig, 0, None))))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt)


def fid(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID between two feature sets (N₁, D) and (N₂, D)."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def polynomial_kernel(
    x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None, coef0: float = 1.0
) -> np.ndarray:
    """k(x, y) = (γ x·y + c₀)^d, γ = 1/D by default (the KID convention)."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (gamma * (x @ y.T) + coef0) ** degree


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, **kernel: float) -> float:
    """Unbiased MMD² of two equal-size samples (the KID estimate of one subset)."""
    m = x.shape[0]
    if y.shape[0] != m:
        raise ValueError(f"KID subsets must have equal sizes, got {m} and {y.shape[0]}")
    kxx = polynomial_kernel(x, x, **kernel)
    kyy = polynomial_kernel(y, y, **kernel)
    kxy = polynomial_kernel(x, y, **kernel)
    off = m * (m - 1)
    return float(
        (kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2 * kxy.mean()
    )


def kid(
    features1: np.ndarray,
    features2: np.ndarray,
    *,
    degree: int = 3,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID (mean, std over subsets) between two feature sets.

    Each subset draws ``min(subset_size, N₁, N₂)`` rows without replacement from each set with
    a generator seeded by ``seed``, so a result is reproducible.
    """
    f1, f2 = _features(features1, "features1"), _features(features2, "features2")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature widths differ: {f1.shape[1]} and {f2.shape[1]}")
    if degree < 1 or num_subsets < 1:
        raise ValueError(f"KID needs degree ≥ 1 and num_subsets ≥ 1, got {degree}, {num_subsets}")
    m = min(subset_size, f1.shape[0], f2.shape[0])
    rng = np.random.default_rng(seed)
    values = [
        mmd2_unbiased(
            f1[rng.choice(f1.shape[0], m, replace=False)],
            f2[rng.choice(f2.shape[0], m, replace=False)],
            degree=degree,
        )
        for _ in range(num_subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


def paper_scale(fid_value: float, kid_value: float) -> dict[str, float]:
    """The tables' forms, labelled: FID/100 and KID×100."""
    return {"FID/100": fid_value / 100.0, "KIDx100": kid_value * 100.0}
