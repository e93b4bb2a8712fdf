"""MRSegmentator's weights the way its users have them: release zips, its cache folders, its env var.

- :mod:`.registry`: MRSegmentator's published release zips (URL, sha256);
- :mod:`.resolve`: ``weights: mrsegmentator`` -> a model folder (``MRSEG_WEIGHTS_PATH``,
  ``~/.mrsegmentator/<model>/``, MRSegmentator 1.x's package folder);
- :mod:`.fetch`: download (:mod:`mrseg_cohort.io.download`), verify, extract (:mod:`.archive`);
- :mod:`.record`: ``mrseg_cohort_weights.json``, what a fetch verified, to check the files against.
"""
