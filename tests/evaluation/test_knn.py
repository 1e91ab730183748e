"""Weighted kNN on frozen features against a brute-force computation, and its edge cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ffcv_bt.evaluation.knn import extract_features, knn_accuracy, knn_predict


def brute_force_scores(train: np.ndarray, labels: np.ndarray, queries: np.ndarray,
                       num_classes: int, k: int, temperature: float) -> np.ndarray:
    """One query at a time: cosine to every train row, a full sort, votes of the first k."""
    out = np.zeros((len(queries), num_classes))
    for qi, q in enumerate(queries):
        sims = []
        for t in train:
            sims.append(float(np.dot(q, t) / (np.linalg.norm(q) * np.linalg.norm(t))))
        order = np.argsort(sims)[::-1]
        for j in order[:k]:
            out[qi, labels[j]] += math.exp(sims[j] / temperature)
    return out


def random_problem(n: int = 60, q: int = 23, d: int = 8, classes: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)), rng.integers(0, classes, size=n), rng.normal(size=(q, d)))


@pytest.mark.parametrize("k,temperature", [(1, 0.07), (7, 0.07), (20, 0.5)])
def test_matches_brute_force(k, temperature):
    train, labels, queries = random_problem()
    want = brute_force_scores(train, labels, queries, 5, k, temperature)
    got = knn_predict(torch.from_numpy(train), torch.from_numpy(labels), torch.from_numpy(queries),
                      5, k=k, temperature=temperature)
    assert got.dtype == torch.float64 and got.shape == (23, 5)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=0)


def test_float32_matches_brute_force_and_feature_scale_is_irrelevant():
    train, labels, queries = random_problem(seed=1)
    want = brute_force_scores(train, labels, queries, 5, 20, 0.07)
    got = knn_predict(torch.from_numpy(train * 7.5).float(), torch.from_numpy(labels),
                      torch.from_numpy(queries * 0.01).float(), 5)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, rtol=2e-4)


def test_separable_clusters_classify_perfectly():
    rng = np.random.default_rng(0)
    classes, d = 6, 32
    centres = rng.normal(size=(classes, d)) * 3
    train_labels = np.repeat(np.arange(classes), 50)
    query_labels = np.repeat(np.arange(classes), 20)
    train = centres[train_labels] + rng.normal(size=(len(train_labels), d))
    queries = centres[query_labels] + rng.normal(size=(len(query_labels), d))
    top1, top5 = knn_accuracy(torch.from_numpy(train).float(), torch.from_numpy(train_labels),
                              torch.from_numpy(queries).float(), torch.from_numpy(query_labels),
                              classes, k=20, temperature=0.07)
    assert top1 == 100.0 and top5 == 100.0


def test_temperature_weighting_overrules_the_majority():
    """Two very close neighbours of class 1 against three distant ones of class 0."""
    query = torch.tensor([[1.0, 0.0]])
    near = [math.radians(5), math.radians(-5)]     # cosine 0.996
    far = [math.radians(60), math.radians(-60), math.radians(61)]  # cosine ~0.5
    angles = torch.tensor(near + far, dtype=torch.float64)
    train = torch.stack([angles.cos(), angles.sin()], dim=1)
    labels = torch.tensor([1, 1, 0, 0, 0])
    sharp = knn_predict(train, labels, query.double(), 2, k=5, temperature=0.07)
    flat = knn_predict(train, labels, query.double(), 2, k=5, temperature=1e6)
    assert sharp.argmax().item() == 1  # the weighted vote
    assert flat.argmax().item() == 0   # ~ a plain majority vote
    expected = [sum(math.exp(math.cos(a) / 0.07) for a in angles[2:].tolist()),
                sum(math.exp(math.cos(a) / 0.07) for a in near)]
    torch.testing.assert_close(sharp[0], torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-12, atol=0)


def test_k_larger_than_the_train_set_uses_every_row():
    train, labels, queries = random_problem(n=4, q=5)
    got = knn_predict(torch.from_numpy(train), torch.from_numpy(labels), torch.from_numpy(queries),
                      5, k=20, temperature=0.1)
    want = brute_force_scores(train, labels, queries, 5, 4, 0.1)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=0)


def test_ties():
    # duplicated train rows with one label: whichever duplicates topk keeps, the vote is equal
    train = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([2, 2, 2, 0])
    scores = knn_predict(train, labels, torch.tensor([[1.0, 0.1]], dtype=torch.float64), 3, k=2,
                         temperature=0.1)
    cos = 1 / math.sqrt(1.01)
    torch.testing.assert_close(scores[0], torch.tensor([0, 0, 2 * math.exp(cos / 0.1)],
                                                       dtype=torch.float64), rtol=1e-12, atol=0)
    # equal class scores: the lower class index ranks first
    train = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    top1, top5 = knn_accuracy(train, torch.tensor([3, 1]), torch.tensor([[1.0, 0.0]] * 2),
                              torch.tensor([1, 3]), 4, k=2)
    assert (top1, top5) == (50.0, 100.0)


@pytest.mark.parametrize("chunk_size", [1, 4, 23, 1000])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chunking_gives_the_unchunked_result(chunk_size, dtype):
    train, labels, queries = random_problem(n=200, q=23, d=16)
    args = (torch.from_numpy(train).to(dtype), torch.from_numpy(labels),
            torch.from_numpy(queries).to(dtype), 5)
    whole = knn_predict(*args, chunk_size=10**6)
    chunked = knn_predict(*args, chunk_size=chunk_size)
    # float32: a 1-ulp change of a similarity is amplified by 1/temperature in exp()
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(chunked, whole, rtol=rtol, atol=0)
    assert torch.equal(chunked.argmax(dim=1), whole.argmax(dim=1))


def test_bad_arguments_are_named():
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="feature dimensions"):
        knn_predict(x, y, torch.randn(2, 5), 2)
    with pytest.raises(ValueError, match="train_labels"):
        knn_predict(x, y[:3], torch.randn(2, 3), 2)
    with pytest.raises(ValueError, match="temperature"):
        knn_predict(x, y, torch.randn(2, 3), 2, temperature=0.0)


def test_extract_features_frozen_eval_fp32_and_copied_out_of_reused_buffers():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Dropout(0.5)).train()
    backbone[1].running_mean.fill_(0.3)  # eval mode must use these statistics
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    images = torch.randn(3, 5, 6)
    image_buffer = torch.empty(5, 6, dtype=torch.float16)
    label_buffer = torch.empty(5, 1, dtype=torch.int32)

    def reused_buffers():  # as FFCV does: the same tensors, overwritten for each batch
        for i in range(3):
            image_buffer.copy_(images[i])
            label_buffer.fill_(i)
            yield image_buffer, label_buffer

    features, labels = extract_features(backbone, reused_buffers(), "cpu")
    assert backbone.training  # mode restored
    assert features.dtype == torch.float32 and features.shape == (15, 4)
    assert labels.dtype == torch.int64 and labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert not features.requires_grad
    backbone.eval()
    with torch.no_grad():
        want = backbone(images.half().float().reshape(15, 6))
    torch.testing.assert_close(features, want, rtol=1e-6, atol=1e-6)  # batch-size dependent matmul
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, before[k]), k  # BN statistics did not move
