import json

import pytest

from mrseg_cohort.errors import ModelError
from mrseg_cohort.labels import BODY_COMPOSITION, MRSEG, check_label_map, label_map_from_dataset_json

EXPECTED = ("spleen right_kidney left_kidney gallbladder liver stomach pancreas right_adrenal_gland "
            "left_adrenal_gland left_lung right_lung heart aorta inferior_vena_cava "
            "portal_vein_and_splenic_vein left_iliac_artery right_iliac_artery left_iliac_vena "
            "right_iliac_vena esophagus small_bowel duodenum colon urinary_bladder spine sacrum left_hip "
            "right_hip left_femur right_femur left_autochthonous_muscle right_autochthonous_muscle "
            "left_iliopsoas_muscle right_iliopsoas_muscle left_gluteus_maximus right_gluteus_maximus "
            "left_gluteus_medius right_gluteus_medius left_gluteus_minimus right_gluteus_minimus").split()


def test_mrseg_map_is_exactly_the_issue_list():
    assert MRSEG.names == {i + 1: name for i, name in enumerate(EXPECTED)}
    assert 0 not in MRSEG


def test_groups_sides_and_partners():
    assert MRSEG.by_name("aorta").group == "vessel" and MRSEG.by_name("aorta").side == "none"
    assert MRSEG.by_name("left_femur").group == "bone"
    assert MRSEG.by_name("right_gluteus_minimus").group == "muscle"
    assert MRSEG.by_name("liver").group == "organ"
    kidney = MRSEG.by_name("left_kidney")
    assert (kidney.side, kidney.partner) == ("left", "right_kidney")
    assert MRSEG.by_name("left_iliac_vena").partner == "right_iliac_vena"
    assert len(MRSEG.pairs()) == 12
    for left, right in MRSEG.pairs():
        assert MRSEG[left].side == "left" and MRSEG[right].side == "right"
        assert MRSEG[left].name.replace("left", "right") == MRSEG[right].name


def test_body_composition_map():
    assert BODY_COMPOSITION.names[2] == "visceral_fat" and len(BODY_COMPOSITION) == 10
    assert BODY_COMPOSITION.by_name("left_oblique_muscle").partner == "right_oblique_muscle"


def test_dataset_json_round_trip_and_mismatch_refused():
    dataset = {"labels": MRSEG.to_nnunet_labels()}
    assert label_map_from_dataset_json(json.loads(json.dumps(dataset))).names == MRSEG.names
    bad = dict(dataset["labels"])
    bad["right_kidney"], bad["left_kidney"] = 3, 2  # swapped kidneys
    with pytest.raises(ModelError, match=r"2: left_kidney != right_kidney"):
        check_label_map(label_map_from_dataset_json({"labels": bad}), MRSEG, "model 'x'")
    with pytest.raises(ModelError, match="no 'labels'"):
        label_map_from_dataset_json({})


def test_one_definition_of_a_vessel_for_the_cohort_tables_and_evaluation():
    """The structures whose connectivity the cohort tables report (single_component) are exactly
    those evaluation reports vessel consistency for, for any label map."""
    import numpy as np
    import pandas as pd

    from mrseg_cohort.biomarkers import measure_scan
    from mrseg_cohort.config import MeasuresConfig
    from mrseg_cohort.evaluation import summarise
    from mrseg_cohort.geometry import Grid, Volume
    from mrseg_cohort.labels import VESSEL_NAMES

    guessed = label_map_from_dataset_json({"labels": {"background": 0, "liver": 1, "pulmonary_artery": 2,
                                                      "hepatic_vein": 3, "kidney": 4}}, "custom")
    assert VESSEL_NAMES == ("aorta", "inferior_vena_cava", "portal_vein_and_splenic_vein", "left_iliac_artery",
                            "right_iliac_artery", "left_iliac_vena", "right_iliac_vena")
    for label_map in (MRSEG, BODY_COMPOSITION, guessed):
        labels = np.zeros((6, 6, 6), np.uint8)
        for i, value in enumerate(label_map):
            labels.reshape(-1)[i * 3:(i + 1) * 3] = value
        result = measure_scan(Volume(labels, Grid((6, 6, 6), (1.0, 1.0, 1.0))), label_map, {}, None, None,
                              MeasuresConfig())
        in_tables = {r["structure"] for r in result.structures if r["single_component"] is not None}
        per_class = pd.DataFrame([{"group": "all", "structure_id": v, "dice": 1.0, "hd95_mm": 0.0,
                                   "n_components_pred": 1, "n_components_ref": 1} for v in label_map])
        summary = summarise(per_class, ["group"], label_map)
        in_evaluation = set(summary.loc[summary["vc"].notna(), "structure"])
        assert in_tables == in_evaluation == {label_map[v].name for v in label_map.vessel_ids()}
    assert {guessed[v].name for v in guessed.vessel_ids()} == {"pulmonary_artery", "hepatic_vein"}
