"""Shared test set-up: one torch thread per test process (CI has 2 cores and the suite
runs in two pytest-xdist workers), the non-interactive matplotlib backend, amp "auto" as
fp32 (ATTNRES_CPU_BF16=0), and the tiny
digits data and training run (see tiny_run.py) that several test files use."""

import os
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
# amp "auto" (the default) resolves to fp32 on CPU in tests, whatever CPU CI runs on, so
# results do not depend on the machine; the bf16 tests ask for bf16 (or fake the CPU flags).
os.environ["ATTNRES_CPU_BF16"] = "0"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A file holding 96 training and 64 validation images of the real digits data, 8x8."""
    import attnres.data

    data = attnres.data.load_dataset("digits", image_size=8)
    path = tmp_path_factory.mktemp("data") / "tiny-digits.pt"
    torch.save({"train_images": data.train.images[:96].clone(),
                "train_labels": data.train.labels[:96].clone(),
                "val_images": data.val.images[:64].clone(),
                "val_labels": data.val.labels[:64].clone(),
                "classes": list(data.classes), "mean": list(data.mean),
                "std": list(data.std)}, path)
    return path


@pytest.fixture(scope="session")
def reference_run(tiny_data, tmp_path_factory) -> Path:
    """The run folder of an uninterrupted 2-epoch tiny run (CBAM ResNet-20, seed 0)."""
    from tiny_run import run_tiny

    out = tmp_path_factory.mktemp("runs") / "reference"
    run_tiny(tiny_data, out)
    return out
