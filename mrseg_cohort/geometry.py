"""Geometry that travels with every array: :class:`Grid` and :class:`Volume`.

Conventions (one axis order everywhere past the io layer):

- arrays are indexed ``(z, y, x)`` as SimpleITK's ``GetArrayFromImage`` and nnU-Net give them;
- ``shape`` and ``spacing_mm`` are in that array order ``(z, y, x)``;
- ``origin_mm`` and ``direction`` are as SimpleITK gives them: world coordinates in LPS
  (x to the participant's Left, y to Posterior, z to Superior), origin = centre of voxel (0, 0, 0),
  ``direction`` = the 3x3 matrix in row-major order whose column j is the world direction of image
  index axis j, where index axes are (i, j, k) = (x, y, z), i.e. the reverse of the array order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

IDENTITY_DIRECTION: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class Grid:
    """A regular 3-D sampling grid in LPS world coordinates (see module docstring for axes)."""

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = IDENTITY_DIRECTION

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "spacing_mm", tuple(float(s) for s in self.spacing_mm))
        object.__setattr__(self, "origin_mm", tuple(float(s) for s in self.origin_mm))
        object.__setattr__(self, "direction", tuple(float(s) for s in self.direction))
        if len(self.shape) != 3 or len(self.spacing_mm) != 3 or len(self.origin_mm) != 3:
            raise ValueError(f"Grid needs 3-D shape, spacing and origin, not {self}")
        if len(self.direction) != 9:
            raise ValueError(f"Grid direction must have 9 values, not {len(self.direction)}")
        if any(s <= 0 or not math.isfinite(s) for s in self.spacing_mm):
            raise ValueError(f"Grid spacing must be positive and finite, not {self.spacing_mm}")

    # -- matrices ---------------------------------------------------------------------------------
    @property
    def direction_matrix(self) -> np.ndarray:
        """3x3 direction matrix; column j = world (LPS) direction of index axis j (x, y, z order)."""
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def spacing_xyz_mm(self) -> tuple[float, float, float]:
        return self.spacing_mm[::-1]  # type: ignore[return-value]

    def index_to_world_affine(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous index (i, j, k, 1) = (x, y, z, 1) to LPS mm."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction_matrix @ np.diag(self.spacing_xyz_mm)
        affine[:3, 3] = self.origin_mm
        return affine

    def zyx_to_world(self, zyx: np.ndarray) -> np.ndarray:
        """World LPS mm of array indices ``zyx`` ((..., 3) in z, y, x order, may be fractional)."""
        ijk = np.asarray(zyx, dtype=np.float64)[..., ::-1]
        affine = self.index_to_world_affine()
        return ijk @ affine[:3, :3].T + affine[:3, 3]

    def world_to_zyx(self, world: np.ndarray) -> np.ndarray:
        """Fractional array indices (z, y, x) of LPS points ``world`` ((..., 3))."""
        affine = np.linalg.inv(self.index_to_world_affine())
        ijk = np.asarray(world, dtype=np.float64) @ affine[:3, :3].T + affine[:3, 3]
        return ijk[..., ::-1]

    # -- derived ----------------------------------------------------------------------------------
    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (mm^3 / 1000)."""
        return math.prod(self.spacing_mm) / 1000.0

    @property
    def n_voxels(self) -> int:
        return math.prod(self.shape)

    def corners_world(self) -> np.ndarray:
        """(8, 3) LPS positions of the centres of the 8 corner voxels."""
        z, y, x = (s - 1 for s in self.shape)
        corners = np.array([[a, b, c] for a in (0, z) for b in (0, y) for c in (0, x)], dtype=float)
        return self.zyx_to_world(corners)

    def axis_codes(self) -> str:
        """Three letters naming the world direction each index axis (x, y, z order) points to,
        in LPS terms, e.g. ``"LPS"`` for SimpleITK's identity direction, ``"RAS"`` for nibabel's."""
        letters = (("R", "L"), ("A", "P"), ("I", "S"))
        out = []
        for col in self.direction_matrix.T:
            axis = int(np.argmax(np.abs(col)))
            out.append(letters[axis][int(col[axis] > 0)])
        return "".join(out)

    def is_close(self, other: "Grid", atol_mm: float = 1e-3, atol_direction: float = 1e-4) -> bool:
        """Same shape, and spacing/origin/direction equal within tolerances."""
        return (self.shape == other.shape
                and np.allclose(self.spacing_mm, other.spacing_mm, atol=atol_mm)
                and np.allclose(self.origin_mm, other.origin_mm, atol=atol_mm)
                and np.allclose(self.direction, other.direction, atol=atol_direction))

    def mismatch(self, other: "Grid", atol_mm: float = 1e-3, atol_direction: float = 1e-4) -> str:
        """Empty if :meth:`is_close`, else which of shape/spacing/origin/direction differ and how."""
        parts = []
        if self.shape != other.shape:
            parts.append(f"shape {self.shape} != {other.shape}")
        if not np.allclose(self.spacing_mm, other.spacing_mm, atol=atol_mm):
            parts.append(f"spacing {_fmt(self.spacing_mm)} != {_fmt(other.spacing_mm)} mm")
        if not np.allclose(self.origin_mm, other.origin_mm, atol=atol_mm):
            parts.append(f"origin {_fmt(self.origin_mm)} != {_fmt(other.origin_mm)} mm")
        if not np.allclose(self.direction, other.direction, atol=atol_direction):
            ours, theirs = self.axis_codes(), other.axis_codes()
            if ours == theirs:  # the same nearest axes ("LPS != LPS" said nothing): how far they turn
                cosines = np.clip(np.sum(self.direction_matrix * other.direction_matrix, axis=0), -1, 1)
                parts.append(f"direction {ours} in both, the axes turned by up to "
                             f"{np.degrees(np.arccos(cosines)).max():.1f} deg against each other")
            else:
                parts.append(f"direction {ours} != {theirs}")
        return "; ".join(parts)

    def with_shape(self, shape: tuple[int, int, int]) -> "Grid":
        return replace(self, shape=shape)

    def crop(self, start_zyx: tuple[int, int, int], stop_zyx: tuple[int, int, int]) -> "Grid":
        """The grid of ``array[z0:z1, y0:y1, x0:x1]``."""
        origin = self.zyx_to_world(np.asarray(start_zyx, dtype=float))
        shape = tuple(int(b - a) for a, b in zip(start_zyx, stop_zyx))
        return Grid(shape, self.spacing_mm, tuple(origin), self.direction)  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "spacing_mm": list(self.spacing_mm),
                "origin_mm": list(self.origin_mm), "direction": list(self.direction)}

    @classmethod
    def from_dict(cls, d: dict) -> "Grid":
        return cls(tuple(d["shape"]), tuple(d["spacing_mm"]), tuple(d["origin_mm"]), tuple(d["direction"]))


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


@dataclass(frozen=True)
class Volume:
    """An image or label map with its geometry: ``array`` is (z, y, x) on ``grid``."""

    array: np.ndarray = field(repr=False)
    grid: Grid

    def __post_init__(self) -> None:
        if tuple(self.array.shape) != self.grid.shape:
            raise ValueError(f"array shape {self.array.shape} does not match grid shape {self.grid.shape}")

    @classmethod
    def on_grid(cls, array: np.ndarray, grid: Grid) -> "Volume":
        return cls(array, grid.with_shape(array.shape))

    def with_array(self, array: np.ndarray) -> "Volume":
        """Same grid, new array (shape must match)."""
        return Volume(array, self.grid)
