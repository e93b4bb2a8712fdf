"""nnU-Net v2 trained-model folders (MRSegmentator's weights, the bundled demo models).

A folder holds ``dataset.json``, ``plans.json`` and ``fold_N/<checkpoint>``. MRSegmentator's own
release puts several such folders under one root (``<root>/base/``, ``<root>/body_comp/``).

Loading goes through nnU-Net's own classes (``PlansManager``, the trainer's
``build_network_architecture``, ``nnUNetPredictor.manual_initialization``). Only the trainer lookup
differs: nnU-Net imports every trainer module until it finds the name, and some import ``timm`` ->
``torchvision``, which fails beside a CPU-only torch wheel. Here only the module that defines the
trainer class is imported, so ``nnUNetTrainerNoMirroring`` (MRSegmentator's trainer) loads anywhere.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import re
import socket
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from mrseg_cohort.digest import update_from_file
from mrseg_cohort.errors import ModelError
from mrseg_cohort.labels import LabelMap, label_map_from_dataset_json
from mrseg_cohort.segmentation.checkpoints import checkpoint_meta_source, load_checkpoint, read_verified

JSON_FILES = ("dataset.json", "plans.json")


@dataclass(frozen=True)
class WeightsDigest:
    """What a model folder's files must hash to, as checked where the job started.

    ``sha256`` is :func:`weights_checksum` (``model.checksum``, the ``weights_sha256`` column);
    ``files`` the sha256 of each file in it, by path relative to the folder; ``trusted``: the
    checksum matched one the user configured or ``weights fetch`` recorded, so a checkpoint may be
    unpickled beyond the safe allowlist (:mod:`mrseg_cohort.segmentation.checkpoints`)."""

    sha256: str
    files: tuple[tuple[str, str], ...] = ()
    trusted: bool = False

    def file_sha256(self, relative: str) -> str | None:
        return dict(self.files).get(relative)


@dataclass(frozen=True)
class ModelFolder:
    """A validated nnU-Net trained-model folder on local disk."""

    path: Path
    name: str
    dataset_json: dict
    plans: dict
    folds: tuple[int | str, ...]
    checkpoint: str
    label_map: LabelMap
    expected: WeightsDigest | None = None
    """When set, every file read is checked against it (the actor side of ``check_model``)."""
    json_bytes: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    def checkpoint_path(self, fold: int | str) -> Path:
        return self.path / f"fold_{fold}" / self.checkpoint

    def checkpoint_relative(self, fold: int | str) -> str:
        return f"fold_{fold}/{self.checkpoint}"

    def _expected_file(self, relative: str) -> str | None:
        return self.expected.file_sha256(relative) if self.expected else None

    @property
    def configuration_name(self) -> str:
        return self.checkpoint_meta()["configuration"]

    def checkpoint_meta(self) -> dict[str, Any]:
        """trainer_name, configuration and mirroring axes of the first fold's checkpoint."""
        fold = self.folds[0]
        return _checkpoint_meta(str(self.checkpoint_path(fold)), self._expected_file(self.checkpoint_relative(fold)),
                                bool(self.expected and self.expected.trusted))

    def modality(self) -> str:
        """"CT" when the first channel is CT-normalised, else "MRI" (MRSegmentator's base says MRI/CT)."""
        names = [str(v).upper() for v in self.dataset_json.get("channel_names", {}).values()]
        return "CT" if names and names[0] == "CT" else "MRI"


@lru_cache(maxsize=16)
def _checkpoint_meta(checkpoint_path: str, expected_sha256: str | None = None, trusted: bool = False
                     ) -> dict[str, Any]:
    return _meta_of(checkpoint_meta_source(Path(checkpoint_path), expected_sha256, trusted), checkpoint_path)


def _meta_of(ckpt: Any, checkpoint_path: str | Path) -> dict[str, Any]:
    try:
        return {"trainer_name": ckpt["trainer_name"], "configuration": ckpt["init_args"]["configuration"],
                "inference_allowed_mirroring_axes": ckpt.get("inference_allowed_mirroring_axes")}
    except (KeyError, TypeError) as err:
        raise ModelError(f"{checkpoint_path} is not an nnU-Net v2 checkpoint (missing {err})") from None


def open_model_folder(path: str | Path, folds: tuple[int | str, ...], checkpoint: str = "checkpoint_final.pth",
                      name: str = "model", expected: WeightsDigest | None = None) -> ModelFolder:
    """Check a model folder's files and read its JSON; raise :class:`ModelError` naming what is missing.

    With ``expected``, the JSON files are checked against it as they are read, and the checkpoints
    later by :func:`load_fold_weights`."""
    path = Path(path)
    if not path.is_dir():
        from mrseg_cohort.weights.resolve import fetch_hint  # (resolve imports this module)

        raise ModelError(f"model {name!r}: weights folder {path} does not exist on {socket.gethostname()}; "
                         f"{fetch_hint(path)}")
    files, raw = {}, {}
    for fname in JSON_FILES:
        try:
            raw[fname] = read_verified(path / fname, expected.file_sha256(fname) if expected else None)
            files[fname] = json.loads(raw[fname])
        except FileNotFoundError:
            raise ModelError(f"model {name!r}: {path / fname} is missing; is {path} an nnU-Net "
                             "trained-model folder (dataset.json, plans.json, fold_N/)?") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ModelError(f"model {name!r}: {path / fname} is not valid JSON: {err}") from None
    missing = [str(path / f"fold_{f}" / checkpoint) for f in folds
               if not (path / f"fold_{f}" / checkpoint).is_file()]
    if missing:
        present = sorted(p.name for p in path.glob("fold_*"))
        raise ModelError(f"model {name!r}: checkpoint(s) missing: {', '.join(missing)} "
                         f"(folds present: {present or 'none'})")
    label_map = label_map_from_dataset_json(files["dataset.json"], name)
    return ModelFolder(path, name, files["dataset.json"], files["plans.json"], tuple(folds),
                       checkpoint, label_map, expected, raw)


def missing_model_files(path: Path) -> list[str]:
    """What ``path`` lacks to be an nnU-Net trained-model folder (dataset.json, plans.json and a
    ``fold_*/*.pth`` checkpoint); empty when it is one."""
    missing = [f for f in JSON_FILES if not (path / f).is_file()]
    if not any(p.is_file() for p in path.glob("fold_*/*.pth")):
        missing.append("fold_*/<checkpoint>.pth")
    return missing


def checksummed_files(folds: tuple[int | str, ...], checkpoint: str) -> list[str]:
    """The files :func:`weights_checksum` covers, relative to the folder, in its order."""
    return [*JSON_FILES, *(f"fold_{f}/{checkpoint}" for f in folds)]


def weights_digest(path: str | Path, folds: tuple[int | str, ...], checkpoint: str) -> WeightsDigest:
    """:func:`weights_checksum` and each file's own sha256, in one read of the files."""
    path = Path(path)
    folder = hashlib.sha256()
    files = []
    for relative in checksummed_files(folds, checkpoint):
        own = hashlib.sha256()
        folder.update(Path(relative).name.encode())
        update_from_file(path / relative, folder, own)
        files.append((relative, own.hexdigest()))
    return WeightsDigest(folder.hexdigest(), tuple(files))


def weights_checksum(path: str | Path, folds: tuple[int | str, ...], checkpoint: str) -> str:
    """sha256 over dataset.json, plans.json and the used folds' checkpoints (in that order, each
    file's bytes preceded by its base name): the value ``model.checksum`` expects."""
    return weights_digest(path, folds, checkpoint).sha256


def find_trainer_class(trainer_name: str) -> type:
    """The nnU-Net trainer class ``trainer_name``, importing only the module that defines it.

    Raises:
        ModelError: no such trainer in nnunetv2, or its module cannot be imported here.
    """
    import nnunetv2

    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", trainer_name):
        raise ModelError(f"checkpoint names an invalid trainer class {trainer_name!r}")
    root = Path(nnunetv2.__path__[0]) / "training" / "nnUNetTrainer"
    pattern = re.compile(rf"^class\s+{trainer_name}\s*[(:]", re.MULTILINE)
    for file in sorted(root.rglob("*.py")):
        if pattern.search(file.read_text(errors="replace")):
            module_name = ".".join(("nnunetv2", *file.relative_to(root.parents[1]).with_suffix("").parts))
            try:
                module = importlib.import_module(module_name)
            except Exception as err:  # ImportError, or torchvision's RuntimeError at import time
                raise ModelError(f"trainer {trainer_name} (module {module_name}) cannot be imported "
                                 f"here: {type(err).__name__}: {err}") from err
            return getattr(module, trainer_name)
    raise ModelError(f"trainer {trainer_name!r} named by the checkpoint is not part of nnunetv2 "
                     f"{getattr(nnunetv2, '__version__', '')}; install the package that defines it")


def build_network(model: ModelFolder):
    """The model's network (nnU-Net's trainer builds it from the plans), weights not yet loaded."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    meta = model.checkpoint_meta()
    plans_manager = PlansManager(model.plans)
    configuration = plans_manager.get_configuration(meta["configuration"])
    n_in = determine_num_input_channels(plans_manager, configuration, model.dataset_json)
    n_out = plans_manager.get_label_manager(model.dataset_json).num_segmentation_heads
    trainer = find_trainer_class(meta["trainer_name"])
    if "plans_manager" in inspect.signature(trainer.build_network_architecture).parameters:
        network = trainer.build_network_architecture(plans_manager, configuration, n_in, n_out,
                                                     enable_deep_supervision=False)
    else:
        network = trainer.build_network_architecture(
            configuration.network_arch_class_name, configuration.network_arch_init_kwargs,
            configuration.network_arch_init_kwargs_req_import, n_in, n_out, enable_deep_supervision=False)
    return network, plans_manager, configuration


def load_fold_weights(model: ModelFolder) -> list[dict]:
    """The ``network_weights`` state dict of every configured fold (on the CPU).

    Each checkpoint is read once and unpickled safely from those bytes
    (:func:`~mrseg_cohort.segmentation.checkpoints.load_checkpoint`). With ``model.expected``, each
    file is checked before it is unpickled and the sha256 of everything loaded (JSON as parsed,
    checkpoints as read) must equal ``expected.sha256``: this node ran the weights the job recorded.
    """
    folder = hashlib.sha256()
    for fname in JSON_FILES:
        folder.update(fname.encode())
        folder.update(model.json_bytes[fname] if fname in model.json_bytes else (model.path / fname).read_bytes())
    out = []
    for i, fold in enumerate(model.folds):
        path = model.checkpoint_path(fold)
        folder.update(path.name.encode())
        ckpt = load_checkpoint(path, model._expected_file(model.checkpoint_relative(fold)),
                               bool(model.expected and model.expected.trusted), hashers=(folder,))
        if i == 0 and _meta_of(ckpt, path) != model.checkpoint_meta():
            raise ModelError(f"model {model.name!r}: {path} changed while it was being loaded; load it again")
        try:
            out.append(ckpt["network_weights"])
        except (KeyError, TypeError):
            raise ModelError(f"{path} is not an nnU-Net v2 checkpoint (no network_weights)") from None
    if model.expected is not None and folder.hexdigest() != model.expected.sha256:
        raise ModelError(f"model {model.name!r}: the weights loaded from {model.path} have sha256 "
                         f"{folder.hexdigest()[:16]}..., not the {model.expected.sha256[:16]}... the job checked "
                         "and records; every node must hold the same weights")
    return out


def make_nnunet_predictor(model: ModelFolder, device: str = "cpu", tile_step_size: float = 0.5,
                          use_mirroring: bool = False, threads: int | None = None):
    """nnU-Net's own ``nnUNetPredictor`` for ``model``, initialised without its trainer search."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    if threads:
        torch.set_num_threads(threads)
    network, plans_manager, configuration = build_network(model)
    parameters = load_fold_weights(model)
    network.load_state_dict(parameters[0])
    predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True,
                                use_mirroring=use_mirroring, perform_everything_on_device=device != "cpu",
                                device=torch.device(device), verbose=False, verbose_preprocessing=False,
                                allow_tqdm=False)
    meta = model.checkpoint_meta()
    predictor.manual_initialization(network, plans_manager, configuration, parameters, model.dataset_json,
                                    meta["trainer_name"], meta["inference_allowed_mirroring_axes"])
    return predictor

