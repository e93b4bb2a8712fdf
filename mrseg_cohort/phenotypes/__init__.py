"""Phenotypes for epidemiology: the per-participant phenotype table, covariate-aware QC (height
indexing, robust z-scores within sex and age bands, outliers) and change between visits.

Pure functions over pandas frames of the published tables; reading and writing is the CLI's
(through :mod:`mrseg_cohort.io`). Rules and columns: docs/tables.md.
"""

from mrseg_cohort.phenotypes.catalogue import PHENOTYPES, QC_REASONS, Phenotype
from mrseg_cohort.phenotypes.derive import phenotype_table

__all__ = ["PHENOTYPES", "QC_REASONS", "Phenotype", "phenotype_table"]
