"""Robust statistics shared by the QC report and the phenotype table.

Robust z-score (median and MAD instead of mean and standard deviation, so that a few failed
segmentations cannot hide themselves by inflating the spread)::

    z = (x - median) / (1.4826 * MAD),   MAD = median(|x - median|)

1.4826 = 1 / Phi^-1(0.75) makes ``1.4826 * MAD`` a consistent estimate of the standard deviation
for normally distributed values, so ``z`` reads like an ordinary z-score. It is the modified
z-score of Iglewicz and Hoaglin (1993), ``0.6745 * (x - median) / MAD``, to four significant digits.
When MAD is 0 (more than half of the values equal) the mean absolute deviation is used instead,
``z = (x - median) / (1.253314 * mean|x - median|)`` (1.253314 = sqrt(pi / 2), the same consistency
for the mean absolute deviation); when that is 0 too, every z is 0.
"""

from __future__ import annotations

import numpy as np

MAD_SCALE = 1.4826
"""1 / Phi^-1(0.75): ``MAD_SCALE * MAD`` estimates the standard deviation of normal data."""
MEAN_AD_SCALE = 1.253314
"""sqrt(pi / 2): ``MEAN_AD_SCALE * mean|x - median|`` estimates the standard deviation of normal data."""


def robust_z(values: np.ndarray) -> np.ndarray:
    """Robust z-scores of ``values`` (1-D, finite), as in the module docstring; zeros when the spread is 0."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return values
    deviation = values - np.median(values)
    mad = np.median(np.abs(deviation))
    if mad > 0:
        return deviation / (MAD_SCALE * mad)
    mean_ad = np.mean(np.abs(deviation))
    if mean_ad > 0:
        return deviation / (MEAN_AD_SCALE * mean_ad)
    return np.zeros_like(values)
