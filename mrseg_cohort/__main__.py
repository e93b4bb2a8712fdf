"""``python -m mrseg_cohort`` = the ``mrseg-cohort`` command."""

from mrseg_cohort.cli import app

app()
