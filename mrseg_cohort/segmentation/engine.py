"""Inference for one nnU-Net model: scan array in, uint8 labels on the scan grid out.

The steps are nnU-Net's predictor's, in its order and with its rounding (transpose per the plans,
crop to the non-zero box, normalise, resample to the model spacing, Gaussian-weighted sliding
window per fold, average of the folds, resample logits back, argmax, un-crop, transpose back),
reusing its step and Gaussian functions, but kept on the device and never producing a float array
of all classes at scan resolution (see :mod:`mrseg_cohort.segmentation.export`):

- normalisation statistics with numpy on the array nnU-Net would see; the image resampled with
  nnU-Net's own operators (cubic spline, separate z for anisotropic data;
  :mod:`mrseg_cohort.segmentation.resampling`) as float64 matrix products, rounded to float32;
- per fold, tile logits weighted and accumulated in float16 and divided by the summed weights;
  the folds summed in float16 and divided by their number (nnU-Net's
  ``predict_logits_from_preprocessed_data``); on the CPU each float16 add runs as float32 arithmetic
  with torch's own rounding (:mod:`mrseg_cohort.segmentation.accumulation`: same bits, a quarter of
  the time); non-finite logits are an error naming the fold;
- the accumulators live on the device, or on the host when the device cannot hold them (nnU-Net's
  ``perform_everything_on_device`` fallback; the tiles still run on the device, the export then
  runs on the host's exact path);
- on CUDA the sliding window runs in fp16 autocast with batches of tiles and the export on the GPU;
  on CPU one tile at a time (as nnU-Net) and the exact boundary-band export.

The caller gives the image as the network should see it (MRSegmentator's LPS orientation, see
:mod:`mrseg_cohort.orientation`); :class:`~mrseg_cohort.segmentation.segmenter.Segmenter` does that.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from mrseg_cohort.errors import BadScanError, ModelError, SegmentationError
from mrseg_cohort.segmentation.accumulation import add_rounded, all_finite
from mrseg_cohort.segmentation.export import labels_by_boundary_band, labels_by_chunked_resampling
from mrseg_cohort.segmentation.model_folder import ModelFolder, build_network, load_fold_weights
from mrseg_cohort.segmentation.resampling import ResamplingPlan, resample_image
from mrseg_cohort.segmentation.tiles import BodyMask, body_mask, coarse_step, tiles_to_run

log = logging.getLogger(__name__)


SUPPORTED_NORMALISATIONS = ("ZScoreNormalization", "CTNormalization", "NoNormalization",
                            "RescaleTo01Normalization", "RGBTo01Normalization")


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
        tiles_per_batch: tiles per forward pass; default on a GPU from its memory
            (:func:`default_tiles_per_batch`), on the CPU 1 (one tile at a time, as nnU-Net).
        skip_empty_tiles: run only the tiles that meet the body (:mod:`tiles`).
        compile: ``torch.compile`` each fold's network once (GPU; batches are padded to a fixed
            size so that it compiles once).
    """

    def __init__(self, model: ModelFolder, device: str = "cpu", tile_step_size: float = 0.5,
                 mirroring: bool = False, tiles_per_batch: int | None = None, skip_empty_tiles: bool = False,
                 compile: bool = False):
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
        self.transpose_forward, self.transpose_backward = plans_transposes(model)
        self._check_supported()
        meta = model.checkpoint_meta()
        axes = meta["inference_allowed_mirroring_axes"]
        self.mirror_axes = tuple(axes) if (mirroring and axes) else ()
        self.networks = []
        for weights in load_fold_weights(model):  # one module per fold: no reloading of weights per scan
            net = build_network(model)[0] if self.networks else network
            net.load_state_dict(weights)
            self.networks.append(net.to(self.device).eval())
        self.fold_names = tuple(str(f) for f in model.folds)
        self.is_cuda = self.device.type == "cuda"
        if self.is_cuda:
            torch.backends.cudnn.benchmark = True  # as nnU-Net: fixed tile shapes, the fastest kernels
        self.tiles_per_batch = tiles_per_batch or default_tiles_per_batch(self.device)
        self.skip_empty_tiles = skip_empty_tiles
        self.compiled = compile
        if compile:
            self.networks = [torch.compile(net) for net in self.networks]
        self.accumulate_dtype = torch.float16  # as nnU-Net, on GPU and CPU: same rounding, same labels
        self.gaussian = compute_gaussian(self.patch_size, sigma_scale=1.0 / 8, value_scaling_factor=10,
                                         dtype=self.accumulate_dtype, device=self.device)
        # float32 * float16 multiplies in float32 after an exact upcast: the same product, one dtype
        self.gaussian_float32 = self.gaussian.float()

    def _check_supported(self) -> None:
        """Refuse, at load time, plans whose steps this engine does not reproduce (ModelError)."""
        scheme = self.configuration.normalization_schemes[0]
        if scheme not in SUPPORTED_NORMALISATIONS:
            raise ModelError(f"model {self.model.name}: plans.json normalization_schemes {scheme!r} is not "
                             f"supported (supported: {', '.join(SUPPORTED_NORMALISATIONS)})")
        if self.probability_resampling is None:
            raise ModelError(f"model {self.model.name}: plans.json names a custom "
                             "resampling_fn_probabilities, which is not supported")

    # -- the steps ---------------------------------------------------------------------------------
    def normalise(self, image: np.ndarray) -> torch.Tensor:
        """``image`` (the cropped (z, y, x) float32 array) normalised per the plans, on the device.

        Statistics are taken with numpy on the same array nnU-Net's preprocessor sees (a crop view
        of a C-contiguous float32 image), so they round as nnU-Net's do; they are applied with torch.
        """
        scheme = self.configuration.normalization_schemes[0]
        use_mask = bool(self.configuration.use_mask_for_norm[0])
        props = self.plans_manager.foreground_intensity_properties_per_channel.get("0", {})
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(self.device)
        if scheme == "ZScoreNormalization":
            if use_mask:
                from scipy.ndimage import binary_fill_holes

                mask_np = binary_fill_holes(image != 0)
                values = image[mask_np]
                mean, std = values.mean(), max(values.std(), 1e-8)
                mask = torch.from_numpy(mask_np).to(self.device)
                return torch.where(mask, (x - float(mean)) / float(std), x)
            mean, std = image.mean(), max(image.std(), 1e-8)
            return (x - float(mean)) / float(std)
        if scheme == "CTNormalization":
            lower, upper = float(props["percentile_00_5"]), float(props["percentile_99_5"])
            return (x.clamp(lower, upper) - float(props["mean"])) / max(float(props["std"]), 1e-8)
        # other schemes: nnU-Net's own class on the CPU
        from nnunetv2.preprocessing.normalization import default_normalization_schemes as schemes

        cls = getattr(schemes, scheme)
        return torch.from_numpy(cls(use_mask, props).run(image.astype(np.float32))).to(self.device)

    def preprocess(self, image: np.ndarray, spacing_zyx: tuple[float, float, float]) -> torch.Tensor:
        """Normalised image resampled to the model spacing: (1, z, y, x) float32 on the device.

        ``image`` and ``spacing_zyx`` are already transposed (:attr:`transpose_forward`) and cropped.
        The resampling runs in float64, as nnU-Net's (skimage) does, and is rounded to float32."""
        x = self.normalise(image)
        new_shape = model_grid_shape(image.shape, spacing_zyx, self.spacing)
        if new_shape != tuple(image.shape):
            x = self._resample_input(x, new_shape, spacing_zyx)
        return x[None]

    def _resample_input(self, x: torch.Tensor, new_shape: tuple[int, int, int],
                        spacing_zyx: tuple[float, float, float]) -> torch.Tensor:
        """nnU-Net's resampling of the normalised image to the model grid (see :mod:`resampling`)."""
        if self.data_resampling is not None:
            return resample_image(x.double(), new_shape, spacing_zyx, self.spacing, self.data_resampling).float()
        fn = self.configuration.resampling_fn_data  # a custom function named by the plans: nnU-Net's, on the CPU
        out = fn(x.cpu().numpy()[None], new_shape, spacing_zyx, self.spacing)
        return torch.from_numpy(np.ascontiguousarray(out[0], dtype=np.float32)).to(self.device)

    @torch.inference_mode()
    def logits(self, x: torch.Tensor, body: BodyMask | None = None, stats: "TileCounts | None" = None,
               tiles_per_batch: int | None = None, on_host: bool = False) -> torch.Tensor:
        """Sliding-window logits averaged over folds: (C, z, y, x) float16 on the device, or on the
        host with ``on_host`` (the tiles still run on the device; nnU-Net's fallback when the device
        cannot hold the accumulators, 2 bytes per class and model-grid voxel).

        As nnU-Net's predictor: per fold, Gaussian-weighted tiles accumulated in float16 and divided
        by the summed weights; the folds' results summed in float16 and divided by their number.
        With ``body`` (and ``skip_empty_tiles``) only the tiles meeting the body grown by half a patch
        run; a voxel no tile covers gets logits 0, i.e. background.

        Raises:
            SegmentationError: a fold gives NaN or infinite logits (names the model and fold).
        """
        from acvl_utils.cropping_and_padding.padding import pad_nd_image
        from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

        data, revert = pad_nd_image(x, self.patch_size, "constant", {"value": 0}, True, None)
        steps = compute_steps_for_sliding_window(tuple(data.shape[1:]), self.patch_size, self.tile_step_size)
        corners = list(itertools.product(*steps))
        if self.skip_empty_tiles and body is not None:
            offset = tuple(int(r.start or 0) for r in revert[1:])
            margin = tuple(p // 2 + body.step for p in self.patch_size)
            corners = [c for c, run in zip(corners, tiles_to_run(body, corners, self.patch_size, offset, margin))
                       if run]
        if stats is not None:
            stats.total += len(list(itertools.product(*steps)))
            stats.run += len(corners)
        results = torch.device("cpu") if on_host else self.device
        weight = torch.zeros(data.shape[1:], dtype=self.accumulate_dtype, device=results)
        gaussian = self.gaussian.to(results)
        for corner in corners:
            weight[self._window(corner)] += gaussian
        weight[weight == 0] = 1  # voxels no tile covers: logits stay 0 (background wins the tie)
        total = None
        for fold, net in zip(self.fold_names, self.networks):
            fold_logits = self._sliding_window(net, data, corners, tiles_per_batch or self.tiles_per_batch, results)
            fold_logits /= weight
            if not all_finite(fold_logits):
                raise SegmentationError(f"model {self.model.name} fold {fold} gave NaN or infinite logits "
                                        "(corrupt weights, or an input far outside the training range)",
                                        stage="segment")
            total = fold_logits if total is None else total.add_(fold_logits)
            del fold_logits
        if len(self.networks) > 1:
            total /= len(self.networks)
        return total[(slice(None), *revert[1:])]

    def _window(self, corner: tuple[int, int, int]) -> tuple[slice, slice, slice]:
        return tuple(slice(c, c + p) for c, p in zip(corner, self.patch_size))  # type: ignore[return-value]

    def _sliding_window(self, net: torch.nn.Module, data: torch.Tensor, corners: list, tiles_per_batch: int,
                        results: torch.device) -> torch.Tensor:
        """One fold's Gaussian-weighted sum of tile logits, float16 (C, z, y, x) on ``results``, not yet
        normalised; each product and sum rounded as nnU-Net's (see :mod:`accumulation`)."""
        out = torch.zeros((self.num_classes, *data.shape[1:]), dtype=self.accumulate_dtype, device=results)
        scratch = torch.empty((self.num_classes, *self.patch_size)) if results.type == "cpu" else None
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.is_cuda else contextlib.nullcontext()
        with autocast:
            for start in range(0, len(corners), tiles_per_batch):
                batch_corners = corners[start:start + tiles_per_batch]
                tiles = torch.stack([data[(slice(None), *self._window(c))] for c in batch_corners])
                if self.compiled and len(batch_corners) < tiles_per_batch:  # one static shape: one compile
                    tiles = torch.cat([tiles, tiles[-1:].expand(tiles_per_batch - len(batch_corners),
                                                                *tiles.shape[1:])])
                pred = self._forward(net, tiles)
                for corner, p in zip(batch_corners, pred):
                    # nnU-Net's `prediction *= gaussian` (float32 product on the CPU, float16 under
                    # autocast: the same value on any device), then its float16 add on `results`
                    p.mul_(self.gaussian_float32 if p.dtype == torch.float32 else self.gaussian)
                    add_rounded(out[(slice(None), *self._window(corner))], p.to(results), scratch)
        return out

    def _forward(self, net: torch.nn.Module, tiles: torch.Tensor) -> torch.Tensor:
        pred = net(tiles)
        if self.mirror_axes:
            axes = [a + 2 for a in self.mirror_axes]
            combos = [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
            for flip in combos:
                pred += torch.flip(net(torch.flip(tiles, flip)), flip)
            pred /= len(combos) + 1
        return pred

    def export(self, logits: torch.Tensor, shape: tuple[int, int, int],
               spacing_zyx: tuple[float, float, float]) -> np.ndarray:
        """uint8 labels of ``shape`` (scan grid, ``spacing_zyx`` mm) from model-grid logits, resampled
        and rounded as nnU-Net's export does (see :mod:`export`)."""
        plan = self.probability_resampling
        in_shape = tuple(logits.shape[1:])
        on_device = logits.device.type != "cpu"  # logits accumulated on the host are exported there
        if on_device or not plan.is_interpolating:  # the band needs linear or nearest weights
            matrices = plan.matrices(in_shape, tuple(shape), self.spacing, spacing_zyx)
            dtype = torch.float32 if on_device else torch.float64
            return labels_by_chunked_resampling(logits, shape, matrices, compute_dtype=dtype).cpu().numpy()
        return labels_by_boundary_band(logits, shape, plan.samplings(in_shape, tuple(shape), self.spacing,
                                                                     spacing_zyx))

    # -- all together ------------------------------------------------------------------------------
    def model_grid(self, shape_zyx: tuple[int, int, int], spacing_zyx: tuple[float, float, float]) -> tuple[int, int, int]:
        """The shape on this model's grid of a whole image of ``shape_zyx`` voxels at ``spacing_zyx``
        mm (as the network sees it, before :meth:`prepare`'s transpose and crop): an upper bound of
        what :meth:`prepare` allocates, known from the header alone."""
        shape = tuple(shape_zyx[a] for a in self.transpose_forward)
        spacing = tuple(spacing_zyx[a] for a in self.transpose_forward)
        return model_grid_shape(shape, spacing, self.spacing)  # type: ignore[arg-type]

    @property
    def preprocess_key(self) -> tuple:
        """Models with equal keys preprocess an image identically (so they can share the result)."""
        props = self.plans_manager.foreground_intensity_properties_per_channel.get("0", {})
        scheme = self.configuration.normalization_schemes[0]
        return (self.spacing, self.transpose_forward, scheme, bool(self.configuration.use_mask_for_norm[0]),
                str(self.device), self.data_resampling,
                tuple(sorted(props.items())) if scheme == "CTNormalization" else ())

    def prepare(self, image: np.ndarray, spacing_zyx: tuple[float, float, float],
                times: StageTimes | None = None) -> "Prepared":
        """Transpose as the plans say, crop to the non-zero box and preprocess (shareable between
        models, see :attr:`preprocess_key`). ``image``: (z, y, x) float32 as the network should see it
        (LPS, see :mod:`mrseg_cohort.orientation`)."""
        times = times or StageTimes()
        t = time.perf_counter()
        transposed = np.transpose(image, self.transpose_forward)
        spacing = tuple(spacing_zyx[a] for a in self.transpose_forward)
        box = nonzero_box(transposed)
        cropped = transposed[box]
        network_input = self.preprocess(cropped, spacing)
        step = coarse_step(self.spacing)
        body = body_mask(network_input[0, ::step, ::step, ::step].float().cpu().numpy(), step)
        prepared = Prepared(box, tuple(transposed.shape), cropped.shape, spacing,  # type: ignore[arg-type]
                            network_input, body)
        times.add("preprocess", t)
        return prepared

    def __call__(self, image: np.ndarray, spacing_zyx: tuple[float, float, float],
                 times: StageTimes | None = None, prepared: "Prepared | None" = None,
                 tiles: "TileCounts | None" = None, tiles_per_batch: int | None = None,
                 on_host: bool = False) -> np.ndarray:
        """uint8 labels (z, y, x) for ``image`` ((z, y, x) float32, ``spacing_zyx`` mm), on its grid.

        ``tiles`` counts the sliding-window tiles there are and those run; ``tiles_per_batch``
        overrides the runner's and ``on_host`` puts the accumulators on the host (the retries after
        running out of GPU memory, see :meth:`logits`)."""
        times = times or StageTimes()
        prepared = prepared or self.prepare(image, spacing_zyx, times)
        t = time.perf_counter()
        logits = self.logits(prepared.network_input, prepared.body, tiles, tiles_per_batch, on_host)
        _sync(self.device)
        t = times.add("network", t)
        labels = np.zeros(prepared.shape, dtype=np.uint8)
        labels[prepared.box] = self.export(logits, prepared.cropped_shape, prepared.spacing_zyx)
        times.add("export", t)
        return np.ascontiguousarray(np.transpose(labels, self.transpose_backward))


def model_grid_shape(shape: tuple[int, ...], spacing_mm: tuple[float, ...],
                     model_spacing_mm: tuple[float, ...]) -> tuple[int, int, int]:
    """The shape of an image of ``shape`` voxels at ``spacing_mm`` resampled to ``model_spacing_mm``
    (same axis order): nnU-Net's ``compute_new_shape``, ``round(n * spacing / model spacing)`` per
    axis, as its preprocessor and :meth:`ModelRunner.preprocess` resample.

    Raises:
        OverflowError: a spacing so large that the shape is not finite.
    """
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

    return tuple(int(n) for n in compute_new_shape(shape, spacing_mm, model_spacing_mm))  # type: ignore[return-value]


def plans_transposes(model: ModelFolder) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The plans' ``transpose_forward`` and ``transpose_backward`` (array axes, z, y, x order).

    Raises:
        ModelError: either is not a permutation of (0, 1, 2), or backward does not undo forward.
    """
    out = []
    for key in ("transpose_forward", "transpose_backward"):
        value = model.plans.get(key, [0, 1, 2])
        if not isinstance(value, (list, tuple)) or sorted(value) != [0, 1, 2]:
            raise ModelError(f"model {model.name}: plans.json {key} must be a permutation of [0, 1, 2], "
                             f"not {value!r}")
        out.append(tuple(int(v) for v in value))
    forward, backward = out
    if tuple(forward[b] for b in backward) != (0, 1, 2):
        raise ModelError(f"model {model.name}: plans.json transpose_backward {list(backward)} does not undo "
                         f"transpose_forward {list(forward)}")
    return forward, backward  # type: ignore[return-value]


@dataclass(frozen=True)
class Prepared:
    """A scan cropped and preprocessed for one preprocessing plan."""

    box: tuple[slice, slice, slice]
    shape: tuple[int, int, int]
    cropped_shape: tuple[int, int, int]
    spacing_zyx: tuple[float, float, float]
    network_input: torch.Tensor
    body: BodyMask | None = None
    """The body on the model grid (for skipping tiles), None when it cannot be told apart."""


@dataclass
class TileCounts:
    """Sliding-window tiles of one call (over all folds): there are ``total``, ``run`` ran."""

    total: int = 0
    run: int = 0


def default_tiles_per_batch(device: torch.device) -> int:
    """Tiles per forward pass: 1 on the CPU (as nnU-Net); on a GPU by its memory: 8 from 40 GB (the
    best batch of the H200 anchor, ../shared/tools/gpu-anchor), 4 from 16 GB, else 2 (not measured
    on smaller cards: set ``model.tiles_per_batch``)."""
    if device.type != "cuda":
        return 1
    gigabytes = torch.cuda.get_device_properties(device).total_memory / 1e9
    return 8 if gigabytes >= 40 else 4 if gigabytes >= 16 else 2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
