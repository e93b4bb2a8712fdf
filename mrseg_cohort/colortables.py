"""Viewer colour tables for label maps: 3D Slicer ``.ctbl`` and ITK-SNAP label descriptions.

Colours are stable per structure name (a structure keeps its colour in every cohort and release):
MRSegmentator's 40 classes and the body-composition classes have hand-picked colours; names not
listed here get colours generated from their group (see :func:`label_colors`). Conventions:

- groups are coherent: vessels red (arteries) and blue (veins), bones ivory to grey, muscles red
  to purple, fat yellow; organs take distinct hues;
- left/right partners share a hue; the left one is lighter;
- every colour differs from every other of its map by a CIELAB distance (Delta E 1976) of more
  than 15 for the curated maps, so structures stay distinguishable side by side;
- background (0) is included: black and fully transparent.

Pure: text in, text out (writing the files beside the labels is :mod:`mrseg_cohort.io.colortables`).
"""

from __future__ import annotations

import colorsys
import shlex
from dataclasses import dataclass

import numpy as np

from mrseg_cohort.labels import LabelMap, Structure

RGB = tuple[int, int, int]

CURATED: dict[str, RGB] = {
    # organs: distinct hues
    "spleen": (100, 160, 200), "liver": (221, 130, 101),
    "right_kidney": (212, 160, 30), "left_kidney": (250, 210, 100),
    "gallbladder": (120, 160, 60), "stomach": (240, 150, 210), "pancreas": (255, 245, 80),
    "right_adrenal_gland": (20, 140, 110), "left_adrenal_gland": (90, 210, 170),
    "right_lung": (110, 150, 230), "left_lung": (175, 215, 250), "heart": (200, 30, 70),
    "esophagus": (255, 205, 220), "small_bowel": (215, 170, 140), "duodenum": (190, 135, 70),
    "colon": (120, 80, 40), "urinary_bladder": (190, 235, 90),
    # vessels: arteries red, veins blue
    "aorta": (240, 20, 20), "inferior_vena_cava": (40, 60, 235), "portal_vein_and_splenic_vein": (0, 200, 225),
    "right_iliac_artery": (165, 0, 0), "left_iliac_artery": (255, 100, 110),
    "right_iliac_vena": (20, 25, 140), "left_iliac_vena": (120, 120, 255),
    # bones: ivory to grey
    "spine": (245, 225, 185), "sacrum": (255, 250, 235),
    "right_hip": (170, 150, 100), "left_hip": (215, 195, 110),
    "right_femur": (135, 130, 145), "left_femur": (190, 190, 200),
    # muscles: red to purple
    "right_autochthonous_muscle": (140, 40, 40), "left_autochthonous_muscle": (195, 80, 70),
    "right_iliopsoas_muscle": (170, 30, 120), "left_iliopsoas_muscle": (225, 100, 180),
    "right_gluteus_maximus": (90, 25, 60), "left_gluteus_maximus": (140, 70, 110),
    "right_gluteus_medius": (110, 60, 160), "left_gluteus_medius": (170, 130, 215),
    "right_gluteus_minimus": (185, 90, 20), "left_gluteus_minimus": (240, 150, 50),
    # body composition (MRSegmentator 2.0)
    "subcutaneous_fat": (255, 225, 120), "visceral_fat": (255, 170, 40),
    "abdominal_subcutaneous_fat": (230, 240, 160), "gluteofemoral_fat": (200, 170, 60),
    "right_rectus_abdominis": (140, 40, 40), "left_rectus_abdominis": (195, 80, 70),
    "right_oblique_muscle": (170, 30, 120), "left_oblique_muscle": (225, 100, 180),
    "right_quadratus_lumborum": (110, 60, 160), "left_quadratus_lumborum": (170, 130, 215),
}
"""Hand-picked colours by structure name (MRSegmentator base and body-composition maps)."""

BACKGROUND_NAME = "background"

# Generated colours: (hue range in degrees, saturation, value) per group; left partners lighter.
_GROUP_STYLE: dict[str, tuple[tuple[float, float], float, float]] = {
    "organ": ((0.0, 360.0), 0.60, 0.90), "vessel": ((0.0, 360.0), 0.85, 0.85),
    "bone": ((30.0, 60.0), 0.30, 0.90), "muscle": ((300.0, 390.0), 0.65, 0.65),
    "fat": ((40.0, 65.0), 0.55, 1.00),
}
_GOLDEN = 0.618033988749895


@dataclass(frozen=True)
class LabelColor:
    """One row of a colour table: label value, name, colour (0..255) and opacity (0..1)."""

    value: int
    name: str
    rgb: RGB
    alpha: float = 1.0


def label_colors(label_map: LabelMap) -> list[LabelColor]:
    """Background (value 0) and one colour per structure of ``label_map``, in value order.

    Curated names get their :data:`CURATED` colour; other names a colour generated from their
    group (hue spread by the golden ratio over the group's range, partners sharing the hue), nudged
    until it differs from every colour already given. Colours are unique within a map.
    """
    out = [LabelColor(0, BACKGROUND_NAME, (0, 0, 0), 0.0)]
    used: set[RGB] = set()
    hues: dict[str, float] = {}  # base name (side removed) -> generated hue
    for value in label_map:
        s = label_map[value]
        rgb = CURATED.get(s.name)
        if rgb is None or rgb in used:
            rgb = _generated(s, hues, used)
        used.add(rgb)
        out.append(LabelColor(value, s.name, rgb))
    return out


def color_lookup(label_map: LabelMap) -> np.ndarray:
    """(256, 3) uint8 lookup table label value -> RGB (values not in the map: black)."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    for c in label_colors(label_map):
        lut[c.value] = c.rgb
    return lut


def slicer_ctbl(label_map: LabelMap, title: str = "") -> str:
    """A 3D Slicer colour table (``.ctbl``): ``value name R G B A`` per line, A in 0..255."""
    head = [f"# Color table file {title or label_map.name}", f"# {len(label_map) + 1} values",
            "# value name R G B A"]
    rows = [f"{c.value} {c.name} {c.rgb[0]} {c.rgb[1]} {c.rgb[2]} {round(c.alpha * 255)}"
            for c in label_colors(label_map)]
    return "\n".join(head + rows) + "\n"


def itksnap_label_description(label_map: LabelMap, title: str = "") -> str:
    """An ITK-SNAP label description file (``IDX -R- -G- -B- -A-- VIS MSH LABEL``, A in 0..1)."""
    head = ["################################################",
            f"# ITK-SnAP Label Description File: {title or label_map.name}",
            "# File format: ",
            "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
            "# Fields: ",
            "#    IDX:   Zero-based index ",
            "#    -R-:   Red color component (0..255)",
            "#    -G-:   Green color component (0..255)",
            "#    -B-:   Blue color component (0..255)",
            "#    -A-:   Label transparency (0.00 .. 1.00)",
            "#    VIS:   Label visibility (0 or 1)",
            "#    MSH:   Label mesh visibility (0 or 1)",
            "#  LABEL:   Label description ",
            "################################################"]
    rows = []
    for c in label_colors(label_map):
        visible = int(c.value != 0)
        name = "Clear Label" if c.value == 0 else c.name
        rows.append(f"{c.value:5d} {c.rgb[0]:5d} {c.rgb[1]:4d} {c.rgb[2]:4d} {c.alpha:8.2f} "
                    f"{visible:2d} {visible:2d}    \"{name}\"")
    return "\n".join(head + rows) + "\n"


def parse_slicer_ctbl(text: str) -> list[LabelColor]:
    """Rows of a ``.ctbl`` file (comments and blank lines skipped); alpha returned in 0..1."""
    out = []
    for n, line in _data_lines(text):
        parts = line.split()
        if len(parts) != 6:
            raise ValueError(f"ctbl line {n}: expected 'value name R G B A', not {line!r}")
        value, name, r, g, b, a = parts
        out.append(LabelColor(int(value), name, (int(r), int(g), int(b)), int(a) / 255))
    return out


def parse_itksnap_label_description(text: str) -> list[LabelColor]:
    """Rows of an ITK-SNAP label description file (the quoted label is the name)."""
    out = []
    for n, line in _data_lines(text):
        parts = shlex.split(line)
        if len(parts) != 8:
            raise ValueError(f"label description line {n}: expected 'IDX R G B A VIS MSH \"LABEL\"', "
                             f"not {line!r}")
        value, r, g, b, a, _vis, _msh, name = parts
        out.append(LabelColor(int(value), name, (int(r), int(g), int(b)), float(a)))
    return out


def delta_e(rgb_a: RGB, rgb_b: RGB) -> float:
    """CIELAB colour difference (Delta E 1976) of two sRGB colours (0..255)."""
    return float(np.linalg.norm(_lab(rgb_a) - _lab(rgb_b)))


# -- helpers ----------------------------------------------------------------------------------------
def _data_lines(text: str):
    """(1-based line number, stripped line) of the lines that are neither blank nor ``#`` comments."""
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            yield n, line


def _base_name(s: Structure) -> str:
    for side in ("left", "right"):
        if s.name.startswith(side + "_"):
            return s.name[len(side) + 1:]
        if s.name.endswith("_" + side):
            return s.name[: -len(side) - 1]
    return s.name


def _generated(s: Structure, hues: dict[str, float], used: set[RGB]) -> RGB:
    (lo, hi), sat, val = _GROUP_STYLE.get(s.group, _GROUP_STYLE["organ"])
    base = _base_name(s)
    if base not in hues:
        hues[base] = (len(hues) * _GOLDEN) % 1.0
    if s.group == "vessel" and ("arter" in base or "aorta" in base):
        lo, hi = -15.0, 15.0
    elif s.group == "vessel" and ("vein" in base or "vena" in base):
        lo, hi = 200.0, 250.0
    hue = (lo + hues[base] * (hi - lo)) / 360.0
    if s.side == "left":
        sat, val = sat * 0.6, min(1.0, val + 0.15)
    for step in range(360):
        r, g, b = colorsys.hsv_to_rgb((hue + step * 0.013) % 1.0, sat, val)
        rgb = (round(r * 255), round(g * 255), round(b * 255))
        if rgb != (0, 0, 0) and all(delta_e(rgb, other) > 3.0 for other in used):
            return rgb
    raise ValueError(f"no free colour left for {s.name!r}")  # pragma: no cover - 256 labels fit


def _lab(rgb: RGB) -> np.ndarray:
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ c
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])
