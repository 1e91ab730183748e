"""Barlow Twins augmentations as numba-compiled FFCV operations, one per module.

``crop_decoder`` decodes each JPEG once and cuts the views; ``flip``, ``color_jitter``,
``grayscale``, ``blur`` and ``solarize`` act in place on (B, V, H, W, 3) uint8 batches with
per-view probabilities; ``rng`` makes every random draw a function of
(seed, epoch, sample, view, op); ``view_op`` is their common base class.
"""

import hashlib
import os
from pathlib import Path

import numba


def code_keyed_cache_dir() -> str:
    """numba's on-disk cache folder for this version of the ops: ``<base>/<sha of ops/*.py>``.

    The ops compile with ``cache=True`` and inline helpers across files (``fused`` calls the
    colour, blur and grayscale kernels). numba invalidates a cached function only when its
    own file changes, so after an update of a helper's file a stale cached caller would
    compute with the old helper, silently. Keying the folder by the source of every op file
    makes any change start a fresh cache. ``<base>`` is the user's NUMBA_CACHE_DIR if set,
    else ~/.cache/ffcv-bt/numba.
    """
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    base = os.environ.get("NUMBA_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "ffcv-bt", "numba")
    return os.path.join(base, digest.hexdigest()[:16])


# Before any op module is imported: their @njit(cache=True) decorators read it.
numba.config.CACHE_DIR = code_keyed_cache_dir()
