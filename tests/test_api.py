"""The public API: `import attnres` gives the entry points eagerly, each name is what it
says (a function stays a function whatever else is imported), and the package imports
without the heavy optional libraries."""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys

import pytest

import attnres

ENTRY_POINTS = ["create_attention", "list_attention", "build_model", "list_models",
                "insert_attention", "load_pretrained", "load_model", "train", "TrainConfig",
                "evaluate", "ablate", "AttentionMonitor", "explain", "bench", "export_model",
                "load_dataset", "report", "add_attention", "precise_bn", "predict",
                "save_model"]


def test_exports_exactly_the_entry_points():
    assert sorted(attnres.__all__) == sorted([*ENTRY_POINTS, "__version__"])
    assert isinstance(attnres.__version__, str)
    for name in ENTRY_POINTS:  # eager: defined in the module, no lazy __getattr__
        assert name in vars(attnres), name
    assert "__getattr__" not in vars(attnres)


@pytest.mark.parametrize("module", ["attnres.training", "attnres.training.loop",
                                    "attnres.evaluation", "attnres.checkpoint",
                                    "attnres.analysis.explain", "attnres.analysis.bench",
                                    "attnres.export", "attnres.training.bn_recompute",
                                    "attnres.prediction"])
def test_functions_stay_functions_after_importing_any_module(module):
    importlib.import_module(module)
    for name in ["train", "evaluate", "explain", "bench", "load_model", "export_model",
                 "ablate", "precise_bn", "predict"]:
        assert inspect.isfunction(getattr(attnres, name)), name
    from attnres.training import train

    assert attnres.train is train and attnres.TrainConfig is attnres.training.TrainConfig


@pytest.mark.slow
def test_import_is_light():
    """No matplotlib, onnx, onnxruntime, timm, tensorboard or scikit-learn at import time."""
    heavy = ["matplotlib", "onnx", "onnxruntime", "timm", "tensorboard", "sklearn",
             "skimage", "pytorch_grad_cam"]
    code = (f"import sys, attnres; print(__import__('json').dumps("
            f"[m for m in {heavy!r} if m in sys.modules]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, check=True)
    assert json.loads(result.stdout) == []


@pytest.mark.slow
def test_train_evaluate_and_load_through_the_public_api(tmp_path):
    config = attnres.TrainConfig(data="digits", epochs=1, image_size=8, val_split=0.9,
                                 batch_size=64, lr=0.05, out=str(tmp_path / "run"),
                                 quiet=True, tensorboard=False)
    summary = attnres.train(config)
    assert summary["finished"] is True and summary["epochs"] == 1
    model = attnres.load_model(tmp_path / "run")
    data = attnres.load_dataset("digits", val_split=0.9, image_size=8)
    result = attnres.evaluate(model, data)
    # the summary's accuracy (%, over the same validation split) is what evaluate measures
    assert result["top1"] == pytest.approx(summary["best_val_top1"], abs=1e-6)
