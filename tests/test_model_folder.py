"""Loading nnU-Net model folders, including MRSegmentator's trainer on a CPU-only torch."""

import json
import shutil

import pytest
import torch

from mrseg_cohort.config import ModelConfig
from mrseg_cohort.errors import ModelError
from mrseg_cohort.segmentation.model_folder import find_trainer_class, make_nnunet_predictor, open_model_folder
from mrseg_cohort.segmentation.segmenter import check_model


def _copy_with_trainer(src, dst, trainer_name: str):
    shutil.copytree(src, dst)
    ckpt_path = dst / "fold_0" / "checkpoint_final.pth"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    ckpt["trainer_name"] = trainer_name
    torch.save(ckpt, ckpt_path)
    return dst


def test_nomirroring_trainer_loads_without_nnunets_trainer_search(demo_model, tmp_path):
    """MRSegmentator's weights name nnUNetTrainerNoMirroring; nnU-Net's own lookup imports every
    trainer module (some import timm -> torchvision, which fails beside a CPU-only torch)."""
    folder = _copy_with_trainer(demo_model, tmp_path / "m", "nnUNetTrainerNoMirroring")
    cls = find_trainer_class("nnUNetTrainerNoMirroring")
    assert cls.__name__ == "nnUNetTrainerNoMirroring"
    predictor = make_nnunet_predictor(open_model_folder(folder, (0,)), "cpu")
    assert predictor.trainer_name == "nnUNetTrainerNoMirroring"


def test_nnunets_own_lookup_is_what_we_avoid():
    """Documents the failure we work around (skips where torchvision imports fine, e.g. GPU installs)."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

        with pytest.raises(Exception):
            recursive_find_trainer_class_by_name("nnUNetTrainerNoMirroring")
    else:
        pytest.skip("torchvision imports here; nnU-Net's lookup works")


def test_unknown_trainer_and_missing_files_are_clear(demo_model, tmp_path):
    with pytest.raises(ModelError, match="not part of nnunetv2"):
        find_trainer_class("nnUNetTrainerThatDoesNotExist")
    with pytest.raises(ModelError, match="does not exist"):
        open_model_folder(tmp_path / "nothing", (0,))
    with pytest.raises(ModelError, match=r"checkpoint\(s\) missing.*fold_3"):
        open_model_folder(demo_model, (3,))


def test_label_mismatch_refused_unless_allowed(demo_model, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(demo_model, folder)
    dataset = json.loads((folder / "dataset.json").read_text())
    labels = dataset["labels"]
    labels["spleen"], labels["liver"] = labels["liver"], labels["spleen"]
    (folder / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(ModelError, match="disagree"):
        check_model(ModelConfig(weights=str(folder)))
    spec = check_model(ModelConfig(weights=str(folder), allow_label_mismatch=True))
    assert spec.label_names[1] == "liver"


def test_checksum_is_verified(demo_model):
    spec = check_model(ModelConfig(weights=str(demo_model)))
    assert len(spec.sha256) == 64
    assert check_model(ModelConfig(weights=str(demo_model), checksum=spec.sha256)).sha256 == spec.sha256
    with pytest.raises(ModelError, match="checksum"):
        check_model(ModelConfig(weights=str(demo_model), checksum="0" * 64))


def _resave(path, change):
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    change(ckpt)
    torch.save(ckpt, path)


def test_each_actor_verifies_the_weights_it_loads(demo_model, tmp_path, monkeypatch):
    """The driver's check_model records every file's sha256; a Segmenter (one per actor, maybe on
    another node with another copy) refuses files that differ, before unpickling them."""
    from pathlib import Path

    from mrseg_cohort.segmentation.segmenter import Segmenter

    folder = tmp_path / "m"
    shutil.copytree(demo_model, folder)
    spec = check_model(ModelConfig(weights=str(folder)))
    reads = []
    read_bytes = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self.name) or read_bytes(self))
    assert len(Segmenter([spec], "cpu").runners["base"].networks) == 1
    assert reads.count("checkpoint_final.pth") == 1  # hashed and unpickled from one read
    monkeypatch.undo()

    ckpt_path = folder / "fold_0" / "checkpoint_final.pth"
    _resave(ckpt_path, lambda c: c["network_weights"][next(iter(c["network_weights"]))].add_(1e-3))
    with pytest.raises(ModelError, match=r"fold_0/checkpoint_final.pth: sha256 .* differs .* every node"):
        Segmenter([spec], "cpu")
    shutil.copy(demo_model / "fold_0" / "checkpoint_final.pth", ckpt_path)
    (folder / "dataset.json").write_text((folder / "dataset.json").read_text() + " ")
    with pytest.raises(ModelError, match=r"dataset.json: sha256 .* differs"):
        Segmenter([spec], "cpu")
    shutil.copy(demo_model / "dataset.json", folder / "dataset.json")
    from dataclasses import replace

    with pytest.raises(ModelError, match="have sha256 .*, not the 000000"):  # only the folder checksum known
        Segmenter([replace(spec, sha256="0" * 64, digest=None)], "cpu")


def test_unsafe_checkpoint_refused_unless_its_checksum_is_configured(demo_model, tmp_path):
    import datetime

    from mrseg_cohort.segmentation.segmenter import Segmenter

    folder = tmp_path / "m"
    shutil.copytree(demo_model, folder)
    _resave(folder / "fold_0" / "checkpoint_final.pth", lambda c: c.update(saved=datetime.date(2024, 1, 1)))
    with pytest.raises(ModelError, match=r"checkpoint_final.pth: refused by the safe checkpoint loader.*"
                                         r"datetime.date.*weights checksum"):
        check_model(ModelConfig(weights=str(folder)))
    from mrseg_cohort.segmentation.model_folder import weights_checksum

    trusted = check_model(ModelConfig(weights=str(folder), checksum=weights_checksum(folder, (0,),
                                                                                     "checkpoint_final.pth")))
    assert trusted.digest.trusted and len(Segmenter([trusted], "cpu").runners["base"].networks) == 1
