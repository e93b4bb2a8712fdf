"""Our engine against nnU-Net's own predict_from_files with models shaped like MRSegmentator's.

Random-weight models (mrseg_cohort.segmentation.random_model): 6 stages, 41 outputs, trainer
nnUNetTrainerNoMirroring, 3d_fullres, 5 folds, narrow enough for 2 cores; and the variants the real
model and its relatives use: masked z-score, CT normalisation, test-time mirroring, transposed plans.
Random weights leave the model unsure everywhere, so near-tied logits are everywhere: agreement
here means the same rounding, not just the same algorithm.
"""

from __future__ import annotations

import numpy as np
import pytest

from nnunet_driver import predict_from_files

from mrseg_cohort.config import ModelConfig
from mrseg_cohort.geometry import Volume
from mrseg_cohort.io.nifti import read_labels, write_volume
from mrseg_cohort.io.storage import Store
from mrseg_cohort.phantom.noise import textured_body_in_noise
from mrseg_cohort.segmentation.random_model import RandomModelSpec, write_random_model
from mrseg_cohort.segmentation.segmenter import Segmenter, check_model

PATCH = (16, 32, 32)
VARIANTS = {
    "mrseg-shaped-5-folds": (RandomModelSpec(patch_size=PATCH, folds=5), {}),
    "masked-zscore": (RandomModelSpec(patch_size=PATCH, folds=2, use_mask_for_norm=True, seed=1),
                      {"background_zero": True}),
    "ct-normalisation": (RandomModelSpec(patch_size=PATCH, folds=2, normalization="CTNormalization",
                                         channel_name="CT", seed=2), {"ct": True}),
    "mirroring": (RandomModelSpec(patch_size=PATCH, folds=1, trainer="nnUNetTrainer", mirror_axes=(0, 1, 2),
                                  seed=3), {"mirroring": True}),
    "transposed-plans": (RandomModelSpec(patch_size=(32, 16, 32), folds=2, transpose_forward=(1, 0, 2), seed=4), {}),
}


def _image(options: dict) -> Volume:
    image = textured_body_in_noise((30, 100, 120), (3.0, 1.5, 1.5), seed=7,
                                   background_zero=options.get("background_zero", False))
    if options.get("ct"):  # HU-like: air -1000, body texture around 40 HU, clipped by the plans' percentiles
        array = np.where(image.array > 100, image.array - 260, -1000 + image.array).astype(np.float32)
        image = image.with_array(array)
    return image


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_labels_equal_nnunets_predict_from_files(variant, tmp_path):
    spec, options = VARIANTS[variant]
    model_dir = write_random_model(tmp_path / "model", spec)
    folds = tuple(range(spec.folds))
    mirroring = options.get("mirroring", False)
    image = _image(options)
    (tmp_path / "in").mkdir()
    write_volume(Store(), str(tmp_path / "in" / "case_0000.nii.gz"), image, np.float32)
    predict_from_files(model_dir, folds, tmp_path / "in", tmp_path / "pred", mirroring)
    reference = read_labels(Store(), str(tmp_path / "pred" / "case.nii.gz")).array

    model = check_model(ModelConfig(weights=str(model_dir), folds=folds, mirroring=mirroring, skip_empty_tiles=False))
    segmentation = Segmenter([model], "cpu")(image, "CT" if options.get("ct") else "MRI", "in")
    ours = segmentation.labels["base"]
    present = np.unique(reference)
    assert present.size >= 3, "the test needs several classes to compare"
    differing = int((ours != reference).sum())
    for value in np.union1d(present, np.unique(ours)):
        a, b = ours == value, reference == value
        dice = 2 * (a & b).sum() / (a.sum() + b.sum())
        assert dice >= 0.999, (variant, int(value), dice, differing)
    assert differing == 0, (variant, differing)
