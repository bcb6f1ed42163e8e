"""Runs the fused Triton CBAM cases (tests/triton_cases.py) in a fresh process.

Triton decides at import time whether kernels are compiled or interpreted, and other tests
in this process may already have imported it; a subprocess with TRITON_INTERPRET=1 (no
GPU) or without it (CUDA) gets the mode it asks for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")


def test_triton_cases_in_fresh_process() -> None:
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    cases = Path(__file__).with_name("triton_cases.py")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "no:xdist", str(cases)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
