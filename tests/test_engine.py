"""The inference engine's refusals: non-finite logits, and plans it does not reproduce."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mrseg_cohort.errors import ModelError, SegmentationError
from mrseg_cohort.phantom.noise import textured_body_in_noise
from mrseg_cohort.segmentation.engine import ModelRunner
from mrseg_cohort.segmentation.model_folder import open_model_folder
from mrseg_cohort.segmentation.random_model import RandomModelSpec, write_random_model

SMALL = RandomModelSpec(features=(4, 8, 8), patch_size=(16, 32, 32), folds=2)


@pytest.fixture
def small_model(tmp_path):
    return write_random_model(tmp_path / "model", SMALL)


def test_nan_weights_in_one_fold_are_an_error_naming_the_model_and_fold(small_model):
    checkpoint = small_model / "fold_1" / "checkpoint_final.pth"
    saved = torch.load(checkpoint, weights_only=False)
    first = next(iter(saved["network_weights"]))
    saved["network_weights"][first].fill_(float("nan"))
    torch.save(saved, checkpoint)
    runner = ModelRunner(open_model_folder(small_model, (0, 1), name="base"), "cpu")
    image = textured_body_in_noise((20, 40, 40), (4.0, 2.5, 2.5))
    with pytest.raises(SegmentationError, match=r"model base fold 1 gave NaN or infinite logits"):
        runner(image.array, image.grid.spacing_mm)


@pytest.mark.parametrize("key,forward,backward,phrase", [
    ("transpose_forward", [0, 1, 1], [0, 1, 2], "transpose_forward must be a permutation"),
    ("transpose_backward", [1, 0, 2], [0, 2, 1], "does not undo transpose_forward"),
    ("normalization_schemes", None, None, "normalization_schemes 'MyNormalization' is not supported"),
    ("resampling_fn_probabilities", None, None, "custom resampling_fn_probabilities"),
])
def test_plans_this_engine_does_not_reproduce_are_refused_naming_the_key(small_model, key, forward, backward,
                                                                        phrase):
    plans = json.loads((small_model / "plans.json").read_text())
    configuration = plans["configurations"]["3d_fullres"]
    if forward is not None:
        plans["transpose_forward"], plans["transpose_backward"] = forward, backward
    elif key == "normalization_schemes":
        configuration["normalization_schemes"] = ["MyNormalization"]
    else:
        configuration["resampling_fn_probabilities"] = "my_resampling"
    (small_model / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ModelError, match=phrase):
        ModelRunner(open_model_folder(small_model, (0,)), "cpu")


def test_labels_come_back_in_the_input_axis_order_under_transposed_plans(tmp_path):
    """transpose_forward (1, 0, 2): the network sees (y, z, x) arrays; labels return as (z, y, x)."""
    model = write_random_model(tmp_path / "m", RandomModelSpec(features=(4, 8, 8), patch_size=(32, 16, 32),
                                                               folds=1, transpose_forward=(1, 0, 2)))
    runner = ModelRunner(open_model_folder(model, (0,)), "cpu")
    image = textured_body_in_noise((20, 36, 40), (4.0, 2.5, 2.5))
    prepared = runner.prepare(image.array, image.grid.spacing_mm)
    assert prepared.shape == (36, 20, 40) and prepared.spacing_zyx == (2.5, 4.0, 2.5)
    labels = runner(image.array, image.grid.spacing_mm, prepared=prepared)
    assert labels.shape == image.grid.shape and labels.flags.c_contiguous and np.unique(labels).size > 1
