"""Inference for one nnU-Net model: scan array in, uint8 labels on the scan grid out.

The steps are nnU-Net's (crop to the non-zero box, normalise per the plans, resample to the model
spacing, Gaussian-weighted sliding window over all folds, resample logits back, argmax, un-crop),
reusing its step and Gaussian functions, but kept on the device and never producing a float array
of all classes at scan resolution (see :mod:`mrseg_cohort.segmentation.export`):

- on CUDA: normalisation, trilinear resampling, the sliding window in fp16 autocast with batches of
  tiles, the logit accumulation (fp16, as nnU-Net) and the export all run on the GPU; only uint8
  labels come back;
- on CPU: the same steps with torch, and the exact boundary-band export.

The input is resampled with nnU-Net's own operators (cubic spline, separate z for anisotropic data;
:mod:`mrseg_cohort.segmentation.resampling`) applied as matrix products on the device. Logits are
accumulated in fp16 as nnU-Net does. Remaining differences from nnU-Net's reference path are float
rounding (float32 matrix products against float64 skimage), which moves single boundary voxels.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from mrseg_cohort.errors import BadScanError, SegmentationError
from mrseg_cohort.segmentation.export import labels_by_boundary_band, labels_by_chunked_resampling
from mrseg_cohort.segmentation.model_folder import ModelFolder, build_network, load_fold_weights
from mrseg_cohort.segmentation.resampling import ResamplingPlan, resample_image

log = logging.getLogger(__name__)


@dataclass
class StageTimes:
    """Wall seconds per inference stage of one call (filled in as the call runs)."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - since
        return now


def nonzero_box(image: np.ndarray) -> tuple[slice, slice, slice]:
    """Bounding box of the non-zero voxels (nnU-Net's crop; hole filling does not change the box)."""
    boxes = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(np.any(image != 0, axis=other))
        if hits.size == 0:
            raise BadScanError("image is empty: every voxel is 0")
        boxes.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(boxes)  # type: ignore[return-value]


class ModelRunner:
    """One model's folds, loaded once onto ``device``; :meth:`__call__` segments one scan array.

    Args:
        model: the trained-model folder.
        device: ``"cpu"`` or ``"cuda"`` / ``"cuda:N"``.
        tile_step_size: sliding-window step as a fraction of the patch (nnU-Net's default 0.5).
        mirroring: test-time mirroring over the axes the checkpoint allows.
        tiles_per_batch: tiles per forward pass (GPU: 4-8 keeps the card busy; CPU: 1).
    """

    def __init__(self, model: ModelFolder, device: str = "cpu", tile_step_size: float = 0.5,
                 mirroring: bool = False, tiles_per_batch: int | None = None):
        from nnunetv2.inference.sliding_window_prediction import compute_gaussian

        self.model = model
        self.device = torch.device(device)
        self.tile_step_size = tile_step_size
        network, plans_manager, configuration = build_network(model)
        self.plans_manager, self.configuration = plans_manager, configuration
        self.patch_size = tuple(int(p) for p in configuration.patch_size)
        self.spacing = tuple(float(s) for s in configuration.spacing)
        self.data_resampling = ResamplingPlan.from_plans(configuration.configuration, "data")
        self.probability_resampling = ResamplingPlan.from_plans(configuration.configuration, "probabilities")
        self.num_classes = plans_manager.get_label_manager(model.dataset_json).num_segmentation_heads
        meta = model.checkpoint_meta()
        axes = meta["inference_allowed_mirroring_axes"]
        self.mirror_axes = tuple(axes) if (mirroring and axes) else ()
        self.networks = []
        for weights in load_fold_weights(model):  # one module per fold: no reloading of weights per scan
            net = build_network(model)[0] if self.networks else network
            net.load_state_dict(weights)
            self.networks.append(net.to(self.device).eval())
        self.is_cuda = self.device.type == "cuda"
        self.tiles_per_batch = tiles_per_batch or (4 if self.is_cuda else 1)
        self.accumulate_dtype = torch.float16  # as nnU-Net, on GPU and CPU: same rounding, same labels
        self.gaussian = compute_gaussian(self.patch_size, sigma_scale=1.0 / 8, value_scaling_factor=10,
                                         dtype=self.accumulate_dtype, device=self.device)

    # -- the steps ---------------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray, spacing_zyx: tuple[float, float, float]) -> torch.Tensor:
        """Normalised image resampled to the model spacing: (1, z, y, x) float32 on the device."""
        from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

        scheme = self.configuration.normalization_schemes[0]
        use_mask = bool(self.configuration.use_mask_for_norm[0])
        props = self.plans_manager.foreground_intensity_properties_per_channel.get("0", {})
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(self.device)
        if scheme == "ZScoreNormalization":
            if use_mask:
                from scipy.ndimage import binary_fill_holes

                mask = torch.from_numpy(binary_fill_holes(image != 0)).to(self.device)
                values = x[mask]
                x = torch.where(mask, (x - values.mean()) / max(float(values.std(unbiased=False)), 1e-8), x)
            else:
                x = (x - x.mean()) / max(float(x.std(unbiased=False)), 1e-8)
        elif scheme == "CTNormalization":
            x = (x.clamp(props["percentile_00_5"], props["percentile_99_5"]) - props["mean"]) / \
                max(props["std"], 1e-8)
        else:  # other schemes: nnU-Net's own class on the CPU
            from nnunetv2.preprocessing.normalization.default_normalization_schemes import (
                NoNormalization, RescaleTo01Normalization, RGBTo01Normalization)
            cls = {"NoNormalization": NoNormalization, "RescaleTo01Normalization": RescaleTo01Normalization,
                   "RGBTo01Normalization": RGBTo01Normalization}.get(scheme)
            if cls is None:
                raise SegmentationError(f"normalisation scheme {scheme} of model {self.model.name} is not "
                                        "supported", stage="segment")
            x = torch.from_numpy(cls(use_mask, props).run(image.astype(np.float32))).to(self.device)
        new_shape = tuple(int(s) for s in compute_new_shape(image.shape, spacing_zyx, self.spacing))
        if new_shape != tuple(image.shape):
            x = self._resample_input(x, new_shape, spacing_zyx)
        return x[None]

    def _resample_input(self, x: torch.Tensor, new_shape: tuple[int, int, int],
                        spacing_zyx: tuple[float, float, float]) -> torch.Tensor:
        """nnU-Net's resampling of the normalised image to the model grid (see :mod:`resampling`)."""
        if self.data_resampling is not None:
            return resample_image(x, new_shape, spacing_zyx, self.spacing, self.data_resampling)
        fn = self.configuration.resampling_fn_data  # a custom function named by the plans: nnU-Net's, on the CPU
        out = fn(x.cpu().numpy()[None], new_shape, spacing_zyx, self.spacing)
        return torch.from_numpy(np.ascontiguousarray(out[0], dtype=np.float32)).to(self.device)

    @torch.inference_mode()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Sliding-window logits summed over folds: (C, z, y, x) on the device (nnU-Net's windows)."""
        from acvl_utils.cropping_and_padding.padding import pad_nd_image
        from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

        data, revert = pad_nd_image(x, self.patch_size, "constant", {"value": 0}, True, None)
        steps = compute_steps_for_sliding_window(tuple(data.shape[1:]), self.patch_size, self.tile_step_size)
        corners = list(itertools.product(*steps))
        out = torch.zeros((self.num_classes, *data.shape[1:]), dtype=self.accumulate_dtype, device=self.device)
        weight = torch.zeros(data.shape[1:], dtype=self.accumulate_dtype, device=self.device)
        for z, y, x0 in corners:
            weight[z:z + self.patch_size[0], y:y + self.patch_size[1], x0:x0 + self.patch_size[2]] += self.gaussian
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.is_cuda else _null_context()
        with autocast:
            for net in self.networks:
                for start in range(0, len(corners), self.tiles_per_batch):
                    batch_corners = corners[start:start + self.tiles_per_batch]
                    tiles = torch.stack([data[:, z:z + self.patch_size[0], y:y + self.patch_size[1],
                                              x0:x0 + self.patch_size[2]] for z, y, x0 in batch_corners])
                    pred = self._forward(net, tiles)
                    for (z, y, x0), p in zip(batch_corners, pred):
                        out[:, z:z + self.patch_size[0], y:y + self.patch_size[1],
                            x0:x0 + self.patch_size[2]] += p * self.gaussian
        out /= weight  # as nnU-Net: weighted mean per fold-sum (argmax unaffected by the fold count)
        return out[(slice(None), *revert[1:])]

    def _forward(self, net: torch.nn.Module, tiles: torch.Tensor) -> torch.Tensor:
        pred = net(tiles)
        if self.mirror_axes:
            axes = [a + 2 for a in self.mirror_axes]
            combos = [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
            for flip in combos:
                pred = pred + torch.flip(net(torch.flip(tiles, flip)), flip)
            pred = pred / (len(combos) + 1)
        return pred

    def export(self, logits: torch.Tensor, shape: tuple[int, int, int],
               spacing_zyx: tuple[float, float, float]) -> np.ndarray:
        """uint8 labels of ``shape`` (scan grid, ``spacing_zyx`` mm) from model-grid logits, resampled
        as nnU-Net's export resamples probabilities (see :mod:`export`)."""
        plan = self.probability_resampling
        if plan is None:
            raise SegmentationError(f"model {self.model.name}: its plans name a custom probability "
                                    "resampling function, which is not supported", stage="segment")
        matrices = plan.matrices(tuple(logits.shape[1:]), tuple(shape), self.spacing, spacing_zyx)
        if self.is_cuda or plan.order > 1 or plan.order_z > 1:  # the band needs linear or nearest weights
            return labels_by_chunked_resampling(logits, shape, matrices).cpu().numpy()
        return labels_by_boundary_band(logits, shape, matrices)

    # -- all together ------------------------------------------------------------------------------
    @property
    def preprocess_key(self) -> tuple:
        """Models with equal keys preprocess an image identically (so they can share the result)."""
        props = self.plans_manager.foreground_intensity_properties_per_channel.get("0", {})
        scheme = self.configuration.normalization_schemes[0]
        return (self.spacing, scheme, bool(self.configuration.use_mask_for_norm[0]), str(self.device),
                tuple(sorted(props.items())) if scheme == "CTNormalization" else ())

    def prepare(self, image: np.ndarray, spacing_zyx: tuple[float, float, float],
                times: StageTimes | None = None) -> "Prepared":
        """Crop to the non-zero box and preprocess (shareable between models, see preprocess_key)."""
        times = times or StageTimes()
        t = time.perf_counter()
        box = nonzero_box(image)
        prepared = Prepared(box, tuple(image.shape), image[box].shape, tuple(spacing_zyx),
                            self.preprocess(image[box], spacing_zyx))
        times.add("preprocess", t)
        return prepared

    def __call__(self, image: np.ndarray, spacing_zyx: tuple[float, float, float],
                 times: StageTimes | None = None, prepared: "Prepared | None" = None) -> np.ndarray:
        """uint8 labels (z, y, x) for ``image`` ((z, y, x) float, scan grid, ``spacing_zyx`` mm)."""
        times = times or StageTimes()
        prepared = prepared or self.prepare(image, spacing_zyx, times)
        t = time.perf_counter()
        logits = self.logits(prepared.network_input)
        _sync(self.device)
        t = times.add("network", t)
        labels = np.zeros(prepared.shape, dtype=np.uint8)
        labels[prepared.box] = self.export(logits, prepared.cropped_shape, prepared.spacing_zyx)
        times.add("export", t)
        return labels


@dataclass(frozen=True)
class Prepared:
    """A scan cropped and preprocessed for one preprocessing plan."""

    box: tuple[slice, slice, slice]
    shape: tuple[int, int, int]
    cropped_shape: tuple[int, int, int]
    spacing_zyx: tuple[float, float, float]
    network_input: torch.Tensor


class _null_context:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
