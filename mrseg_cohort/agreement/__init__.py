"""Agreement of our phenotypes with a reference: UK Biobank's returned phenotypes, another tool's
table, or another mrseg-cohort output (``mrseg-cohort agreement``; docs/agreement.md).

Modules, one job each: ``statistics`` (Bland-Altman, ICC, CCC, correlations, regression lines: arrays
in, records out), ``mapping`` (which reference column pairs with which phenotype, in which unit),
``reference`` (a user's table in one long shape), ``compare`` (pairing, exclusions, strata, the
summary and outlier tables), ``files`` (where the tables are written and read back).
"""
