"""The bundled demo model on phantoms it never saw, predicted with nnU-Net's own predictor (CPU)."""

import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "jobs"))
from evaluate_demo_model import evaluate  # noqa: E402

MAJOR = ("liver", "spleen", "right_kidney", "left_kidney", "left_lung", "right_lung", "heart", "left_femur",
         "right_femur")


@pytest.fixture(scope="module")
def scores(demo_model):
    return evaluate(str(demo_model), "base", n=5, seed=2024)


def test_every_structure_found_and_mean_dice(scores):
    assert scores["structures_found_in_every_case"], scores["min_dice"]
    assert scores["mean_dice"] >= 0.80, scores["mean_dice"]


def test_major_organs(scores):
    low = {n: scores["min_dice"][n] for n in MAJOR if scores["min_dice"][n] < 0.90}
    assert not low, low


def test_left_right_never_swapped(scores):
    assert scores["lr_swaps"] == []
