"""Tests of the viewer colour tables (3D Slicer .ctbl, ITK-SNAP label descriptions)."""

from __future__ import annotations

import colorsys
import itertools
import json

import pytest

from conftest import REPO
from mrseg_cohort.colortables import (color_lookup, delta_e, itksnap_label_description, label_colors,
                                      parse_itksnap_label_description, parse_slicer_ctbl, slicer_ctbl)
from mrseg_cohort.io.colortables import write_color_tables
from mrseg_cohort.io.storage import Store
from mrseg_cohort.labels import BODY_COMPOSITION, MRSEG, label_map_from_dataset_json


@pytest.mark.parametrize("render, parse", [(slicer_ctbl, parse_slicer_ctbl),
                                           (itksnap_label_description, parse_itksnap_label_description)])
def test_tables_list_every_structure_with_its_value_and_name(render, parse):
    rows = parse(render(MRSEG))
    assert len(rows) == 41 and rows[0].value == 0 and rows[0].alpha == 0 and rows[0].rgb == (0, 0, 0)
    assert {r.value: r.name for r in rows[1:]} == MRSEG.names
    assert all(r.alpha == 1 for r in rows[1:])
    assert [(r.value, r.name, r.rgb) for r in rows[1:]] == [(c.value, c.name, c.rgb) for c in label_colors(MRSEG)[1:]]


def test_slicer_and_itksnap_formats():
    ctbl = slicer_ctbl(MRSEG).splitlines()
    assert "0 background 0 0 0 0" in ctbl and "5 liver 221 130 101 255" in ctbl
    snap = itksnap_label_description(MRSEG).splitlines()
    assert "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL" in snap
    assert any(line.split() == ["0", "0", "0", "0", "0.00", "0", "0", '"Clear', 'Label"'] for line in snap)
    assert any(line.split() == ["5", "221", "130", "101", "1.00", "1", "1", '"liver"'] for line in snap)


@pytest.mark.parametrize("label_map", [MRSEG, BODY_COMPOSITION], ids=lambda m: m.name)
def test_curated_colours_are_unique_distinguishable_and_paired(label_map):
    colors = {c.name: c.rgb for c in label_colors(label_map)[1:]}
    assert len(set(colors.values())) == len(colors) and (0, 0, 0) not in colors.values()
    closest = min(delta_e(a, b) for a, b in itertools.combinations(colors.values(), 2))
    assert closest > 15  # CIELAB Delta E 1976: clearly different side by side
    for left, right in label_map.pairs():
        (l_name, r_name) = label_map[left].name, label_map[right].name
        hue_l, _, val_l = colorsys.rgb_to_hsv(*(v / 255 for v in colors[l_name]))
        hue_r, _, val_r = colorsys.rgb_to_hsv(*(v / 255 for v in colors[r_name]))
        assert min(abs(hue_l - hue_r), 1 - abs(hue_l - hue_r)) < 25 / 360, (l_name, r_name)  # similar hue
        assert val_l >= val_r, l_name  # left lighter


def test_groups_are_coherent():
    colors = {c.name: c.rgb for c in label_colors(MRSEG)}
    for artery in ("aorta", "left_iliac_artery", "right_iliac_artery"):
        r, g, b = colors[artery]
        assert r > g and r > b
    for vein in ("inferior_vena_cava", "left_iliac_vena", "right_iliac_vena"):
        r, g, b = colors[vein]
        assert b > r and b > g


def test_generated_colours_for_other_label_maps_are_unique_and_stable():
    reference = json.loads((REPO / "configs" / "label_maps" / "totalsegmentator_total.json").read_text())
    label_map = label_map_from_dataset_json({"labels": {n: int(v) for v, n in reference["reference_labels"].items()}},
                                            "totalsegmentator")
    colors = label_colors(label_map)
    assert len(colors) == len(label_map) + 1
    assert len({c.rgb for c in colors}) == len(colors)
    assert colors == label_colors(label_map)
    assert {c.value: c.name for c in parse_slicer_ctbl(slicer_ctbl(label_map))[1:]} == label_map.names


def test_lookup_table_matches_colours():
    lut = color_lookup(MRSEG)
    assert lut.shape == (256, 3) and tuple(lut[0]) == (0, 0, 0)
    assert all(tuple(lut[c.value]) == c.rgb for c in label_colors(MRSEG))


def test_write_color_tables_beside_the_labels(tmp_path):
    uris = write_color_tables(Store(), str(tmp_path / "labels"), MRSEG, "base")
    assert uris == {"slicer": str(tmp_path / "labels" / "base.ctbl"),
                    "itksnap": str(tmp_path / "labels" / "base.label_description.txt")}
    assert (tmp_path / "labels" / "base.ctbl").read_text() == slicer_ctbl(MRSEG, "mrsegmentator (model base)")
    rows = parse_itksnap_label_description((tmp_path / "labels" / "base.label_description.txt").read_text())
    assert {r.value: r.name for r in rows[1:]} == MRSEG.names
