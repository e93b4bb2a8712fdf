"""Train a bundled demo model: a small nnU-Net v2 network on phantom participants.

Writes a real nnU-Net trained-model folder (dataset.json, plans.json, fold_0/checkpoint_final.pth)
that nnU-Net's ``nnUNetPredictor`` loads exactly like MRSegmentator's weights. Preprocessing of the
training data is nnU-Net's own ``DefaultPreprocessor`` with the same plans, so inference sees what
training saw. The training loop itself is a plain PyTorch loop (nnU-Net's trainer needs its
raw/preprocessed dataset folders and runs 1000 epochs; this needs neither).

    python jobs/train_demo_model.py --task base --out mrseg_cohort/models/demo
    python jobs/train_demo_model.py --task body_comp --out mrseg_cohort/models/demo_body_comp

Runs on CPU (the default here) or CUDA (``--device cuda``). See the model folder's README for the
time and hardware of the bundled weights.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mrseg_cohort.labels import BODY_COMPOSITION, MRSEG, LabelMap
from mrseg_cohort.phantom.cohort import render_spec_participant, PhantomSpec

TRAIN_SEED = 7
"""Phantom seed of the training participants (tests and the demo use other seeds)."""

DEMO_SPACING_ZYX = (6.0, 4.464, 4.464)
DEMO_PATCH_ZYX = (32, 96, 112)


def make_plans(dataset_name: str, intensity: dict, median_shape: list[int],
               features: tuple[int, ...] = (8, 16, 32, 64, 96)) -> dict:
    """nnU-Net v2 plans with one ``3d_fullres`` configuration (a 5-stage PlainConvUNet)."""
    n = len(features)
    return {
        "dataset_name": dataset_name,
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(DEMO_SPACING_ZYX),
        "original_median_shape_after_transp": median_shape,
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres",
            "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2,
            "patch_size": list(DEMO_PATCH_ZYX),
            "median_image_size_in_voxels": median_shape,
            "spacing": list(DEMO_SPACING_ZYX),
            "normalization_schemes": ["ZScoreNormalization"],
            "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                   "force_separate_z": None},
            "architecture": {
                "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                "arch_kwargs": {
                    "n_stages": n, "features_per_stage": list(features),
                    "conv_op": "torch.nn.modules.conv.Conv3d",
                    "kernel_sizes": [[1, 3, 3]] + [[3, 3, 3]] * (n - 1),
                    "strides": [[1, 1, 1], [1, 2, 2]] + [[2, 2, 2]] * (n - 2),
                    "n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1),
                    "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                    "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                    "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                    "nonlin_kwargs": {"inplace": True}},
                "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
            "batch_dice": False}},
        "experiment_planner_used": "mrseg_cohort jobs/train_demo_model.py",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": intensity},
    }


def make_dataset_json(label_map: LabelMap, n_training: int, description: str) -> dict:
    return {"channel_names": {"0": "MRI"}, "labels": label_map.to_nnunet_labels(),
            "numTraining": n_training, "file_ending": ".nii.gz", "name": label_map.name,
            "description": description}


def training_cases(task: str, n_ukbb: int, n_nako: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, tuple]]:
    """(in-phase image, labels, spacing zyx) of phantom participants on their stitched grids."""
    cases = []
    for layout, n, first in (("ukbb", n_ukbb, 0), ("nako", n_nako, 10_000)):
        spec = PhantomSpec(participants=n, layout=layout, seed=seed, scale=2.0)
        for i in range(first, first + n):
            r = render_spec_participant(spec, i)
            labels = r.labels if task == "base" else r.body_comp
            image = np.rint(r.in_phase).astype(np.float32)  # stored as int16, like the phantom files
            cases.append((image, labels, r.grid.spacing_mm))
    return cases


def preprocess_cases(cases, plans: dict, dataset_json: dict) -> list[tuple[np.ndarray, np.ndarray, "ClassSlices"]]:
    """nnU-Net's DefaultPreprocessor on each case (crop, z-score, resample to the plans' spacing)."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    pre = DefaultPreprocessor(verbose=False)
    out = []
    for image, labels, spacing in cases:
        data, seg, _ = pre.run_case_npy(image[None], labels[None].astype(np.int16), {"spacing": list(spacing)},
                                        pm, cm, dataset_json)
        seg = np.clip(seg[0], 0, None).astype(np.int64)
        out.append((data[0].astype(np.float32), seg, ClassSlices(seg)))
    return out


def center_pad(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Pad like nnU-Net's pad_nd_image: half below, the rest above, constant 0."""
    pads = []
    for have, want in zip(a.shape, shape):
        diff = max(0, want - have)
        pads.append((diff // 2, diff - diff // 2))
    return np.pad(a, pads)


def sample_batch(data, rng: np.random.Generator, batch: int, patch: tuple[int, int, int],
                 class_fraction: float = 0.67):
    """Random patches; ``class_fraction`` of them centred (in z) on a voxel of a random present class,
    so that small structures are seen every few iterations (nnU-Net oversamples foreground too)."""
    xs, ys = [], []
    for _ in range(batch):
        image, labels, class_z = data[rng.integers(len(data))]
        image, labels = center_pad(image, patch), center_pad(labels, patch)
        starts = [int(rng.integers(0, s - p + 1)) for s, p in zip(image.shape, patch)]
        if class_z and rng.random() < class_fraction:
            zs = class_z[int(rng.integers(len(class_z)))]
            z = int(zs[rng.integers(len(zs))]) + (image.shape[0] - class_z.shape_z) // 2
            starts[0] = int(np.clip(z - patch[0] // 2 + rng.integers(-patch[0] // 4, patch[0] // 4 + 1),
                                    0, image.shape[0] - patch[0]))
        window = tuple(slice(s, s + p) for s, p in zip(starts, patch))
        x = image[window] * rng.uniform(0.85, 1.15) + rng.uniform(-0.15, 0.15)
        x = x + rng.normal(0, rng.uniform(0, 0.08), size=x.shape)
        xs.append(x.astype(np.float32))
        ys.append(labels[window])
    return torch.from_numpy(np.stack(xs)[:, None]), torch.from_numpy(np.stack(ys))


class ClassSlices(list):
    """Per present class, the z indices (before padding) where it occurs."""

    def __init__(self, labels: np.ndarray):
        per_class = [np.flatnonzero(np.any(labels == c, axis=(1, 2))) for c in np.unique(labels) if c > 0]
        super().__init__(per_class)
        self.shape_z = labels.shape[0]


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus soft Dice over foreground classes (nnU-Net's default loss)."""
    ce = F.cross_entropy(logits, target)
    probs = logits.softmax(1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 4, 1, 2, 3).float()
    dims = (0, 2, 3, 4)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + 1e-5) / (denom + 1e-5)
    present = onehot.sum(dims)[1:] > 0  # foreground classes in this batch (absent ones: CE only)
    return ce + (1 - dice[1:][present].mean()) if present.any() else ce


def deep_supervision_loss(outputs: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """nnU-Net's deep supervision: the loss at each decoder resolution (nearest-downsampled target),
    weighted 1, 1/2, 1/4, ... (lowest resolution dropped), normalised to sum 1."""
    weights = np.array([1 / 2 ** i for i in range(len(outputs))])
    weights[-1] = 0
    weights /= weights.sum()
    total = 0.0
    for w, out in zip(weights, outputs):
        if w == 0:
            continue
        t = target if out.shape[2:] == target.shape[1:] else F.interpolate(
            target[:, None].float(), size=out.shape[2:], mode="nearest")[:, 0].long()
        total = total + w * dice_ce_loss(out, t)
    return total


def train(args: argparse.Namespace) -> None:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    label_map = MRSEG if args.task == "base" else BODY_COMPOSITION
    t0 = time.time()
    cases = training_cases(args.task, args.ukbb, args.nako, TRAIN_SEED)
    foreground = np.concatenate([img[lab > 0][::50] for img, lab, _ in cases])
    intensity = {"max": float(foreground.max()), "mean": float(foreground.mean()),
                 "median": float(np.median(foreground)), "min": float(foreground.min()),
                 "percentile_00_5": float(np.percentile(foreground, 0.5)),
                 "percentile_99_5": float(np.percentile(foreground, 99.5)), "std": float(foreground.std())}
    median_shape = [int(np.median([c[0].shape[i] for c in cases])) for i in range(3)]
    plans = make_plans(f"Dataset990_MRSegCohortDemo_{args.task}", intensity, median_shape,
                       tuple(args.features))
    dataset_json = make_dataset_json(label_map, len(cases),
                                     f"mrseg-cohort demo model ({args.task}) trained on phantoms, seed "
                                     f"{TRAIN_SEED}; NOT for real data")
    data = preprocess_cases(cases, plans, dataset_json)
    print(f"{len(data)} training cases ready in {time.time() - t0:.0f} s", flush=True)

    arch = plans["configurations"]["3d_fullres"]["architecture"]
    device = torch.device(args.device)
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                 1, len(label_map) + 1, deep_supervision=True).to(device)
    # start from the class frequencies (log priors) instead of a uniform 1/41: the net skips the
    # long phase of learning that most voxels are background, and foreground is learnt sooner
    counts = np.bincount(np.concatenate([d[1].ravel() for d in data]), minlength=len(label_map) + 1) + 1.0
    for layer in net.decoder.seg_layers:
        layer.bias.data = torch.log(torch.tensor(counts / counts.sum(), dtype=torch.float32)).to(device)
    if args.init_from:  # fine-tune: continue from a trained model folder's weights
        state = torch.load(Path(args.init_from) / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                           weights_only=False)["network_weights"]
        net.load_state_dict(state)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    rng = np.random.default_rng(args.seed)
    t_train = time.time()
    for it in range(1, args.iterations + 1):
        warmup = min(1.0, it / 50)
        lr = args.lr * warmup * 0.5 * (1 + math.cos(math.pi * it / args.iterations))
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = sample_batch(data, rng, args.batch, DEMO_PATCH_ZYX)
        x, y = x.to(device), y.to(device)
        loss = deep_supervision_loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
        opt.step()
        if it % args.log_every == 0 or it == 1:
            elapsed = time.time() - t_train
            print(f"it {it}/{args.iterations} loss {loss.item():.4f} lr {lr:.2e} "
                  f"{elapsed / it:.2f} s/it", flush=True)
        if args.checkpoint_every and it % args.checkpoint_every == 0:
            save_model_folder(Path(args.out), net, plans, dataset_json, args, it, time.time() - t0)
    save_model_folder(Path(args.out), net, plans, dataset_json, args, args.iterations, time.time() - t0)
    print(f"done in {time.time() - t0:.0f} s; model folder {args.out}")


def save_model_folder(out: Path, net, plans: dict, dataset_json: dict, args, iterations: int,
                      seconds: float) -> None:
    """Write dataset.json, plans.json and fold_0/checkpoint_final.pth (nnU-Net's checkpoint keys)."""
    (out / "fold_0").mkdir(parents=True, exist_ok=True)
    (out / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
    (out / "plans.json").write_text(json.dumps(plans, indent=1))
    weights = {k: v.detach().cpu() for k, v in net.state_dict().items()}  # shared tensors saved once
    checkpoint = {
        "network_weights": weights,
        "trainer_name": "nnUNetTrainer",
        "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0,
                      "dataset_json": dataset_json, "device": "cpu"},
        "inference_allowed_mirroring_axes": None,  # trained without mirroring: left/right matter
        "current_epoch": iterations,
        "training": {"script": "jobs/train_demo_model.py", "args": vars(args), "iterations": iterations,
                     "seconds": round(seconds), "torch": torch.__version__},
    }
    tmp = out / "fold_0" / "checkpoint_final.pth.tmp"
    torch.save(checkpoint, tmp)
    tmp.replace(out / "fold_0" / "checkpoint_final.pth")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", choices=["base", "body_comp"], default="base")
    ap.add_argument("--out", required=True)
    ap.add_argument("--ukbb", type=int, default=24, help="training phantoms in the UK Biobank layout")
    ap.add_argument("--nako", type=int, default=8, help="training phantoms in the NAKO layout")
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--features", type=int, nargs="+", default=[8, 16, 32, 64, 96])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--checkpoint-every", type=int, default=250)
    ap.add_argument("--init-from", default=None, help="start from this model folder's weights (fine-tuning)")
    train(ap.parse_args())


if __name__ == "__main__":
    main()
