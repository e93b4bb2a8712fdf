"""A synthetic participant: body outline, the 40 MRSegmentator structures, the body-composition
depots and muscles, and their tissue properties, drawn from a seeded random generator.

World coordinates are LPS millimetres: x to the participant's Left, y to Posterior, z to Superior.
z = 0 is the knee joint line of an average participant; the body spans about z = -60 (below the knee)
to z = 1040 (shoulders). Canonical positions below are for an average adult and are scaled per
participant by ``height`` (z), ``width`` (x) and ``depth`` (y), then jittered per structure.

Tissue model: every voxel belongs to one tissue with a total signal S (arbitrary units) and a signal
fat fraction ff (0..1); water W = S (1 - ff), fat F = S ff. The truth fat fraction of a structure is
its tissue's ff (noise-free), constant inside the structure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mrseg_cohort.labels import BODY_COMPOSITION, MRSEG
from mrseg_cohort.phantom.shapes import Ellipsoid, Tube, rotation_xyz

# Lean body outline (mm, before per-participant scaling): z -> (half-width x, half-depth y).
TORSO_PROFILE = ((380.0, 150.0, 100.0), (450.0, 155.0, 100.0), (560.0, 135.0, 95.0),
                 (700.0, 130.0, 95.0), (800.0, 140.0, 100.0), (900.0, 150.0, 105.0),
                 (1040.0, 160.0, 92.0), (1100.0, 160.0, 92.0))
LEG_PROFILE = ((-100.0, 44.0), (0.0, 48.0), (200.0, 58.0), (370.0, 66.0), (400.0, 66.0))
LEG_OFFSET_X = 85.0
CROTCH_Z = 385.0
ILIAC_CREST_Z = 545.0
DIAPHRAGM_Z = 795.0
CAVITY_Z = (455.0, 800.0)
WALL_MM = 13.0


@dataclass(frozen=True)
class Tissue:
    """Total signal (a.u.) and signal fat fraction (0..1)."""

    signal: float
    ff: float


@dataclass
class Participant:
    """Everything random about one phantom participant (all drawn from ``seed`` and ``index``)."""

    seed: int
    index: int
    height: float
    width: float
    depth: float
    sat_mm: float
    vat_scale: float
    organ_scale: dict[str, float] = field(default_factory=dict)
    organ_shift: dict[str, np.ndarray] = field(default_factory=dict)
    vessel_shift: np.ndarray = field(default_factory=lambda: np.zeros(3))
    ff: dict[str, float] = field(default_factory=dict)
    """Signal fat fraction (0..1) per tissue name (structure names plus lean/sat/vat)."""


_SIGNAL = {
    "lean": 300, "sat": 900, "vat": 850, "liver": 520, "spleen": 700, "right_kidney": 750,
    "left_kidney": 750, "gallbladder": 950, "stomach": 400, "pancreas": 480,
    "right_adrenal_gland": 620, "left_adrenal_gland": 620, "left_lung": 120, "right_lung": 120,
    "heart": 580, "aorta": 260, "inferior_vena_cava": 330, "portal_vein_and_splenic_vein": 380,
    "left_iliac_artery": 260, "right_iliac_artery": 260, "left_iliac_vena": 330,
    "right_iliac_vena": 330, "esophagus": 360, "small_bowel": 560, "duodenum": 500, "colon": 250,
    "urinary_bladder": 1000, "spine": 640, "sacrum": 650, "left_hip": 660, "right_hip": 660,
    "left_femur": 700, "right_femur": 700, "left_autochthonous_muscle": 380,
    "right_autochthonous_muscle": 380, "left_iliopsoas_muscle": 430, "right_iliopsoas_muscle": 430,
    "left_gluteus_maximus": 340, "right_gluteus_maximus": 340, "left_gluteus_medius": 400,
    "right_gluteus_medius": 400, "left_gluteus_minimus": 460, "right_gluteus_minimus": 460,
    "left_rectus_abdominis": 410, "right_rectus_abdominis": 410, "left_oblique_muscle": 370,
    "right_oblique_muscle": 370, "left_quadratus_lumborum": 440, "right_quadratus_lumborum": 440,
}
# (low, high) signal fat fraction in percent, drawn per participant.
_FF_RANGE_PCT = {
    "lean": (6, 10), "sat": (86, 92), "vat": (82, 90), "liver": (2, 25), "spleen": (1, 3),
    "right_kidney": (2, 4), "left_kidney": (2, 4), "gallbladder": (0.5, 1), "stomach": (3, 5),
    "pancreas": (3, 15), "right_adrenal_gland": (4, 6), "left_adrenal_gland": (4, 6),
    "left_lung": (4, 6), "right_lung": (4, 6), "heart": (1, 3), "esophagus": (2, 4),
    "small_bowel": (3, 5), "duodenum": (3, 5), "colon": (5, 7), "urinary_bladder": (0.5, 1),
    "spine": (30, 50), "sacrum": (40, 60), "hip": (50, 70), "femur": (65, 85),
    "autochthonous_muscle": (5, 15), "iliopsoas_muscle": (3, 8), "gluteus_maximus": (5, 15),
    "gluteus_medius": (4, 12), "gluteus_minimus": (4, 12), "rectus_abdominis": (4, 10),
    "oblique_muscle": (4, 10), "quadratus_lumborum": (4, 10), "vessel": (0.5, 1.5),
}
_ORGANS_WITH_SHIFT = ("liver", "spleen", "right_kidney", "left_kidney", "gallbladder", "stomach",
                      "pancreas", "heart", "urinary_bladder", "left_lung", "right_lung")


def draw_participant(seed: int, index: int) -> Participant:
    """The random anatomy of participant ``index`` of a cohort generated with ``seed``."""
    rng = np.random.default_rng([seed, index])
    p = Participant(seed=seed, index=index, height=float(rng.uniform(0.93, 1.07)),
                    width=float(rng.uniform(0.9, 1.1)), depth=float(rng.uniform(0.9, 1.15)),
                    sat_mm=float(rng.uniform(8.0, 30.0)), vat_scale=float(rng.uniform(0.4, 1.0)))
    names = list(MRSEG.names.values()) + list(BODY_COMPOSITION.names.values())
    for name in names:
        p.organ_scale[name] = float(rng.uniform(0.9, 1.1))
    for name in _ORGANS_WITH_SHIFT:
        p.organ_shift[name] = rng.normal(0.0, 3.0, size=3)
    p.vessel_shift = rng.normal(0.0, 2.0, size=3)
    for name in ("lean", "sat", "vat", *names):
        p.ff[name] = float(rng.uniform(*_ff_range(name))) / 100.0
    return p


def _ff_range(name: str) -> tuple[float, float]:
    if name in _FF_RANGE_PCT:
        return _FF_RANGE_PCT[name]
    for side in ("left_", "right_"):
        if name.startswith(side) and name[len(side):] in _FF_RANGE_PCT:
            return _FF_RANGE_PCT[name[len(side):]]
    if name in VESSELS:
        return _FF_RANGE_PCT["vessel"]
    return 3.0, 6.0


def tissue_of(p: Participant, name: str) -> Tissue:
    return Tissue(float(_SIGNAL[name]), p.ff[name])


# -- body outline -------------------------------------------------------------------------------
def lean_half_axes(p: Participant, z_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Torso lean half-width and half-depth (mm) at world heights ``z_mm``."""
    zc = z_mm / p.height
    zs, a, b = (np.array(c) for c in zip(*TORSO_PROFILE))
    return np.interp(zc, zs, a) * p.width, np.interp(zc, zs, b) * p.depth


def leg_radius(p: Participant, z_mm: np.ndarray) -> np.ndarray:
    zs, r = (np.array(c) for c in zip(*LEG_PROFILE))
    return np.interp(z_mm / p.height, zs, r) * (p.width + p.depth) / 2


def sat_thickness(p: Participant, z_mm: np.ndarray) -> np.ndarray:
    """Subcutaneous fat thickness (mm): thickest at the waist and hips, thinner on the chest."""
    zc = z_mm / p.height
    return p.sat_mm * np.interp(zc, [-100, 380, 560, 800, 1100], [0.6, 1.1, 1.3, 0.8, 0.6])


# -- structures ---------------------------------------------------------------------------------
def _mirror(x: float, side: str) -> float:
    return x if side == "left" else -x


def canonical_structures() -> dict[str, list[Ellipsoid | Tube]]:
    """MRSegmentator structures of an average participant, as unions of shapes (canonical mm)."""
    s: dict[str, list[Ellipsoid | Tube]] = {}
    e, t, rot = Ellipsoid, Tube, rotation_xyz
    s["left_lung"] = [e((80, 10, 925), (68, 82, 125))]
    s["right_lung"] = [e((-80, 10, 915), (72, 82, 125))]
    s["heart"] = [e((18, -28, 865), (55, 48, 62), rot((0, 15, -20)))]
    s["liver"] = [e((-55, 0, 755), (92, 78, 80)), e((25, -25, 785), (55, 40, 42))]
    s["gallbladder"] = [e((-62, -48, 700), (17, 17, 36), rot((20, -15, 0)))]
    s["spleen"] = [e((95, 45, 770), (30, 44, 55), rot((0, 0, 25)))]
    s["stomach"] = [e((58, -22, 768), (43, 33, 55), rot((0, -20, 0)))]
    s["pancreas"] = [t(((-28, 10, 705), (20, 20, 712), (75, 35, 726)), (13, 12, 10))]
    s["duodenum"] = [t(((15, -32, 738), (-35, -12, 726), (-48, 4, 690), (-32, 16, 664), (12, 16, 662)),
                       (11, 11, 11, 11, 10))]
    s["right_kidney"] = [e((-72, 48, 660), (27, 23, 52), rot((0, 10, -15)))]
    s["left_kidney"] = [e((72, 48, 680), (27, 23, 52), rot((0, -10, 15)))]
    s["right_adrenal_gland"] = [e((-52, 50, 730), (12, 8, 17))]
    s["left_adrenal_gland"] = [e((52, 50, 745), (12, 8, 17))]
    s["esophagus"] = [t(((0, 38, 1060), (4, 32, 880), (20, 15, 805), (42, -8, 785)), (8, 8, 8, 8))]
    s["small_bowel"] = [t(((-60, -40, 640), (60, -45, 640), (62, -30, 605), (-62, -35, 605),
                           (-60, -45, 570), (60, -40, 570), (58, -30, 535), (-40, -35, 535)),
                          (13,) * 8)]
    s["colon"] = [t(((-85, 5, 560), (-92, 12, 680), (-80, -22, 716), (0, -58, 704), (85, -12, 732),
                     (100, 0, 600), (88, 4, 520), (40, 12, 472), (0, 62, 448), (0, 58, 405)),
                    (20, 19, 18, 18, 18, 18, 18, 16, 16, 15))]
    s["urinary_bladder"] = [e((0, -36, 432), (40, 31, 31))]
    s["spine"] = [t(((0, 60, 470), (0, 52, 620), (0, 56, 800), (0, 64, 950), (0, 52, 1060)),
                    (18, 18, 17, 16, 15))]
    s["sacrum"] = [e((0, 72, 440), (40, 16, 46), rot((-30, 0, 0)))]
    for side in ("left", "right"):
        m = lambda x, side=side: _mirror(x, side)  # noqa: E731
        s[f"{side}_hip"] = [e((m(105), 42, 505), (12, 45, 58)),
                            e((m(86), 12, 425), (24, 30, 30)),
                            t(((m(84), 10, 412), (m(18), -62, 402)), (12, 10))]
        s[f"{side}_femur"] = [e((m(88), 6, 422), (23, 23, 23)),
                              t(((m(88), 6, 422), (m(112), 14, 380), (m(100), 10, 40), (m(92), 10, -40)),
                                (15, 15, 15, 22))]
        s[f"{side}_autochthonous_muscle"] = [t(((m(30), 80, 480), (m(30), 78, 700), (m(30), 84, 1020)),
                                               (20, 21, 19))]
        s[f"{side}_iliopsoas_muscle"] = [t(((m(34), 46, 725), (m(52), 36, 565), (m(74), 4, 452),
                                            (m(88), -20, 392), (m(100), -12, 330)), (11, 19, 20, 18, 14))]
        s[f"{side}_gluteus_maximus"] = [e((m(82), 76, 420), (54, 24, 78))]
        s[f"{side}_gluteus_medius"] = [e((m(128), 45, 525), (14, 36, 45))]
        s[f"{side}_gluteus_minimus"] = [e((m(128), 20, 466), (17, 26, 30))]
    s["aorta"] = [t(((10, -12, 880), (4, -6, 942), (10, 22, 962), (20, 42, 930), (18, 32, 800),
                     (12, 26, 650), (5, 26, 570)), (14, 13, 12, 12, 11, 10, 9))]
    for side in ("left", "right"):
        m = lambda x, side=side: _mirror(x, side)  # noqa: E731
        s[f"{side}_iliac_artery"] = [t(((5, 26, 570), (5 + m(35), 15, 520), (5 + m(65), 6, 460),
                                        (5 + m(80), -16, 398)), (7, 6.5, 6.5, 6))]
        s[f"{side}_iliac_vena"] = [t(((-20, 42, 555), (-20 + m(45), 42, 520), (-20 + m(85), 24, 462),
                                      (-20 + m(102), 0, 400)), (8, 7.5, 7.5, 7))]
    s["inferior_vena_cava"] = [t(((-20, 42, 555), (-22, 36, 650), (-25, 25, 760), (-15, 0, 842)),
                                 (11, 11, 11, 12))]
    s["portal_vein_and_splenic_vein"] = [t(((-45, 2, 730), (0, 4, 722), (40, 12, 732), (86, 42, 752)),
                                           (7, 7, 6.5, 6))]
    return s


# Painting order: later entries overwrite earlier ones where shapes overlap.
PAINT_ORDER = (
    "left_lung", "right_lung", "small_bowel", "stomach", "liver", "spleen", "colon", "heart",
    "urinary_bladder", "left_gluteus_maximus", "right_gluteus_maximus", "left_gluteus_medius",
    "right_gluteus_medius", "left_gluteus_minimus", "right_gluteus_minimus",
    "left_autochthonous_muscle", "right_autochthonous_muscle", "left_iliopsoas_muscle",
    "right_iliopsoas_muscle", "duodenum", "pancreas", "right_kidney", "left_kidney",
    "right_adrenal_gland", "left_adrenal_gland", "gallbladder", "esophagus", "sacrum", "left_hip",
    "right_hip", "left_femur", "right_femur", "spine", "portal_vein_and_splenic_vein",
    "inferior_vena_cava", "left_iliac_vena", "right_iliac_vena", "aorta", "left_iliac_artery",
    "right_iliac_artery",
)
VESSELS = {"aorta", "inferior_vena_cava", "portal_vein_and_splenic_vein", "left_iliac_artery",
           "right_iliac_artery", "left_iliac_vena", "right_iliac_vena"}
assert sorted(PAINT_ORDER) == sorted(MRSEG.names.values())


def personalise(p: Participant, name: str, shapes: list[Ellipsoid | Tube]) -> list[Ellipsoid | Tube]:
    """Shapes of structure ``name`` scaled to participant ``p`` and jittered (vessels move together,
    so the tree stays connected)."""
    body = np.array([p.width, p.depth, p.height])
    shift = p.vessel_shift if name in VESSELS else p.organ_shift.get(name, np.zeros(3))
    scale = p.organ_scale[name]
    out: list[Ellipsoid | Tube] = []
    for shape in shapes:
        if isinstance(shape, Ellipsoid):
            center = np.asarray(shape.center) * body + shift
            radii = np.asarray(shape.radii) * body * scale
            out.append(Ellipsoid(tuple(center), tuple(radii), shape.rotation))
        else:
            points = np.asarray(shape.points) * body + shift
            radius_scale = scale if name not in VESSELS else 1.0
            out.append(Tube(tuple(map(tuple, points)), tuple(r * radius_scale for r in shape.radii)))
    return out


def body_comp_wall_sectors() -> dict[str, tuple[float, float]]:
    """Abdominal wall muscles as angular sectors of the wall ring (degrees; 0 = participant's left,
    90 = anterior), within the cavity's z range."""
    return {"left_rectus_abdominis": (62.0, 88.0), "right_rectus_abdominis": (92.0, 118.0),
            "left_oblique_muscle": (-5.0, 55.0), "right_oblique_muscle": (125.0, 185.0)}


def quadratus_lumborum(p: Participant) -> dict[str, list[Ellipsoid | Tube]]:
    out = {}
    for side in ("left", "right"):
        tube = Tube(((_mirror(58, side), 80, 560), (_mirror(60, side), 80, 705)), (11, 12))
        out[f"{side}_quadratus_lumborum"] = personalise_body_only(p, [tube])
    return out


def personalise_body_only(p: Participant, shapes: list[Tube]) -> list[Ellipsoid | Tube]:
    body = np.array([p.width, p.depth, p.height])
    return [Tube(tuple(map(tuple, np.asarray(s.points) * body)), s.radii) for s in shapes]
