"""Label maps: MRSegmentator's 40 classes, its body-composition classes, and models' own maps.

A :class:`LabelMap` is an ordered mapping ``label value -> Structure`` (background 0 is implicit).
Names are stable column values that users filter on: never rename them.
Sides are the participant's own (``left`` = participant's left = +x in LPS world coordinates).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal, Mapping

from mrseg_cohort.errors import ModelError

Group = Literal["organ", "vessel", "bone", "muscle", "fat"]
Side = Literal["left", "right", "none"]


@dataclass(frozen=True)
class Structure:
    """One labelled class: value in the label map, stable name, anatomical group and side."""

    id: int
    name: str
    group: Group
    side: Side
    partner: str | None = None  # name of the contralateral structure, if any

    @property
    def is_vessel(self) -> bool:
        """The one definition of a vessel (its connectivity is measured; DESIGN.md section 4)."""
        return self.group == "vessel"


class LabelMap(Mapping[int, Structure]):
    """Label value -> :class:`Structure`; background (0) is not an entry."""

    def __init__(self, name: str, structures: list[Structure]):
        self.name = name
        self._by_id = {s.id: s for s in structures}
        self._by_name = {s.name: s for s in structures}
        if len(self._by_id) != len(structures) or len(self._by_name) != len(structures):
            raise ValueError(f"label map {name!r} has duplicate values or names")
        if 0 in self._by_id or any(not 0 < i < 256 for i in self._by_id):
            raise ValueError(f"label map {name!r}: values must be 1..255 (uint8), background 0 implicit")

    def __getitem__(self, label: int) -> Structure:
        return self._by_id[label]

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._by_id))

    def __len__(self) -> int:
        return len(self._by_id)

    def by_name(self, name: str) -> Structure:
        return self._by_name[name]

    def id_of(self, name: str) -> int:
        return self._by_name[name].id

    @property
    def names(self) -> dict[int, str]:
        """Label value -> name, in value order."""
        return {i: self._by_id[i].name for i in self}

    def ids_in_group(self, group: Group) -> list[int]:
        return [i for i in self if self._by_id[i].group == group]

    def vessel_ids(self) -> list[int]:
        """Values of the structures that are vessels (:attr:`Structure.is_vessel`)."""
        return [i for i in self if self._by_id[i].is_vessel]

    def pairs(self) -> list[tuple[int, int]]:
        """(left id, right id) of every left/right pair, in left-id order."""
        return [(s.id, self._by_name[s.partner].id) for s in (self._by_id[i] for i in self)
                if s.side == "left" and s.partner in self._by_name]

    def to_nnunet_labels(self) -> dict[str, int]:
        """The ``labels`` entry of an nnU-Net dataset.json: ``{"background": 0, name: value, ...}``."""
        return {"background": 0, **{self._by_id[i].name: i for i in self}}

    def differences(self, other: "LabelMap") -> list[str]:
        """Human-readable differences between two maps' values and names (empty when they agree)."""
        out = []
        for i in sorted(set(self._by_id) | set(other._by_id)):
            mine, theirs = self._by_id.get(i), other._by_id.get(i)
            if mine is None or theirs is None or mine.name != theirs.name:
                out.append(f"{i}: {mine.name if mine else '(none)'} != {theirs.name if theirs else '(none)'}")
        return out


def _side_and_partner(name: str) -> tuple[Side, str | None]:
    for side, other in (("left", "right"), ("right", "left")):
        if name.startswith(side + "_"):
            return side, other + name[len(side):]
        if name.endswith("_" + side):
            return side, name[: -len(side)] + other
    return "none", None


def _build(name: str, entries: list[tuple[int, str, Group]]) -> LabelMap:
    known = {n for _, n, _ in entries}
    structures = []
    for value, struct_name, group in entries:
        side, partner = _side_and_partner(struct_name)
        structures.append(Structure(value, struct_name, group, side, partner if partner in known else None))
    return LabelMap(name, structures)


MRSEG = _build("mrsegmentator", [
    (1, "spleen", "organ"), (2, "right_kidney", "organ"), (3, "left_kidney", "organ"),
    (4, "gallbladder", "organ"), (5, "liver", "organ"), (6, "stomach", "organ"),
    (7, "pancreas", "organ"), (8, "right_adrenal_gland", "organ"), (9, "left_adrenal_gland", "organ"),
    (10, "left_lung", "organ"), (11, "right_lung", "organ"), (12, "heart", "organ"),
    (13, "aorta", "vessel"), (14, "inferior_vena_cava", "vessel"),
    (15, "portal_vein_and_splenic_vein", "vessel"), (16, "left_iliac_artery", "vessel"),
    (17, "right_iliac_artery", "vessel"), (18, "left_iliac_vena", "vessel"),
    (19, "right_iliac_vena", "vessel"), (20, "esophagus", "organ"), (21, "small_bowel", "organ"),
    (22, "duodenum", "organ"), (23, "colon", "organ"), (24, "urinary_bladder", "organ"),
    (25, "spine", "bone"), (26, "sacrum", "bone"), (27, "left_hip", "bone"), (28, "right_hip", "bone"),
    (29, "left_femur", "bone"), (30, "right_femur", "bone"),
    (31, "left_autochthonous_muscle", "muscle"), (32, "right_autochthonous_muscle", "muscle"),
    (33, "left_iliopsoas_muscle", "muscle"), (34, "right_iliopsoas_muscle", "muscle"),
    (35, "left_gluteus_maximus", "muscle"), (36, "right_gluteus_maximus", "muscle"),
    (37, "left_gluteus_medius", "muscle"), (38, "right_gluteus_medius", "muscle"),
    (39, "left_gluteus_minimus", "muscle"), (40, "right_gluteus_minimus", "muscle"),
])
"""MRSegmentator's base model: 40 classes, background 0."""

BODY_COMPOSITION = _build("mrsegmentator_body_composition", [
    (1, "subcutaneous_fat", "fat"), (2, "visceral_fat", "fat"),
    (3, "left_rectus_abdominis", "muscle"), (4, "right_rectus_abdominis", "muscle"),
    (5, "left_oblique_muscle", "muscle"), (6, "right_oblique_muscle", "muscle"),
    (7, "left_quadratus_lumborum", "muscle"), (8, "right_quadratus_lumborum", "muscle"),
    (9, "abdominal_subcutaneous_fat", "fat"), (10, "gluteofemoral_fat", "fat"),
])
"""MRSegmentator 2.0's body-composition model: 10 classes, MRI only."""

KNOWN_MAPS: dict[str, LabelMap] = {"mrseg": MRSEG, "body_comp": BODY_COMPOSITION}

VESSEL_NAMES = tuple(MRSEG[i].name for i in MRSEG.vessel_ids())
"""MRSegmentator's vessels: aorta, inferior vena cava, portal/splenic vein, iliac arteries and veins."""

_GROUP_GUESSES: tuple[tuple[str, Group], ...] = (
    ("fat", "fat"), ("muscle", "muscle"), ("gluteus", "muscle"), ("abdominis", "muscle"),
    ("lumborum", "muscle"), ("artery", "vessel"), ("vena", "vessel"), ("vein", "vessel"),
    ("aorta", "vessel"), ("spine", "bone"), ("sacrum", "bone"), ("hip", "bone"), ("femur", "bone"),
)


def label_map_from_dataset_json(dataset: Mapping, name: str = "model") -> LabelMap:
    """The label map of an nnU-Net dataset.json (``labels``: name -> value, or name -> [values]).

    Groups come from the known maps when a name is known, else from the name (default ``organ``).
    Region-based labels (a name mapped to several values) are refused: MRSegmentator uses none.
    """
    labels = dataset.get("labels")
    if not isinstance(labels, Mapping) or not labels:
        raise ModelError(f"dataset.json of {name!r} has no 'labels' mapping")
    known = {s.name: s.group for m in KNOWN_MAPS.values() for s in m.values()}
    entries: list[tuple[int, str, Group]] = []
    for label_name, value in labels.items():
        if isinstance(value, (list, tuple)):
            raise ModelError(f"dataset.json of {name!r}: region label {label_name!r} is not supported")
        if int(value) == 0:
            continue
        group = known.get(label_name) or next((g for k, g in _GROUP_GUESSES if k in label_name), "organ")
        entries.append((int(value), str(label_name), group))
    return _build(name, sorted(entries))


def check_label_map(found: LabelMap, expected: LabelMap, where: str) -> None:
    """Raise :class:`ModelError` naming every disagreement of ``found`` with ``expected``."""
    diffs = found.differences(expected)
    if diffs:
        shown = "; ".join(diffs[:5]) + (f"; and {len(diffs) - 5} more" if len(diffs) > 5 else "")
        raise ModelError(
            f"{where}: the model's labels disagree with the {expected.name} label map "
            f"(value: model != expected): {shown}. Set model.allow_label_mismatch: true to accept it.")
