"""The monitor's collapse signals on matrices with a chosen spectrum (U diag(s) V^T, U and V
orthonormal from QR), against values worked out by hand from s, not from the formula's code."""
from __future__ import annotations

import math

import pytest
import torch

from ffcv_bt.train.monitor import collapse_messages, embedding_std, rankme


def with_spectrum(n: int, d: int, s: list[float], seed: int = 0) -> torch.Tensor:
    """An (n, d) matrix whose non-zero singular values are exactly ``s``."""
    g = torch.Generator().manual_seed(seed)
    k = len(s)
    u, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    return u @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ v.T


# s -> RankMe by hand: p = s / sum(s); exp(entropy) = prod p_i^(-p_i)
#   [4, 2, 1, 1]: p = 1/2, 1/4, 1/8, 1/8 -> entropy = (1/2 + 2/4 + 6/8) ln 2 -> 2^1.75
#   [3, 1]:       p = 3/4, 1/4 -> (4/3)^(3/4) x 4^(1/4)
#   [5]*6:        six equal values -> 6
CASES = [([4.0, 2.0, 1.0, 1.0], 2 ** 1.75), ([3.0, 1.0], (4 / 3) ** 0.75 * 4 ** 0.25),
         ([5.0] * 6, 6.0), ([7.0], 1.0)]


@pytest.mark.parametrize("s,expected", CASES)
@pytest.mark.parametrize("n,d", [(200, 32), (12, 64)])  # more rows than columns, and fewer
def test_rankme_of_a_chosen_spectrum(s, expected, n, d):
    # eps = 1e-7 added to each of the min(n, d) p's moves the result by ~5e-5 relative
    assert rankme(with_spectrum(n, d, s)) == pytest.approx(expected, rel=2e-4)
    assert rankme(with_spectrum(n, d, s).float()) == pytest.approx(expected, rel=1e-3)


def test_rankme_ignores_scale_and_uses_singular_values_not_their_squares():
    z = with_spectrum(100, 16, [4.0, 2.0, 1.0, 1.0])
    assert rankme(1000.0 * z) == pytest.approx(2 ** 1.75, rel=2e-4)
    # the squares 16, 4, 1, 1 (covariance eigenvalues) would give a smaller number
    squares = math.exp(-sum(q * math.log(q) for q in (16 / 22, 4 / 22, 1 / 22, 1 / 22)))
    assert rankme(z) - squares > 0.9


def test_rankme_does_not_centre_the_embeddings():
    # a constant offset e0 on every row plus +-e1 alternating: the columns ones and +-1 are
    # orthogonal with equal norms sqrt(50), so two equal singular values: 2 (centred: 1)
    z = torch.zeros(50, 8, dtype=torch.float64)
    z[:, 0] = 1.0
    z[:, 1] = torch.tensor([1.0, -1.0]).repeat(25)
    assert rankme(z) == pytest.approx(2.0, rel=2e-4)


def test_embedding_std_by_hand():
    # rows along +e1 or -e1 with any positive lengths: normalised, dimension 0 holds
    # 1, 1, -1, -1 (mean 0, sample variance 4/3) and the other three dimensions 0
    z = torch.tensor([[2.0, 0, 0, 0], [5.0, 0, 0, 0], [-3.0, 0, 0, 0], [-0.5, 0, 0, 0]])
    assert embedding_std(z) == pytest.approx(math.sqrt(4 / 3) / 4, rel=1e-9)
    # identical rows: complete collapse
    assert embedding_std(torch.ones(10, 4)) == 0.0
    # the d unit vectors, each once: dimension j holds one 1 and d-1 zeros,
    # sample variance (1 - 1/d) / (d - 1) = 1/d -> std 1/sqrt(d)
    assert embedding_std(torch.eye(16)) == pytest.approx(1 / 4, rel=1e-9)


@pytest.mark.parametrize("n,dim", [(100, 128), (128, 100)])
def test_collapse_rank_threshold_uses_the_smaller_of_images_and_dim(n, dim):
    # attainable rank min(n, dim) = 100; fraction 0.1 -> threshold 10, strictly below warns
    kwargs = dict(n=n, dim=dim, rank_fraction=0.1, std_threshold=0.01)
    assert collapse_messages(9.99, 0.1, **kwargs)[0].startswith("RankMe 9.99 < 0.1 x 100")
    assert collapse_messages(10.0, 0.1, **kwargs) == []
    assert collapse_messages(11.0, 0.1, **kwargs) == []  # under 0.1 x 128, above 0.1 x 100


def test_collapse_std_threshold_is_strict():
    kwargs = dict(n=100, dim=64, rank_fraction=0.1, std_threshold=0.01)
    assert collapse_messages(50.0, 0.01, **kwargs) == []
    (message,) = collapse_messages(50.0, 0.0099, **kwargs)
    assert message.startswith("embedding std 0.0099 < 0.01") and "1/sqrt(64) = 0.125" in message
