"""``python -m mrseg_cohort.cli`` = the ``mrseg-cohort`` command."""

from mrseg_cohort.cli import app

app()
