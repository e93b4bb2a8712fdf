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
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from mrseg_cohort.errors import ModelError
from mrseg_cohort.labels import LabelMap, label_map_from_dataset_json


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

    def checkpoint_path(self, fold: int | str) -> Path:
        return self.path / f"fold_{fold}" / self.checkpoint

    @property
    def configuration_name(self) -> str:
        return self.checkpoint_meta()["configuration"]

    def checkpoint_meta(self) -> dict[str, Any]:
        """trainer_name, configuration and mirroring axes of the first fold's checkpoint."""
        return _checkpoint_meta(str(self.checkpoint_path(self.folds[0])))

    def modality(self) -> str:
        """"CT" when the first channel is CT-normalised, else "MRI" (MRSegmentator's base says MRI/CT)."""
        names = [str(v).upper() for v in self.dataset_json.get("channel_names", {}).values()]
        return "CT" if names and names[0] == "CT" else "MRI"


@lru_cache(maxsize=16)
def _checkpoint_meta(checkpoint_path: str) -> dict[str, Any]:
    import torch

    ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    try:
        return {"trainer_name": ckpt["trainer_name"], "configuration": ckpt["init_args"]["configuration"],
                "inference_allowed_mirroring_axes": ckpt.get("inference_allowed_mirroring_axes")}
    except (KeyError, TypeError) as err:
        raise ModelError(f"{checkpoint_path} is not an nnU-Net v2 checkpoint (missing {err})") from None


def open_model_folder(path: str | Path, folds: tuple[int | str, ...], checkpoint: str = "checkpoint_final.pth",
                      name: str = "model") -> ModelFolder:
    """Check a model folder's files and read its JSON; raise :class:`ModelError` naming what is missing."""
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"model {name!r}: weights folder {path} does not exist")
    files = {}
    for fname in ("dataset.json", "plans.json"):
        try:
            files[fname] = json.loads((path / fname).read_text())
        except FileNotFoundError:
            raise ModelError(f"model {name!r}: {path / fname} is missing; is {path} an nnU-Net "
                             "trained-model folder (dataset.json, plans.json, fold_N/)?") from None
        except json.JSONDecodeError as err:
            raise ModelError(f"model {name!r}: {path / fname} is not valid JSON: {err}") from None
    missing = [str(path / f"fold_{f}" / checkpoint) for f in folds
               if not (path / f"fold_{f}" / checkpoint).is_file()]
    if missing:
        present = sorted(p.name for p in path.glob("fold_*"))
        raise ModelError(f"model {name!r}: checkpoint(s) missing: {', '.join(missing)} "
                         f"(folds present: {present or 'none'})")
    label_map = label_map_from_dataset_json(files["dataset.json"], name)
    return ModelFolder(path, name, files["dataset.json"], files["plans.json"], tuple(folds),
                       checkpoint, label_map)


def weights_checksum(path: str | Path, folds: tuple[int | str, ...], checkpoint: str) -> str:
    """sha256 over dataset.json, plans.json and the used folds' checkpoints (in that order)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path / "dataset.json", path / "plans.json"] + [path / f"fold_{f}" / checkpoint for f in folds]
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


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
    """The ``network_weights`` state dict of every configured fold (on the CPU)."""
    import torch

    out = []
    for fold in model.folds:
        ckpt = torch.load(model.checkpoint_path(fold), map_location="cpu", weights_only=False)
        out.append(ckpt["network_weights"])
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

