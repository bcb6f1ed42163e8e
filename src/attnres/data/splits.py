"""Validation splits: parsing `val_split` and a seeded, stratified split by class."""

from __future__ import annotations

import torch

DEFAULT_VAL_SPLIT = 0.1
DIGITS_VAL_SPLIT = 0.2


def _check_val_split(val_split: float | None, n: int) -> int | None:
    """Turn `val_split` into a number of validation images (None stays None).

    A fraction in (0, 1) or a whole count in [1, n - 1]; anything else is a ValueError.
    """
    if val_split is None:
        return None
    if isinstance(val_split, bool) or not isinstance(val_split, (int, float)):
        raise ValueError(f"val_split {val_split!r} is not a number; use a fraction in (0, 1) "
                         f"or a whole number of images")
    v = float(val_split)
    if 0.0 < v < 1.0:
        count = round(v * n)
    elif v >= 1.0 and v.is_integer():
        count = int(v)
    else:
        raise ValueError(f"val_split {val_split!r} is outside (0, 1); use a fraction in (0, 1) "
                         f"or a whole number of images between 1 and {n - 1}")
    if not 1 <= count <= n - 1:
        raise ValueError(f"val_split {val_split!r} gives {count} validation images out of {n}; "
                         f"it must leave at least 1 image in each split")
    return count


def stratified_split(labels: torch.Tensor, n_val: int, seed: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices so each class keeps its share in both parts; seeded, order-independent.

    labels: int64 `(N,)`. Returns (train_idx, val_idx), each sorted. Per-class validation counts
    are `n_val * n_c / N` rounded by largest remainder (so they sum to exactly `n_val`), and a
    class of two or more images always keeps at least one training image.
    """
    labels = torch.as_tensor(labels, dtype=torch.int64)
    n = labels.numel()
    if not 0 < n_val < n:
        raise ValueError(f"n_val {n_val} must be between 1 and {n - 1}")
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * n_val / n
    per_class = exact.floor().long()
    # hand the remaining images to the classes with the largest remainders (ties: lower label)
    remainder = exact - per_class
    order = sorted(range(len(classes)), key=lambda i: (-float(remainder[i]), i))
    for i in order[: n_val - int(per_class.sum())]:
        per_class[i] += 1
    per_class = torch.minimum(per_class, (counts - 1).clamp(min=0))
    gen = torch.Generator().manual_seed(int(seed))
    train_parts, val_parts = [], []
    for c, k in zip(classes.tolist(), per_class.tolist()):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        val_parts.append(idx[:k])
        train_parts.append(idx[k:])
    return torch.cat(train_parts).sort().values, torch.cat(val_parts).sort().values


__all__ = ["DEFAULT_VAL_SPLIT", "DIGITS_VAL_SPLIT", "stratified_split"]
