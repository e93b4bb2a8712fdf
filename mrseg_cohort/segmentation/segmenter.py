"""The segmentation stage as a plain class: models loaded once, ``__call__`` segments one image.

The pipeline wraps :class:`Segmenter` in a Ray actor (one per GPU, or CPU actors); tests call it
directly. What leaves it is uint8 labels per model, never logits.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mrseg_cohort.config import ModelConfig, resolve_weights
from mrseg_cohort.errors import ConfigError, ModelError, SegmentationError
from mrseg_cohort.geometry import Volume
from mrseg_cohort.io.limits import MAX_MODEL_VOXELS, check_model_grid
from mrseg_cohort.labels import KNOWN_MAPS, LabelMap, check_label_map, label_map_from_dataset_json
from mrseg_cohort.orientation import lps_reorientation
from mrseg_cohort.segmentation.engine import ModelRunner, StageTimes, TileCounts
from mrseg_cohort.segmentation.model_folder import ModelFolder, WeightsDigest, open_model_folder, weights_digest
from mrseg_cohort.versions import software_versions
from mrseg_cohort.weights.record import record_vouches

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """A checked model, ready to ship to workers (plain data, picklable)."""

    name: str
    path: str
    folds: tuple
    checkpoint: str
    tile_step_size: float
    mirroring: bool
    modalities: tuple[str, ...]
    contrasts: tuple[str, ...] | None
    sha256: str
    label_names: dict[int, str] = field(default_factory=dict)
    digest: WeightsDigest | None = None
    """Each file's sha256 as checked by :func:`check_model`; None: only ``sha256`` is checked."""
    skip_empty_tiles: bool = False
    compile: bool = False
    tiles_per_batch: int | None = None

    def folder(self) -> ModelFolder:
        """The model folder on this node, set to verify what it loads against ``sha256``."""
        return open_model_folder(self.path, self.folds, self.checkpoint, self.name,
                                 self.digest or WeightsDigest(self.sha256))

    @property
    def label_map(self) -> LabelMap:
        return label_map_from_dataset_json({"labels": {n: i for i, n in self.label_names.items()}}, self.name)


def check_model(model: ModelConfig) -> ModelSpec:
    """Open and verify a configured model (files, label map, checksum); raise ConfigError/ModelError.

    ``weights: mrsegmentator[:<model>]`` is resolved here, once, where the job starts (reading
    ``MRSEG_WEIGHTS_PATH``); the spec records the folder and every file's sha256, which each
    segmentation actor checks again on its own node (:meth:`ModelSpec.folder`)."""
    path = resolve_weights(model.weights)
    if "://" in path and not path.startswith("file://"):
        raise ConfigError(f"model {model.name!r}: weights at {path}: object-storage weights must be "
                          "downloaded to a local folder first (see README, 'Model weights')")
    folder = open_model_folder(Path(path.removeprefix("file://")), model.folds, model.checkpoint, model.name)
    if model.labels != "any" and not model.allow_label_mismatch:
        check_label_map(folder.label_map, KNOWN_MAPS[model.labels], f"model {model.name!r} ({path})")
    digest = weights_digest(folder.path, model.folds, model.checkpoint)
    if model.checksum and model.checksum.lower() != digest.sha256:
        raise ModelError(f"model {model.name!r}: weights checksum {digest.sha256[:16]}... does not match "
                         f"model.checksum {model.checksum[:16]}...; wrong or corrupt weights at {path}")
    digest = replace(digest, trusted=bool(model.checksum) or record_vouches(folder.path, digest))
    # fails early on a file that is not an nnU-Net checkpoint, or one the safe loader refuses
    open_model_folder(folder.path, model.folds, model.checkpoint, model.name, digest).checkpoint_meta()
    return ModelSpec(model.name, str(folder.path), tuple(model.folds), model.checkpoint, model.tile_step_size,
                     model.mirroring, tuple(model.modalities), model.contrasts, digest.sha256,
                     folder.label_map.names, digest, model.skip_empty_tiles, model.compile, model.tiles_per_batch)


@dataclass
class Segmentation:
    """Labels per model for one image; models not run give their reason instead."""

    labels: dict[str, np.ndarray]
    skipped: dict[str, str]
    seconds: dict[str, dict[str, float]]
    """Per model, wall seconds per stage it added; a preprocessing shared by several models is
    counted on the first of them."""
    tiles: dict[str, TileCounts] = field(default_factory=dict)
    """Per model, the sliding-window tiles there were and those run (over all folds)."""
    versions: dict[str, str] = field(default_factory=dict)
    """Software versions of the process that segmented (:func:`mrseg_cohort.versions.software_versions`)."""


class Segmenter:
    """Every configured model, loaded once on ``device``.

    Args:
        models: checked models (see :func:`check_model`).
        device: ``"cpu"`` or ``"cuda"``.
        threads: torch CPU threads (CPU inference), None keeps torch's default.
        max_model_voxels: most voxels an image may take on a model's grid (``limits.max_model_voxels``);
            a larger one fails with :class:`~mrseg_cohort.errors.ScanTooLargeError` before inference.
    """

    def __init__(self, models: list[ModelSpec], device: str = "cpu", threads: int | None = None,
                 max_model_voxels: int = MAX_MODEL_VOXELS):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.models = models
        self.device = device
        self.max_model_voxels = max_model_voxels
        self.runners = {m.name: ModelRunner(m.folder(), device, m.tile_step_size, m.mirroring, m.tiles_per_batch,
                                            m.skip_empty_tiles, m.compile) for m in models}
        self._streams = threading.local()  # on a GPU: one CUDA stream per calling thread (two scans overlap)

    def __call__(self, image: Volume, modality: str, contrast: str,
                 only: tuple[str, ...] | None = None) -> Segmentation:
        """Labels of every applicable model (of ``only``, when given) for one image, on the image's
        own grid.

        The networks see the image reoriented to LPS, as MRSegmentator's reader gives it
        (:mod:`mrseg_cohort.orientation`); the labels are turned back onto ``image.grid``. Models
        sharing a preprocessing plan share the preprocessed volume (one pass)."""
        with self._stream():
            return self._segment(image, modality, contrast, only)

    def _stream(self):
        """This thread's CUDA stream (a GPU actor runs two scans at once, one per thread), or a no-op."""
        import torch

        if not str(self.device).startswith("cuda"):
            return contextlib.nullcontext()
        if getattr(self._streams, "stream", None) is None:
            self._streams.stream = torch.cuda.Stream(device=self.device)
        return torch.cuda.stream(self._streams.stream)

    def _segment(self, image: Volume, modality: str, contrast: str, only: tuple[str, ...] | None) -> Segmentation:
        reorientation = lps_reorientation(image.grid)
        network_image = reorientation.volume(image)
        seconds: dict[str, dict[str, float]] = {}
        labels, skipped, tiles = {}, {}, {}
        prepared: dict[tuple, object] = {}
        for spec in self.models:
            if only is not None and spec.name not in only:
                continue
            if modality not in spec.modalities:
                skipped[spec.name] = f"model {spec.name} is {'/'.join(spec.modalities)}-only; scan is {modality}"
                continue
            if spec.contrasts is not None and contrast not in spec.contrasts:
                skipped[spec.name] = f"model {spec.name} runs on contrasts {list(spec.contrasts)}, not {contrast}"
                continue
            runner = self.runners[spec.name]
            times = StageTimes()
            self._check_model_grid(runner, network_image)
            try:
                if runner.preprocess_key not in prepared:
                    prepared[runner.preprocess_key] = runner.prepare(network_image.array,
                                                                     network_image.grid.spacing_mm, times)
                lps_labels, tiles[spec.name] = self._run(runner, network_image, times, prepared[runner.preprocess_key])
                labels[spec.name] = np.ascontiguousarray(reorientation.undo(lps_labels))
                seconds[spec.name] = times.seconds
            except MemoryError as err:
                raise SegmentationError(f"out of memory segmenting with {spec.name}: {err}", stage="segment") from err
        return Segmentation(labels, skipped, seconds, tiles, software_versions())

    def _check_model_grid(self, runner: ModelRunner, image: Volume) -> None:
        """Refuse an image whose model grid (from its shape and spacing alone) exceeds the limit."""
        try:
            shape: tuple[int, ...] | None = runner.model_grid(image.grid.shape, image.grid.spacing_mm)
        except OverflowError:  # a spacing so large that the grid has no finite size
            shape = None
        check_model_grid(shape, image.grid.spacing_mm, runner.spacing, self.max_model_voxels, runner.model.name)

    def _run(self, runner: ModelRunner, image: Volume, times: StageTimes, prepared) -> tuple[np.ndarray, TileCounts]:
        """One model on one image. Out of GPU memory, the scan is tried again with the float16
        accumulators (2 bytes per class and model-grid voxel: about 5 GB for a UK Biobank scan on
        MRSegmentator's grid) on the host, as nnU-Net's predictor falls back, then also with half the
        tiles per forward pass; then it fails with a clear error, and the actor goes on with the
        next. The labels do not depend on where the accumulators live."""
        batch = runner.tiles_per_batch
        attempts = [(batch, False), (batch, True)] + ([(batch // 2, True)] if batch > 1 else [])
        for number, (tiles_per_batch, on_host) in enumerate(attempts, 1):
            counts = TileCounts()
            try:
                return runner(image.array, image.grid.spacing_mm, times, prepared, counts, tiles_per_batch,
                              on_host), counts
            except RuntimeError as err:
                if not _is_out_of_memory(err):
                    raise
                _free_gpu_memory()
                if number == len(attempts):
                    raise SegmentationError(f"GPU out of memory with model {runner.model.name} on a "
                                            f"{image.grid.shape} image, also with the accumulators on the host "
                                            f"and {tiles_per_batch} tile(s) per batch: "
                                            f"{str(err).splitlines()[0][:200]}", stage="segment") from err
                log.warning("GPU out of memory with model %s (%d tiles per batch, accumulators on the %s); "
                            "retrying with the accumulators on the host and %d tiles per batch", runner.model.name,
                            tiles_per_batch, "host" if on_host else "device", attempts[number][0])
        raise AssertionError("unreachable")


def _is_out_of_memory(err: BaseException) -> bool:
    """Out of device memory, by type (torch raises ``torch.OutOfMemoryError``), never by words."""
    import torch

    return isinstance(err, torch.OutOfMemoryError)


def _free_gpu_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
