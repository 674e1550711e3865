"""Weighted kNN against a brute-force reference; top-k accuracy on hand-made scores."""

import torch

from fastssl.eval.knn import knn_predict, topk_accuracy


def reference_knn(train_f, train_y, test_f, num_classes, k, t):
    train_f = train_f / train_f.norm(dim=1, keepdim=True)
    out = []
    for q in test_f / test_f.norm(dim=1, keepdim=True):
        sims = [(float(q @ x), int(y)) for x, y in zip(train_f, train_y)]
        sims.sort(key=lambda s: -s[0])
        scores = [0.0] * num_classes
        for s, y in sims[:k]:
            scores[y] += torch.tensor(s / t, dtype=torch.float64).exp().item()
        out.append(scores)
    return torch.tensor(out, dtype=torch.float64)


def test_knn_matches_reference():
    g = torch.Generator().manual_seed(0)
    train_f, test_f = torch.randn(60, 8, generator=g), torch.randn(13, 8, generator=g)
    train_y = torch.randint(0, 4, (60,), generator=g)
    got = knn_predict(train_f, train_y, test_f, 4, k=7, t=0.1, chunk=5)
    want = reference_knn(train_f.double(), train_y, test_f.double(), 4, 7, 0.1)
    assert torch.allclose(got.double(), want, rtol=1e-4)


def test_knn_separable_clusters():
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(5, 16, generator=g) * 10
    y = torch.arange(200) % 5
    f = centers[y] + torch.randn(200, 16, generator=g)
    acc = topk_accuracy(knn_predict(f[:150], y[:150], f[150:], 5, k=20), y[150:])
    assert acc["top1"] == 100.0


def test_topk_accuracy_hand_made():
    scores = torch.tensor(
        [
            [0.1, 0.9, 0.0, 0.0, 0.0, 0.0],  # label 1: top-1 hit
            [0.5, 0.4, 0.3, 0.2, 0.1, 0.05],  # label 4: top-5 hit only
            [0.5, 0.4, 0.3, 0.2, 0.1, 0.05],
        ]
    )  # label 5: miss
    acc = topk_accuracy(scores, torch.tensor([1, 4, 5]))
    assert abs(acc["top1"] - 100 / 3) < 1e-4 and abs(acc["top5"] - 200 / 3) < 1e-4


def test_unlabelled_training_images_do_not_vote():
    import numpy as np

    from fastssl.eval.knn import knn_eval
    from pipelines.data.arrays import UNLABELLED, ArrayDataset

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(40) % 4
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 16))

    def make(x, y):
        return ArrayDataset(x, y, list("abcd"), "toy", (0.5,) * 3, (0.25,) * 3)

    test = make(images[30:], labels[30:])
    only_labelled = knn_eval(net, make(images[:20], labels[:20]), test, "cpu", k=5)
    with_extra = knn_eval(net, make(images[:30], np.r_[labels[:20], [UNLABELLED] * 10]), test, "cpu", k=5)
    assert with_extra == only_labelled
