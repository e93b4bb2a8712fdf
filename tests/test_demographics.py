"""mrseg_cohort.demographics and ``evaluate --covariates``: Dice and HD95 by sex (t-test) and age
(Pearson r) equal SciPy on the same data; too few pairs give NaN with the reason."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

from mrseg_cohort.cli import app
from mrseg_cohort.demographics import COLUMNS, demographics
from mrseg_cohort.geometry import Grid, Volume
from mrseg_cohort.io.nifti import write_volume
from mrseg_cohort.io.storage import Store
from mrseg_cohort.labels import MRSEG


def _per_class(n_pairs: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_pairs):
        for sid, name in ((1, "spleen"), (5, "liver"), (13, "aorta")):
            hd = float(rng.uniform(1, 9))
            rows.append({"pair_id": f"p{i}", "structure_id": sid, "structure": name, "dice": float(rng.uniform(0.7, 1)),
                         "hd95_mm": math.inf if (i, sid) == (3, 13) else hd})
    frame = pd.DataFrame(rows)
    frame.loc[(frame["pair_id"] == "p5") & (frame["structure"] == "aorta"), "dice"] = np.nan  # reference empty
    return frame


def _subjects(n_pairs: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sex = np.array(["female", "male"] * (n_pairs // 2) + ["female"] * (n_pairs % 2), dtype=object)
    sex[0] = None  # unknown sex: in the age correlation, not in the t-test
    age = rng.uniform(45, 80, n_pairs)
    age[1] = np.nan
    return pd.DataFrame({"pair_id": [f"p{i}" for i in range(n_pairs)], "sex": sex, "age_years": age})


@pytest.mark.parametrize("welch", [False, True])
def test_t_test_and_pearson_equal_scipy(welch):
    per_class, subjects = _per_class(14), _subjects(14)
    table = demographics(per_class, subjects, welch).set_index(["structure", "metric"])
    assert list(table.index.get_level_values(0).unique()) == ["spleen", "liver", "aorta", "all"]
    s = subjects.set_index("pair_id")
    for metric in ("dice", "hd95_mm"):
        finite = per_class[np.isfinite(per_class[metric])]
        per_pair = {name: g.set_index("pair_id")[metric] for name, g in finite.groupby("structure")}
        per_pair["all"] = finite.groupby("pair_id")[metric].mean()  # each pair's mean over its structures
        for name, values in per_pair.items():
            row = table.loc[(name, metric)]
            sex, age = s["sex"].reindex(values.index), s["age_years"].reindex(values.index)
            female, male = values[sex == "female"].to_numpy(), values[sex == "male"].to_numpy()
            expected_t = stats.ttest_ind(female, male, equal_var=not welch)
            assert (row["n_female"], row["n_male"]) == (female.size, male.size)
            assert row["mean_female"] == pytest.approx(female.mean()) and row["mean_male"] == pytest.approx(male.mean())
            assert row["t"] == pytest.approx(expected_t.statistic) and row["p_t"] == pytest.approx(expected_t.pvalue)
            ok = age.notna()
            expected_r = stats.pearsonr(age[ok], values[ok])
            assert row["r_age"] == pytest.approx(expected_r.statistic)
            assert row["p_age"] == pytest.approx(expected_r.pvalue)
            assert row["n_age"] == int(ok.sum()) and row["note"] == ""
    # the aorta's infinite HD95 (pair p3) and its NaN Dice (pair p5) are left out
    assert table.loc[("aorta", "hd95_mm"), ["n_female", "n_male"]].sum() == 12
    assert table.loc[("aorta", "dice"), ["n_female", "n_male"]].sum() == 12


def test_too_few_pairs_give_nan_with_the_reason():
    per_class = _per_class(4)
    subjects = pd.DataFrame({"pair_id": ["p0", "p1", "p2", "p3"], "sex": ["female", "male", "male", None],
                             "age_years": [60.0, np.nan, np.nan, 70.0]})
    table = demographics(per_class, subjects)
    assert list(table.columns[:10]) == COLUMNS
    for row in table.to_dict("records"):
        assert math.isnan(row["t"]) and math.isnan(row["p_t"]) and math.isnan(row["r_age"])
        assert "t-test needs >= 2 pairs per sex (female 1, male 2)" in row["note"]
        with_age = 1 if (row["structure"], row["metric"]) == ("aorta", "hd95_mm") else 2  # p3's aorta HD95 is inf
        assert f"Pearson r needs >= 3 pairs with an age ({with_age})" in row["note"]
    same = pd.DataFrame({"pair_id": ["p0", "p1", "p2", "p3"], "sex": ["female", "female", "male", "male"],
                         "age_years": [60.0] * 4})
    constant = per_class.assign(dice=1.0)
    row = demographics(constant, same).set_index(["structure", "metric"]).loc[("liver", "dice")]
    assert math.isnan(row["t"]) and "values do not vary" in row["note"] and "ages do not vary" in row["note"]


def test_evaluate_with_covariates_writes_demographics(tmp_path):
    """Six small pairs; the prediction's liver is shifted by a pair-dependent amount."""
    store, grid = Store(), Grid((12, 16, 16), (3.0, 1.5, 1.5))
    rows = []
    for i in range(6):
        ref = np.zeros(grid.shape, np.uint8)
        ref[2:10, 3:11, 3:11] = MRSEG.id_of("liver")
        ref[4:8, 12:15, 12:15] = MRSEG.id_of("spleen")
        pred = np.roll(ref, i % 3, axis=2)
        for name, array in (("ref", ref), ("pred", pred)):
            write_volume(store, str(tmp_path / name / f"s{i}.nii.gz"), Volume(array, grid), np.uint8)
        rows.append({"pred": f"pred/s{i}.nii.gz", "ref": f"ref/s{i}.nii.gz", "participant_id": str(2000000 + i),
                     "dataset": "phantom"})
    pd.DataFrame(rows).to_csv(tmp_path / "pairs.csv", index=False)
    pd.DataFrame({"eid": [str(2000000 + i) for i in range(6)], "31-0.0": ["0", "1"] * 3,
                  "21003-2.0": [50, 55, 61, 64, 70, 77]}).to_csv(tmp_path / "cov.csv", index=False)
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["evaluate", "--pairs", str(tmp_path / "pairs.csv"), "--out", str(out),
                                      "--covariates", str(tmp_path / "cov.csv")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(out / "demographics.parquet")
    assert list(table.columns) == COLUMNS
    assert list(pd.read_parquet(out / "table_dice.parquet").columns) == ["structure", "phantom"]  # not a group
    liver = table[(table["structure"] == "liver") & (table["metric"] == "dice")].iloc[0]
    per_class = pd.read_parquet(out / "per_class.parquet")
    dice = per_class[per_class["structure"] == "liver"].set_index("pair_id")["dice"]
    # sex alternates F, M over the pairs s0..s5; the age is the listed one
    assert (liver["n_female"], liver["n_male"]) == (3, 3)
    expected = stats.ttest_ind(dice[["s0", "s2", "s4"]], dice[["s1", "s3", "s5"]])
    assert liver["t"] == pytest.approx(expected.statistic) and liver["p_t"] == pytest.approx(expected.pvalue)
    assert liver["r_age"] == pytest.approx(stats.pearsonr([50, 55, 61, 64, 70, 77], dice.to_numpy()).statistic)
    text = (out / "demographics.md").read_text()
    assert "Student's t-test" in text and "| structure | metric | n (F/M) |" in text
    assert "| liver | dice | 3/3 |" in text
    assert table["structure"].iloc[-1] == "all"
