"""The inference engine's refusals: non-finite logits, and plans it does not reproduce."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mrseg_cohort.errors import ModelError, SegmentationError
from mrseg_cohort.phantom.noise import textured_body_in_noise
from mrseg_cohort.segmentation.engine import ModelRunner
from mrseg_cohort.segmentation.model_folder import open_model_folder
from mrseg_cohort.segmentation.random_model import RandomModelSpec, write_random_model

SMALL = RandomModelSpec(features=(4, 8, 8), patch_size=(16, 32, 32), folds=2)


@pytest.fixture
def small_model(tmp_path):
    return write_random_model(tmp_path / "model", SMALL)


def test_nan_weights_in_one_fold_are_an_error_naming_the_model_and_fold(small_model):
    checkpoint = small_model / "fold_1" / "checkpoint_final.pth"
    saved = torch.load(checkpoint, weights_only=False)
    first = next(iter(saved["network_weights"]))
    saved["network_weights"][first].fill_(float("nan"))
    torch.save(saved, checkpoint)
    runner = ModelRunner(open_model_folder(small_model, (0, 1), name="base"), "cpu")
    image = textured_body_in_noise((20, 40, 40), (4.0, 2.5, 2.5))
    with pytest.raises(SegmentationError, match=r"model base fold 1 gave NaN or infinite logits"):
        runner(image.array, image.grid.spacing_mm)


@pytest.mark.parametrize("key,forward,backward,phrase", [
    ("transpose_forward", [0, 1, 1], [0, 1, 2], "transpose_forward must be a permutation"),
    ("transpose_backward", [1, 0, 2], [0, 2, 1], "does not undo transpose_forward"),
    ("normalization_schemes", None, None, "normalization_schemes 'MyNormalization' is not supported"),
    ("resampling_fn_probabilities", None, None, "custom resampling_fn_probabilities"),
])
def test_plans_this_engine_does_not_reproduce_are_refused_naming_the_key(small_model, key, forward, backward,
                                                                        phrase):
    plans = json.loads((small_model / "plans.json").read_text())
    configuration = plans["configurations"]["3d_fullres"]
    if forward is not None:
        plans["transpose_forward"], plans["transpose_backward"] = forward, backward
    elif key == "normalization_schemes":
        configuration["normalization_schemes"] = ["MyNormalization"]
    else:
        configuration["resampling_fn_probabilities"] = "my_resampling"
    (small_model / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ModelError, match=phrase):
        ModelRunner(open_model_folder(small_model, (0,)), "cpu")


def test_labels_come_back_in_the_input_axis_order_under_transposed_plans(tmp_path):
    """transpose_forward (1, 0, 2): the network sees (y, z, x) arrays; labels return as (z, y, x)."""
    model = write_random_model(tmp_path / "m", RandomModelSpec(features=(4, 8, 8), patch_size=(32, 16, 32),
                                                               folds=1, transpose_forward=(1, 0, 2)))
    runner = ModelRunner(open_model_folder(model, (0,)), "cpu")
    image = textured_body_in_noise((20, 36, 40), (4.0, 2.5, 2.5))
    prepared = runner.prepare(image.array, image.grid.spacing_mm)
    assert prepared.shape == (36, 20, 40) and prepared.spacing_zyx == (2.5, 4.0, 2.5)
    labels = runner(image.array, image.grid.spacing_mm, prepared=prepared)
    assert labels.shape == image.grid.shape and labels.flags.c_contiguous and np.unique(labels).size > 1


# -- float16 accumulation at float32 speed (issue 26) and the host fallback (issue 22) ----------------
def _float16_cases(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Accumulator values and addends (float32 and float16) over float16's whole range: ties
    (addends at exact float16 half-steps), subnormals, values that overflow to inf, NaN."""
    rng = np.random.default_rng(seed)
    scale = rng.choice([2.0 ** -20, 2.0 ** -14, 1e-3, 1.0, 30.0, 3e4], size=n)
    acc = torch.from_numpy(np.clip(rng.normal(size=n) * scale, -6e4, 6e4).astype(np.float16))  # finite
    addend = torch.from_numpy((rng.normal(size=n) * scale).astype(np.float32))
    half_steps = rng.random(n) < 0.2  # acc + an odd multiple of half its float16 spacing: a tie
    spacing = np.spacing(np.abs(acc.numpy())).astype(np.float64)
    addend[torch.from_numpy(half_steps)] = torch.from_numpy(
        (spacing * (rng.integers(-5, 5, size=n) + 0.5)).astype(np.float32))[torch.from_numpy(half_steps)]
    addend[:4] = torch.tensor([65504.0, -65504.0, float("nan"), 65519.0])
    return acc, addend, addend.half()


@pytest.mark.parametrize("addend_dtype", [torch.float32, torch.float16])
def test_add_rounded_equals_torchs_float16_add_bit_for_bit(addend_dtype):
    from mrseg_cohort.segmentation.accumulation import add_rounded

    acc, addend32, addend16 = _float16_cases(200_000, seed=1)
    addend = addend32 if addend_dtype == torch.float32 else addend16
    full_ours, full_torch = acc.reshape(20, 100, 100).clone(), acc.reshape(20, 100, 100).clone()
    window = (slice(3, 13), slice(10, 90), slice(5, 95))  # a strided view, as a tile's window is
    shaped = addend[:10 * 80 * 90].reshape(10, 80, 90)
    full_torch[window] += shaped.clone()  # nnU-Net's `predicted_logits[sl] += prediction`
    add_rounded(full_ours[window], shaped.clone(), torch.empty(shaped.shape))
    assert torch.equal(full_ours.view(torch.int16), full_torch.view(torch.int16))  # bits, NaN included
    assert torch.isinf(full_torch).any() and torch.isnan(full_torch).any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_all_finite_finds_every_nan_and_infinity(dtype):
    from mrseg_cohort.segmentation.accumulation import all_finite

    values = torch.full((3, 1 << 12, 1 << 11), 65504.0, dtype=dtype)  # largest float16: the sums stay finite
    assert all_finite(values)
    for bad in (float("nan"), float("inf"), -float("inf")):
        broken = values.clone()
        broken[2, -1, -1] = bad
        assert not all_finite(broken)
    both = values.clone()
    both[0, 0, 0], both[1, 0, 0] = float("inf"), -float("inf")
    assert not all_finite(both)


def test_logits_equal_nnunets_sliding_window_bit_for_bit(small_model):
    """Our fold logits (float16 sums at float32 speed) against nnU-Net's own
    predict_logits_from_preprocessed_data on the same preprocessed input: every bit."""
    from mrseg_cohort.segmentation.model_folder import make_nnunet_predictor

    folder = open_model_folder(small_model, (0, 1), name="base")
    runner = ModelRunner(folder, "cpu")
    image = textured_body_in_noise((24, 60, 70), (4.0, 2.0, 2.0), seed=5)
    x = runner.preprocess(image.array, image.grid.spacing_mm)
    reference = make_nnunet_predictor(folder, "cpu").predict_logits_from_preprocessed_data(x.clone())
    ours = runner.logits(x)
    assert ours.dtype == reference.dtype == torch.float16
    assert torch.equal(ours.view(torch.int16), reference.view(torch.int16))
    assert torch.equal(runner.logits(x, on_host=True).view(torch.int16), reference.view(torch.int16))


def test_out_of_device_memory_falls_back_to_accumulating_on_the_host(small_model, monkeypatch, caplog):
    """Issue 22: a device that cannot hold the float16 accumulators (forced here on the CPU, where
    device and host are one) gets them on the host, as nnU-Net's predictor falls back; the labels
    are those of a run that never ran out of memory."""
    from mrseg_cohort.config import ModelConfig
    from mrseg_cohort.geometry import Volume
    from mrseg_cohort.segmentation.segmenter import Segmenter, check_model

    image = textured_body_in_noise((20, 40, 40), (4.0, 2.5, 2.5), seed=3)
    spec = check_model(ModelConfig(weights=str(small_model), folds=(0, 1), skip_empty_tiles=False))
    segmenter = Segmenter([spec], "cpu")
    expected = segmenter(image, "MRI", "in").labels["base"]
    calls = []
    plain_logits = ModelRunner.logits

    def logits_without_device_room(self, x, body=None, stats=None, tiles_per_batch=None, on_host=False):
        calls.append((tiles_per_batch, on_host))
        if not on_host:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.97 GiB")
        return plain_logits(self, x, body, stats, tiles_per_batch, on_host)

    monkeypatch.setattr(ModelRunner, "logits", logits_without_device_room)
    labels = segmenter(Volume(image.array, image.grid), "MRI", "in").labels["base"]
    assert calls == [(1, False), (1, True)]
    assert np.array_equal(labels, expected) and np.unique(labels).size > 1
    assert "accumulators on the host" in caplog.text
