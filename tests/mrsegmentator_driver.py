"""Runs MRSegmentator's own infer() in a process of its own (it sets nnU-Net's environment and
uses multiprocessing). Usage: python tests/mrsegmentator_driver.py WEIGHTS OUTDIR FOLDS IMAGE..."""

import os
import sys


def main() -> None:
    weights, outdir, folds, *images = sys.argv[1:]
    os.environ["MRSEG_WEIGHTS_PATH"] = weights  # a model folder (plans.json at its root): "legacy mode"
    from mrsegmentator.inference import infer

    infer(images, outdir, folds=tuple(int(f) for f in folds.split(",")), cpu_only=True, nproc=1,
          nproc_export=1, allow_tqdm=False, batchsize=len(images))


if __name__ == "__main__":
    main()
