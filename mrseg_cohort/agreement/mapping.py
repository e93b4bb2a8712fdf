"""Which reference column pairs with which of our phenotype columns, in which unit: the mapping file.

A mapping is a YAML file (``configs/agreement/ukbb.yaml`` is the shipped one, ``--map ukbb``; copy and
edit it for other tables)::

    name: my-reference
    pairs:
      - phenotype: vat_volume_ml     # a phenotype column (docs/tables.md)
        field: 22407                 # a UK Biobank field (columns 22407-2.0, f.22407.2.0, p22407_i2) ...
        # column: vat_litres         # ... or a plain column of the reference table
        unit: L                      # the reference's unit; converted to the phenotype's (mL)
        differs: "how the reference's definition differs from ours"
        optional: true               # skipped with a warning when the reference has no such column
        error_values: [-1]           # reference values that mean "no measurement" (in its own unit)
        error_columns: ["22411"]     # columns whose non-empty value marks the reference value as an error
    not_comparable:
      - field: 22409
        title: Total thigh fat-free muscle volume
        reason: "why we have no comparable measure"

Without a mapping, every reference column named like one of our phenotypes pairs with it, in the
same unit (:func:`identity_mapping`): the case of another mrseg-cohort output.

Pure: text in, a validated :class:`AgreementMap` out; reading the file is the CLI's.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Iterable

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from mrseg_cohort.config import Strict
from mrseg_cohort.phenotypes.catalogue import BY_NAME, PHENOTYPES

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "configs" / "agreement"
"""Where ``--map NAME`` finds the shipped mappings (``NAME.yaml``) in a source checkout."""

VOLUME_UNITS = {"ml": 1.0, "cm3": 1.0, "cm^3": 1.0, "cc": 1.0, "l": 1000.0, "litre": 1000.0, "litres": 1000.0,
                "liter": 1000.0, "liters": 1000.0, "dl": 100.0, "mm3": 1e-3, "mm^3": 1e-3}
"""Volume unit (lower case) -> factor to mL."""
PERCENT_UNITS = {"%": 1.0, "pct": 1.0, "percent": 1.0, "fraction": 100.0}
"""Unit of a fraction (lower case) -> factor to percent (``fraction``: 0-1)."""
RATIO_UNITS = {"1": 1.0, "ratio": 1.0}
UNITS = {"mL": VOLUME_UNITS, "%": PERCENT_UNITS, "1": RATIO_UNITS}
"""Our unit -> the reference units convertible to it."""


class MappingError(ValueError):
    """A mapping that cannot be used; the message names the file and what is wrong."""


def phenotype_unit(name: str) -> str:
    """Our unit of phenotype column ``name``: ``mL`` (``_ml``), ``%`` (``_pct``) or ``1`` (ratios)."""
    if name.endswith("_ml"):
        return "mL"
    if name.endswith("_pct"):
        return "%"
    return "1"


def conversion_factor(unit: str, phenotype: str) -> float:
    """Factor taking a reference value in ``unit`` to ``phenotype``'s unit.

    Raises:
        ValueError: ``unit`` is not one of :data:`UNITS` for the phenotype's kind of quantity.
    """
    ours = phenotype_unit(phenotype)
    known = UNITS[ours]
    factor = known.get(unit.strip().lower())
    if factor is None:
        raise ValueError(f"unit {unit!r} cannot be converted to {ours} (the unit of {phenotype}); "
                         f"known: {', '.join(known)}")
    return factor


class PairSpec(Strict):
    """One reference column and the phenotype it is compared with (module docstring)."""

    phenotype: str
    field: int | None = Field(None, ge=0)
    column: str | None = None
    title: str = ""
    unit: str
    differs: str = ""
    optional: bool = False
    confirmed: bool | None = None
    """Whether the field id and its definition were checked against the cohort's documentation."""
    evidence: str = ""
    error_values: tuple[float, ...] = ()
    error_columns: tuple[str, ...] = ()

    @field_validator("phenotype")
    @classmethod
    def _known_phenotype(cls, value: str) -> str:
        if value not in BY_NAME:
            hint = difflib.get_close_matches(value, list(BY_NAME), n=1)
            raise ValueError(f"{value!r} is not a phenotype column" +
                             (f" (did you mean {hint[0]!r}?)" if hint else " (see docs/tables.md)"))
        return value

    @field_validator("error_columns", mode="before")
    @classmethod
    def _text_columns(cls, value: object) -> object:
        return tuple(str(v) for v in value) if isinstance(value, (list, tuple)) else value

    @model_validator(mode="after")
    def _one_source(self) -> "PairSpec":
        if (self.field is None) == (self.column is None):
            raise ValueError("give exactly one of 'field' (a UK Biobank field id) and 'column'")
        conversion_factor(self.unit, self.phenotype)
        return self

    @property
    def key(self) -> str:
        """The reference column this pair reads: the field id as text, or the column name."""
        return str(self.field) if self.field is not None else str(self.column)

    @property
    def label(self) -> str:
        return f"field {self.field}" if self.field is not None else f"column {self.column!r}"

    @property
    def factor(self) -> float:
        return conversion_factor(self.unit, self.phenotype)


class NotComparable(Strict):
    """A reference measure listed as having no comparable phenotype, with the reason."""

    field: int | None = None
    column: str | None = None
    title: str
    reason: str
    confirmed: bool | None = None
    evidence: str = ""


class AgreementMap(Strict):
    name: str
    description: str = ""
    pairs: tuple[PairSpec, ...] = Field(min_length=1)
    not_comparable: tuple[NotComparable, ...] = ()


def load_mapping(text: str | bytes, source: str) -> AgreementMap:
    """The mapping in YAML ``text`` read from ``source`` (named in errors).

    Raises:
        MappingError: not YAML, an unknown key, a phenotype that is not ours, a unit that cannot be
            converted, a pair with both or neither of field and column. One line naming ``source``.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise MappingError(f"{source}: not valid YAML: {getattr(err, 'problem', err)}") from None
    if not isinstance(data, dict):
        raise MappingError(f"{source}: expected a mapping with 'name' and 'pairs'")
    try:
        return AgreementMap.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in first["loc"]).replace(".[", "[")
        message = str(first["ctx"]["error"]) if first["type"] == "value_error" else first["msg"]
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        raise MappingError(f"{source}: {where + ': ' if where else ''}{message}") from None


def identity_mapping(columns: Iterable[str], name: str = "same phenotype columns") -> AgreementMap:
    """Every phenotype that is a column of the reference (``columns``), paired with that column in our
    unit; optional (pairs absent from the reference are simply not compared).

    Raises:
        MappingError: no column is named like a phenotype.
    """
    present = set(columns)
    pairs = tuple(PairSpec(phenotype=p.name, column=p.name, unit=phenotype_unit(p.name), optional=True)
                  for p in PHENOTYPES if p.name in present)
    if not pairs:
        raise MappingError("no column of the reference is named like one of our phenotypes (e.g. "
                           f"{PHENOTYPES[0].name}); give --map ukbb or a mapping file")
    return AgreementMap(name=name, pairs=pairs)


def shipped_mapping(name: str) -> Path:
    """The file of shipped mapping ``name`` (``--map ukbb``).

    Raises:
        MappingError: there is no such shipped mapping here (names those that are).
    """
    path = SHIPPED_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in SHIPPED_DIR.glob("*.yaml")) if SHIPPED_DIR.is_dir() else []
        raise MappingError(f"--map {name}: no shipped mapping of that name in {SHIPPED_DIR} (shipped: "
                           f"{', '.join(known) or 'none found'}); give the path of a mapping YAML file")
    return path
