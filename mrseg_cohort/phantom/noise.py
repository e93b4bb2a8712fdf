"""Inputs a model is unsure about: MRI-like noise everywhere with a textured, body-shaped ellipse.

Real MRI has no empty background (air is Rician noise), so nnU-Net's non-zero crop removes nothing,
and a network sees texture it was not trained on: its logits are close to tied in many voxels.
These images test rounding-level agreement with nnU-Net's predictor (and skipping of tiles
outside the body), not segmentation quality.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from mrseg_cohort.geometry import Grid, Volume


def textured_body_in_noise(shape: tuple[int, int, int], spacing_mm: tuple[float, float, float],
                           seed: int = 0, noise_sigma: float = 20.0, background_zero: bool = False) -> Volume:
    """A float32 (z, y, x) image on an identity-direction (LPS) grid.

    Inside an elliptic cylinder (semi-axes 38 % and 45 % of the in-plane extent) a smooth random
    texture around 300; everywhere Rician noise of ``noise_sigma`` (magnitude of complex Gaussian
    noise), or exactly 0 outside the body with ``background_zero`` (for masked normalisation).
    """
    rng = np.random.default_rng(seed)
    _, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    body = ((y - shape[1] / 2) / (0.38 * shape[1])) ** 2 + ((x - shape[2] / 2) / (0.45 * shape[2])) ** 2 < 1
    body = np.broadcast_to(body, shape)
    texture = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), 3) * 400 + 300
    noise = np.abs(rng.normal(0, noise_sigma, shape) + 1j * rng.normal(0, noise_sigma, shape)).astype(np.float32)
    image = np.where(body, texture + noise, 0 if background_zero else noise).astype(np.float32)
    return Volume(image, Grid(shape, spacing_mm))
