"""bench/fidelity.py's core on a few generated images: our kernels against the reference's
PIL path (targets of issue 13; the kernels are in fact bit-exact)."""
from __future__ import annotations

import numpy as np
import pytest

from bench import fidelity, synthetic_images

pytestmark = pytest.mark.own_process  # calls numba kernels directly: tests/own_process.py

TARGETS = {"brightness": 0.1, "contrast": 0.1, "saturation": 0.1, "hue": 0.5,
           "blur sigma 0.1": 0.5, "blur sigma 1": 0.5, "blur sigma 2": 0.5,
           "grayscale": 0.1, "solarize": 0.0}


@pytest.fixture(scope="module")
def results() -> dict[str, tuple[float, int]]:
    rng = np.random.default_rng(5)
    images = [synthetic_images.photo_like(rng, int(h), int(w))
              for h, w in zip(rng.integers(60, 120, 4), rng.integers(70, 140, 4))]
    images.append(synthetic_images.photo_like(rng, 7, 3))  # narrower than a blur box: all border
    return fidelity.fidelity(images)


@pytest.mark.parametrize("prefix,target", list(TARGETS.items()))
def test_mean_abs_difference_to_pil_meets_target(results, prefix, target):
    matches = [name for name in results if name.startswith(prefix)]
    assert len(matches) == 1, (prefix, list(results))
    mean, _ = results[matches[0]]
    assert mean <= target, (matches[0], mean)


def test_worst_line_skips_resize_and_reports_the_largest(results):
    name, mean = fidelity.worst_mean(results)
    assert not name.startswith("resize")
    assert mean == max(m for n, (m, _) in results.items() if not n.startswith("resize"))
    assert results["resize"][0] > 0  # INTER_AREA vs bicubic: a stated, measured difference


def test_loader_ops_equal_pil_with_their_own_draws():
    """End to end through the FFCV code (compiled as in the loader, fastmath included): each
    jittered or blurred view equals the reference's PIL call with the op's own parameters."""
    from ffcv.pipeline.compiler import Compiler
    from PIL import Image, ImageFilter
    from torchvision.transforms import _functional_pil as F_pil

    from ffcv_bt.augment.blur import RandomGaussianBlurViews
    from ffcv_bt.augment.color_jitter import RandomColorJitterViews
    from ffcv_bt.augment.rng import EpochSeed

    rng = np.random.default_rng(2)
    n = 120
    batch = np.stack([np.stack([synthetic_images.photo_like(rng, 20, 26) for _ in range(2)])
                      for _ in range(n)])
    samples = np.arange(n, dtype=np.uint64) * 3
    parts = [F_pil.adjust_brightness, F_pil.adjust_contrast, F_pil.adjust_saturation,
             F_pil.adjust_hue]
    seed = EpochSeed(8)
    was_enabled = Compiler.is_enabled
    Compiler.set_enabled(True)
    try:
        for op in (RandomColorJitterViews((1.0, 1.0), seed, 0.4, 0.4, 0.2, 0.1),
                   RandomGaussianBlurViews((1.0, 1.0), seed, (0.1, 2.0))):
            out = op.generate_code()(batch.copy(), None, samples)
            draws = op.draws(samples)
            for i in range(n):
                for v in range(2):
                    params = draws[i, v, 1:]
                    image = Image.fromarray(batch[i, v])
                    if isinstance(op, RandomColorJitterViews):
                        for part in params[4:].astype(int):
                            image = parts[part](image, float(params[part]))
                    else:
                        image = image.filter(ImageFilter.GaussianBlur(float(params[0])))
                    np.testing.assert_array_equal(out[i, v], np.asarray(image))
    finally:
        Compiler.set_enabled(was_enabled)
