"""k-means for codebook initialisation: k-means++ seeding, then Lloyd iterations, in float32."""

from __future__ import annotations

import torch


def squared_distances(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """N x K squared L2 distances between N x D points and K x D centroids (float32, clamped at 0)."""
    x = x.float()
    centroids = centroids.float()
    d = x.pow(2).sum(1, keepdim=True) - 2.0 * x @ centroids.t() + centroids.pow(2).sum(1)
    return d.clamp_min_(0.0)


def _nearest(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of and squared distance to the nearest centroid for every point, in chunks to bound memory."""
    ids, dists = [], []
    for part in x.split(chunk):
        d = squared_distances(part, centroids)
        best, idx = d.min(1)
        ids.append(idx)
        dists.append(best)
    return torch.cat(ids), torch.cat(dists)


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next centroid drawn with probability ~ D(x)^2."""
    n = x.shape[0]
    first = torch.randint(n, (1,), generator=generator, device=x.device)
    centroids = [x[first]]
    closest = squared_distances(x, centroids[0]).squeeze(1)
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than k: pick uniformly among the rest
            pick = torch.randint(n, (1,), generator=generator, device=x.device)
        else:
            pick = torch.multinomial(closest / total, 1, generator=generator)
        centroids.append(x[pick])
        closest = torch.minimum(closest, squared_distances(x, x[pick]).squeeze(1))
    return torch.cat(centroids)


def kmeans(x: torch.Tensor, k: int, *, iters: int = 20, seed: int = 0) -> torch.Tensor:
    """Cluster N x D points into k centroids (k x D, float32). Deterministic for a given seed and input.

    Empty clusters are moved to the points currently farthest from their centroid, so all k codes start in use.
    """
    if x.shape[0] < k:
        raise ValueError(f"k-means needs at least k={k} points, got {x.shape[0]}")
    x = x.float()
    generator = torch.Generator(device=x.device).manual_seed(seed)
    centroids = kmeans_plus_plus(x, k, generator)
    for _ in range(iters):
        ids, dists = _nearest(x, centroids)
        counts = torch.bincount(ids, minlength=k).float()
        sums = torch.zeros_like(centroids).index_add_(0, ids, x)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
        empty = (~filled).nonzero().squeeze(1)
        if empty.numel():
            farthest = dists.topk(empty.numel()).indices
            centroids[empty] = x[farthest]
    return centroids
