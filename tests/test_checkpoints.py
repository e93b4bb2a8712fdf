"""The safe checkpoint loader: what nnU-Net checkpoints hold loads, a pickled callable is refused."""

import collections
import datetime
import hashlib
import io
import os
import zipfile

import numpy as np
import pytest
import torch

from conftest import DEMO_BODY_COMP_MODEL, DEMO_MODEL
from mrseg_cohort.errors import ModelError
from mrseg_cohort.segmentation.checkpoints import checkpoint_meta_source, load_checkpoint


class _RunsCommand:
    """Unpickling this runs ``touch <marker>``: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _trainer_like_checkpoint() -> dict:
    """What nnU-Net 2.x's ``nnUNetTrainer.save_checkpoint`` writes (numpy scalars in the logs,
    torch.device in init_args, optimizer and grad scaler state)."""
    net = torch.nn.Conv3d(1, 2, 3)
    optimizer_state = {  # torch.optim.SGD(..., momentum=0.99, nesterov=True).state_dict() after a step
        "state": {i: {"momentum_buffer": torch.zeros_like(p)} for i, p in enumerate(net.parameters())},
        "param_groups": [{"lr": 0.01, "momentum": 0.99, "dampening": 0, "weight_decay": 3e-05, "nesterov": True,
                          "maximize": False, "foreach": None, "differentiable": False, "fused": None,
                          "params": [0, 1]}]}
    return {"network_weights": net.state_dict(), "optimizer_state": optimizer_state,
            "grad_scaler_state": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                  "growth_interval": 2000, "_growth_tracker": 0},
            "logging": {"mean_fg_dice": [np.float64(0.5), np.float64(0.7)], "ema_fg_dice": [np.float64(0.6)],
                        "dice_per_class_or_region": [[np.float64(0.1), np.float32(0.2)]], "lrs": [0.01],
                        "train_losses": [np.float32(-0.3)], "epoch_start_timestamps": [1.7e9]},
            "_best_ema": np.float64(0.6), "current_epoch": 1000,
            "init_args": {"plans": {"configurations": {}}, "configuration": "3d_fullres", "fold": 0,
                          "dataset_json": {"labels": {"background": 0}}, "unpack_dataset": True,
                          "device": torch.device("cuda", 0)},
            "trainer_name": "nnUNetTrainerNoMirroring", "inference_allowed_mirroring_axes": (0, 1, 2),
            "shape": np.array([3, 4, 5])}


def _numpy1_names(data: bytes) -> bytes:
    """The checkpoint as numpy 1.x pickles it (``numpy.core`` instead of numpy 2's ``numpy._core``)."""
    src, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for name in src.namelist():
            member = src.read(name)
            dst.writestr(name, member.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
                         if name.endswith("data.pkl") else member)
    return out.getvalue()


@pytest.mark.parametrize("model", [DEMO_MODEL, DEMO_BODY_COMP_MODEL])
def test_bundled_checkpoints_load_safely(model):
    path = model / "fold_0" / "checkpoint_final.pth"
    ckpt = load_checkpoint(path, hashlib.sha256(path.read_bytes()).hexdigest())
    assert ckpt["trainer_name"] == "nnUNetTrainer" and ckpt["network_weights"]
    assert checkpoint_meta_source(path)["init_args"]["configuration"] == "3d_fullres"


@pytest.mark.parametrize("numpy1", [False, True])
def test_an_nnunet_trainer_checkpoint_loads_safely(tmp_path, numpy1):
    buf = io.BytesIO()
    torch.save(_trainer_like_checkpoint(), buf)
    data = _numpy1_names(buf.getvalue()) if numpy1 else buf.getvalue()
    assert (b"numpy.core.multiarray" in data) == numpy1
    path = tmp_path / "checkpoint_final.pth"
    path.write_bytes(data)
    ckpt = load_checkpoint(path)
    assert ckpt["logging"]["mean_fg_dice"][1] == np.float64(0.7) and ckpt["init_args"]["device"].type == "cuda"
    assert ckpt["_best_ema"] == 0.6 and list(ckpt["shape"]) == [3, 4, 5]
    assert set(ckpt["network_weights"]) == {"weight", "bias"}


def test_a_pickled_callable_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "fold_0" / "checkpoint_final.pth"
    path.parent.mkdir()
    torch.save({"network_weights": collections.OrderedDict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "3d_fullres"}, "x": _RunsCommand(marker)}, path)
    for load in (load_checkpoint, checkpoint_meta_source):
        with pytest.raises(ModelError, match=rf"{path}: refused by the safe checkpoint loader.*system"):
            load(path)
    # even "trusted" is not enough without the bytes' sha256 checked first
    with pytest.raises(ModelError, match="refused"):
        load_checkpoint(path, None, trusted=True)
    assert not marker.exists()


def test_the_full_unpickler_only_for_a_trusted_file_whose_sha256_matched(tmp_path):
    path = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": {}, "when": datetime.timedelta(days=1)}, path)  # outside the allowlist
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ModelError, match="datetime.timedelta"):
        load_checkpoint(path, sha, trusted=False)
    assert load_checkpoint(path, sha, trusted=True)["when"] == datetime.timedelta(days=1)
    with pytest.raises(ModelError, match="sha256 .* differs"):
        load_checkpoint(path, "0" * 64, trusted=True)
