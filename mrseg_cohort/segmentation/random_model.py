"""Random-weight nnU-Net model folders shaped like MRSegmentator's, for tests and benchmarks.

MRSegmentator's real weights cannot be fetched here, but what our engine must reproduce of them is
their *shape*: nnU-Net's default 3d_fullres PlainConvUNet with 6 stages, 41 outputs, trainer
``nnUNetTrainerNoMirroring`` (no test-time mirroring), 5 folds. :func:`write_random_model` writes
such a folder (``dataset.json``, ``plans.json``, ``fold_N/checkpoint_final.pth``) at any width, with
the plans' normalisation, mask, transposes and mirroring chosen by the caller, so that every variant
can be compared with nnU-Net's own predictor. Random weights make a model unsure everywhere: a hard
test of rounding, since near-tied logits are everywhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mrseg_cohort.labels import MRSEG, LabelMap

DEFAULT_RESAMPLING = "resample_data_or_seg_to_shape"
MRSEG_FEATURES = (32, 64, 128, 256, 320, 320)
"""nnU-Net's default widths for 6 stages (the MRSegmentator-sized network of the GPU anchor)."""


@dataclass(frozen=True)
class RandomModelSpec:
    """What the written model folder looks like (defaults: MRSegmentator's shape, narrow).

    Attributes:
        features: channels per stage (the stage count is its length).
        patch_size: (z, y, x) voxels; each axis divisible by 2 ** (stages - 1).
        spacing_mm: model spacing (z, y, x).
        folds: number of folds (``fold_0`` ... ``fold_{n-1}``), each with its own random weights.
        normalization: ``ZScoreNormalization`` or ``CTNormalization`` (or another nnU-Net scheme).
        use_mask_for_norm: z-score inside the non-zero mask only.
        channel_name: ``MRI`` or ``CT`` (dataset.json ``channel_names``).
        trainer: ``nnUNetTrainerNoMirroring`` (MRSegmentator's) or ``nnUNetTrainer``.
        mirror_axes: the checkpoint's ``inference_allowed_mirroring_axes`` (None: none allowed).
        transpose_forward: the plans' axis permutation (``transpose_backward`` is its inverse).
        seed: seeds fold f's weights with ``seed * 1000 + f``.
    """

    features: tuple[int, ...] = (4, 8, 16, 16, 16, 16)
    patch_size: tuple[int, int, int] = (32, 64, 64)
    spacing_mm: tuple[float, float, float] = (4.0, 2.5, 2.5)
    folds: int = 5
    normalization: str = "ZScoreNormalization"
    use_mask_for_norm: bool = False
    channel_name: str = "MRI"
    trainer: str = "nnUNetTrainerNoMirroring"
    mirror_axes: tuple[int, ...] | None = None
    transpose_forward: tuple[int, int, int] = (0, 1, 2)
    seed: int = 0


def random_plans(spec: RandomModelSpec) -> dict:
    """nnU-Net v2 plans.json content for ``spec`` (3d_fullres only)."""
    n = len(spec.features)
    strides = [[1, 1, 1]] + [[2 if p // 2 ** k >= 2 * 4 else 1 for p in spec.patch_size] for k in range(n - 1)]
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": n, "features_per_stage": list(spec.features),
                            "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * n,
                            "strides": strides, "n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1),
                            "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    forward = list(spec.transpose_forward)
    backward = [forward.index(a) for a in range(3)]

    def resampling(order: int, is_seg: bool) -> dict:
        return {"is_seg": is_seg, "order": order, "order_z": 0, "force_separate_z": None}

    return {
        "dataset_name": "Dataset999_RandomMRSegShaped", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(spec.spacing_mm),
        "original_median_shape_after_transp": [100, 100, 100], "image_reader_writer": "SimpleITKIO",
        "transpose_forward": forward, "transpose_backward": backward,
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": list(spec.patch_size), "median_image_size_in_voxels": [100, 100, 100],
            "spacing": list(spec.spacing_mm), "normalization_schemes": [spec.normalization],
            "use_mask_for_norm": [spec.use_mask_for_norm], "resampling_fn_data": DEFAULT_RESAMPLING,
            "resampling_fn_seg": DEFAULT_RESAMPLING, "resampling_fn_probabilities": DEFAULT_RESAMPLING,
            "resampling_fn_data_kwargs": resampling(3, False), "resampling_fn_seg_kwargs": resampling(1, True),
            "resampling_fn_probabilities_kwargs": resampling(1, False),
            "architecture": arch, "batch_dice": False}},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 3000.0, "mean": 300.0, "median": 280.0, "min": -1000.0, "percentile_00_5": -200.0,
            "percentile_99_5": 1500.0, "std": 250.0}},
    }


def dataset_json(label_map: LabelMap, channel_name: str, description: str, n_training: int = 1) -> dict:
    """nnU-Net v2 dataset.json content for ``label_map`` with one input channel."""
    return {"channel_names": {"0": channel_name}, "labels": label_map.to_nnunet_labels(),
            "numTraining": n_training, "file_ending": ".nii.gz", "name": label_map.name,
            "description": description}


def write_random_model(root: str | Path, spec: RandomModelSpec = RandomModelSpec(),
                       label_map: LabelMap = MRSEG) -> Path:
    """Write a random-weight trained-model folder for ``spec`` at ``root``; returns ``root``."""
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    root = Path(root)
    plans = random_plans(spec)
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    root.mkdir(parents=True, exist_ok=True)
    (root / "plans.json").write_text(json.dumps(plans, indent=1))
    (root / "dataset.json").write_text(json.dumps(dataset_json(
        label_map, spec.channel_name, "random weights: for tests and benchmarks only"), indent=1))
    for fold in range(spec.folds):
        torch.manual_seed(spec.seed * 1000 + fold)  # nnU-Net's He initialisation, seeded per fold
        net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                     1, len(label_map) + 1, allow_init=True, deep_supervision=False)
        (root / f"fold_{fold}").mkdir(exist_ok=True)
        torch.save({"network_weights": net.state_dict(), "trainer_name": spec.trainer,
                    "init_args": {"configuration": "3d_fullres"},
                    "inference_allowed_mirroring_axes": spec.mirror_axes},
                   root / f"fold_{fold}" / "checkpoint_final.pth")
    return root
