"""Shared test set-up: one torch thread per test process (CI has 2 cores and the suite
runs in two pytest-xdist workers), and the non-interactive matplotlib backend."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

torch.set_num_threads(1)
