"""Runs MRSegmentator's own infer() in a process of its own (it sets nnU-Net's environment and
uses multiprocessing). Usage: python tests/mrsegmentator_driver.py WEIGHTS OUTDIR FOLDS IMAGE..."""

import os
import sys


def _trainer_lookup_that_works_here() -> None:
    """nnU-Net finds a checkpoint's trainer class by importing every trainer module; beside a CPU-only
    torch one of them (timm -> torchvision) fails to import, so MRSegmentator's own weights
    (``nnUNetTrainerNoMirroring``) could not load here. Where nnU-Net's lookup fails, the class is
    taken from the one module that defines it (the same class: only the search differs)."""
    import nnunetv2.inference.predict_from_raw_data as predict

    from mrseg_cohort.segmentation.model_folder import find_trainer_class

    nnunets_lookup = predict.recursive_find_trainer_class_by_name

    def lookup(trainer_name, *args, **kwargs):
        try:
            return nnunets_lookup(trainer_name, *args, **kwargs)
        except Exception:
            return find_trainer_class(trainer_name)

    predict.recursive_find_trainer_class_by_name = lookup


def main() -> None:
    weights, outdir, folds, *images = sys.argv[1:]
    os.environ["MRSEG_WEIGHTS_PATH"] = weights  # a model folder (plans.json at its root): "legacy mode"
    from mrsegmentator.inference import infer

    _trainer_lookup_that_works_here()
    infer(images, outdir, folds=tuple(int(f) for f in folds.split(",")), cpu_only=True, nproc=1,
          nproc_export=1, allow_tqdm=False, batchsize=len(images))


if __name__ == "__main__":
    main()
