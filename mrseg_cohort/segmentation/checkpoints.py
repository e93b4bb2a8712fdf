"""Reading nnU-Net checkpoints safely: ``weights_only`` unpickling with an allowlist, bytes verified.

``torch.load(weights_only=False)`` runs whatever a pickle names (a ``__reduce__`` calling
``os.system`` is enough), so a downloaded checkpoint is unpickled with ``weights_only=True`` and an
allowlist of what nnU-Net v2 checkpoints hold besides tensors and plain containers:

- numpy scalars and dtypes (nnU-Net's trainer logs ``np.float64`` Dice values and ``_best_ema``;
  numpy 1.x pickles them as ``numpy.core.multiarray.scalar``, numpy 2 as ``numpy._core...``),
  plain numeric numpy arrays;
- ``torch.torch_version.TorchVersion`` (a ``str``; the bundled demo checkpoints hold one).

``torch.device`` (in ``init_args``), ``OrderedDict`` state dicts and ``_codecs.encode`` are already
allowed by torch. Anything else is refused with a :class:`ModelError` naming the file and the
global, unless the file's sha256 matched a checksum the user configured or ``weights fetch``
recorded (``trusted``): then, and only from the verified bytes, the full unpickler is used.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import io
import logging
import pickle
import re
from pathlib import Path
from typing import Any, Iterable

from mrseg_cohort.errors import ModelError

log = logging.getLogger(__name__)

_NUMPY_DTYPE_CLASSES = ("BoolDType", "Float16DType", "Float32DType", "Float64DType", "Int8DType", "Int16DType",
                        "Int32DType", "Int64DType", "UInt8DType", "UInt16DType", "UInt32DType", "UInt64DType")


@functools.lru_cache(maxsize=1)
def safe_globals() -> tuple:
    """The allowlist handed to ``torch.serialization.safe_globals`` (objects, or (object, name) pairs
    for the names older numpy versions pickled them under)."""
    import numpy as np
    from torch.torch_version import TorchVersion

    multiarray = importlib.import_module("numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray")
    allowed: list = [TorchVersion, np.dtype, np.ndarray]
    for name in ("scalar", "_reconstruct"):  # under both numpy 1.x and numpy 2 names
        obj = getattr(multiarray, name)
        allowed += [obj, (obj, f"numpy.core.multiarray.{name}"), (obj, f"numpy._core.multiarray.{name}")]
    allowed += [getattr(np.dtypes, n) for n in _NUMPY_DTYPE_CLASSES if hasattr(np.dtypes, n)]
    return tuple(allowed)


class _Refused(Exception):
    """The safe unpickler met a global outside the allowlist."""


def _safe_load(source: Any, mmap: bool = False) -> Any:
    import torch

    try:
        with torch.serialization.safe_globals(list(safe_globals())):
            return torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        raise _Refused(found.group(1) if found else str(err).splitlines()[0]) from None


def read_verified(path: Path, expected_sha256: str | None, hashers: Iterable[Any] = ()) -> bytes:
    """The bytes of ``path``, fed to ``hashers``; :class:`ModelError` when their sha256 is not
    ``expected_sha256`` (None: not checked)."""
    data = path.read_bytes()
    for h in hashers:
        h.update(data)
    if expected_sha256 is not None:
        found = hashlib.sha256(data).hexdigest()
        if found != expected_sha256:
            raise ModelError(f"{path}: sha256 {found[:16]}... differs from the {expected_sha256[:16]}... checked "
                             "when the job started; every node must hold the same weights (copy them again)")
    return data


def load_checkpoint(path: Path, expected_sha256: str | None = None, trusted: bool = False,
                    hashers: Iterable[Any] = ()) -> dict:
    """An nnU-Net checkpoint, read once (bytes fed to ``hashers`` and checked against
    ``expected_sha256`` before unpickling), then unpickled safely from memory.

    Args:
        path: the ``checkpoint_final.pth`` file.
        expected_sha256: the file's sha256 as checked by the driver; None: not checked.
        trusted: the file's checksum matched a configured or recorded one; lets a checkpoint that
            holds more than the allowlist be unpickled in full (only with ``expected_sha256``).

    Raises:
        ModelError: bytes differ from ``expected_sha256``, or the safe unpickler refused the file.
    """
    data = read_verified(path, expected_sha256, hashers)
    try:
        return _safe_load(io.BytesIO(data))
    except _Refused as refused:
        return _unsafe_if_trusted(path, data, str(refused), trusted and expected_sha256 is not None)


def checkpoint_meta_source(path: Path, expected_sha256: str | None = None, trusted: bool = False) -> dict:
    """The checkpoint, cheaply: memory-mapped, so only its pickle is read (tensors stay on disk).
    Falls back to :func:`load_checkpoint` (verified bytes) where the safe unpickler refuses it."""
    try:
        return _safe_load(str(path), mmap=True)
    except _Refused:
        return load_checkpoint(path, expected_sha256, trusted)
    except RuntimeError:  # not a zip-format checkpoint: cannot be memory-mapped
        return load_checkpoint(path, expected_sha256, trusted)


def _unsafe_if_trusted(path: Path, data: bytes, refused: str, trusted: bool) -> dict:
    if not trusted:
        raise ModelError(f"{path}: refused by the safe checkpoint loader: it holds {refused}, which an nnU-Net "
                         "checkpoint does not need (unpickling it can run code); if you trust this file, set "
                         "model.checksum to the output of `mrseg-cohort weights checksum` for its folder")
    import torch

    log.warning("%s holds %s (outside the safe allowlist); loading it in full because its sha256 matched "
                "the configured/recorded checksum", path, refused)
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
