"""Codebooks: importance-weighted k-means (k-means++ seeding) and nearest-code assignment.

The fit is scikit-learn's Lloyd k-means with sample weights. Its k-means++ seeding reaches a lower weighted
distortion than faiss's random seeding for the same iteration cap, at a few seconds per plane
(`benchmarks/kmeans_libs.py`, docs/benchmarks.md). Empty clusters are re-seeded at badly fitted points during the
fit (dead-code replacement); codes still unused at the end are dropped, so no byte is spent on them.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

__all__ = ["fit_codebook", "assign", "weighted_code_means"]


def fit_codebook(
    features: torch.Tensor, weights: torch.Tensor, size: int, seed: int = 0, max_iter: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster ``features`` [N, C] weighted by ``weights`` [N] into at most ``size`` codes.

    Returns:
        codebook [K, C] (K <= size, every code used) and labels [N] (int64).
    """
    n = features.shape[0]
    if n == 0:
        return features.new_zeros(0, features.shape[1]), torch.zeros(0, dtype=torch.long)
    x = features.detach().float().cpu().numpy()
    if n <= size:
        codebook, labels = np.unique(x, axis=0, return_inverse=True)
        return torch.from_numpy(codebook), torch.from_numpy(labels.reshape(-1)).long()
    from sklearn.cluster import KMeans  # imported lazily: scikit-learn takes a second to import

    w = weights.detach().double().cpu().numpy()
    w = np.maximum(w, w[w > 0].min() * 1e-3 if (w > 0).any() else 1.0)  # zero-weight points still get a code
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on duplicate points: harmless, codes are compacted below
        km = KMeans(size, init="k-means++", n_init=1, max_iter=max_iter, tol=1e-5, random_state=seed)
        km.fit(x, sample_weight=w)
    labels = torch.from_numpy(km.labels_).long()
    codebook = torch.from_numpy(km.cluster_centers_.astype(np.float32))
    used, labels = torch.unique(labels, return_inverse=True)
    return codebook[used], labels


def assign(features: torch.Tensor, codebook: torch.Tensor, chunk: int = 1 << 14) -> torch.Tensor:
    """Index of the nearest code (L2) for each of ``features`` [N, C] -> [N] int64."""
    if features.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=features.device)
    code_norms = (codebook * codebook).sum(1)
    out = [((code_norms - 2 * part @ codebook.t())).argmin(1) for part in features.split(chunk)]
    return torch.cat(out)


def weighted_code_means(
    features: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, n_codes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean of the members of each code: ([n_codes, C], [n_codes] total weight); empty codes give 0."""
    total = torch.zeros(n_codes, dtype=features.dtype, device=features.device).index_add_(0, labels, weights)
    sums = torch.zeros(n_codes, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, labels, features * weights[:, None])
    return sums / total.clamp_min(1e-12)[:, None], total
