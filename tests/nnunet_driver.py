"""nnU-Net's own ``predict_from_files`` in a process of its own, and the helper the tests call.

nnU-Net forks worker pools; forking the test process (which holds Ray's threads) can deadlock, so
the reference prediction runs here, in a fresh interpreter.

    python tests/nnunet_driver.py MODEL_DIR FOLDS MIRRORING IN_DIR OUT_DIR
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def predict_from_files(model_dir: Path, folds: tuple, in_dir: Path, out_dir: Path, mirroring: bool = False) -> None:
    """Run nnU-Net's predictor on every ``*_0000.nii.gz`` of ``in_dir`` into ``out_dir`` (CPU)."""
    done = subprocess.run([sys.executable, __file__, str(model_dir), ",".join(map(str, folds)), str(int(mirroring)),
                           str(in_dir), str(out_dir)], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"nnU-Net's predictor failed:\n{done.stderr[-3000:]}")


def main() -> None:
    model_dir, folds, mirroring, in_dir, out_dir = sys.argv[1:]
    from mrseg_cohort.segmentation.model_folder import make_nnunet_predictor, open_model_folder

    fold_ids = tuple(int(f) if f.isdigit() else f for f in folds.split(","))
    predictor = make_nnunet_predictor(open_model_folder(model_dir, fold_ids), "cpu", use_mirroring=mirroring == "1")
    predictor.predict_from_files(in_dir, out_dir, save_probabilities=False, overwrite=True,
                                 num_processes_preprocessing=1, num_processes_segmentation_export=1)


if __name__ == "__main__":
    main()
