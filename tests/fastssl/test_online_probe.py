"""The online linear probe: the backbone's gradients and the whole run are bit-identical with it on
and off, it learns on its own optimiser, unlabelled images are left out, it is scored in the epoch
summaries, and --resume stays bit-exact with it on."""

import copy
import math

import pytest
import torch

import pipelines
from fastssl import checkpoint as ckpt
from fastssl import online_probe
from fastssl.config import parse
from fastssl.methods import METHODS
from fastssl.pretrain import PretrainConfig
from fastssl.step import TrainStep
from fastssl.train import train

TINY = [
    "--dataset",
    "cifar10-sample",
    "--subset",
    "64",
    "--batch-size",
    "32",
    "--proj-hidden-dim",
    "64",
    "--proj-dim",
    "32",
    "--no-progress",
    "--no-compile",
    "--device",
    "cpu",
    "--log-interval",
    "1",
    "--knn-every",
    "1",
]


def make(method="simclr"):
    cfg = parse(PretrainConfig, ["--method", method, "--proj-hidden-dim", "64", "--proj-dim", "32"])
    torch.manual_seed(0)
    return METHODS[cfg.method](cfg, 10)


def batch(labels, seed=0):
    x = torch.randn(len(labels), 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return pipelines.Batch(x, x.flip(-1), labels)


class Interrupt(Exception):
    pass


def run(tmp_path, *extra, name="run"):
    argv = TINY + ["--out", str(tmp_path / name), *extra]
    return train(parse(PretrainConfig, argv), argv), tmp_path / name


def summaries(run_dir):
    return [r for r in ckpt.read_jsonl(run_dir / "metrics.jsonl") if r.get("summary")]


@pytest.mark.parametrize("method", ["simclr", "supervised", "autoencoder", "dim"])
def test_backbone_gradients_are_bit_identical_with_the_probe(method):
    b = batch(torch.tensor([0, 1, 2, 3, 4, 5, 6, 7]))
    plain = make(method)
    probed = online_probe.Probed(copy.deepcopy(plain), 10)
    torch.manual_seed(1)  # the methods that draw noise (autoencoder, DIM's prior) draw the same
    plain(b)[0].backward()
    torch.manual_seed(1)
    probed(b)[0].backward()
    for (name, p), q in zip(plain.backbone.named_parameters(), probed.method.backbone.parameters()):
        assert torch.equal(p.grad, q.grad), name
    assert probed.probe.weight.grad.abs().sum() > 0


def test_probe_learns_on_its_own_optimiser_and_ignores_unlabelled_images():
    labels = torch.tensor([3, -1, 3, 7, -1, 7, 3, 7])
    b = batch(labels)
    model, probe_opt = online_probe.build(make(), 10)
    frozen = torch.optim.SGD(model.method.parameters(), lr=0.0)  # the backbone stays put
    sched = torch.optim.lr_scheduler.LambdaLR(frozen, lambda s: 1.0)
    step = TrainStep(model, frozen, sched, "cpu", bf16=False, probe_optimizer=probe_opt)
    first = step(b)["online_loss"].item()
    assert first == pytest.approx(math.log(10), rel=1e-6)  # zero-initialised: uniform over the 10 classes
    for _ in range(30):
        last = step(b)["online_loss"].item()
    assert last < 0.5 * first
    # Unlabelled images change nothing: the same loss with them removed from the batch.
    keep = labels >= 0
    only = pipelines.Batch(b.view1[keep], b.view2[keep], labels[keep])
    model.eval()  # BatchNorm on running statistics: the features do not depend on the batch
    assert model(b)[1]["online_loss"] == pytest.approx(model(only)[1]["online_loss"].item(), rel=1e-5)


def test_probe_traces_into_the_one_compiled_step_without_a_graph_break():
    model, probe_opt = online_probe.build(make(), 10)
    opt = torch.optim.SGD(model.method.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    step = TrainStep(
        model, opt, sched, "cpu", bf16=False, compile=True, backend="eager", probe_optimizer=probe_opt
    )  # fullgraph: a graph break would raise
    logs = step(batch(torch.tensor([0, 1, 2, 3, -1, 5, 6, 7])))
    assert set(logs) == {"loss", "online_loss"} and model.probe.weight.abs().sum() > 0


def test_a_run_is_bit_identical_with_the_probe_off_and_scores_it_when_on(tmp_path):
    _, on = run(tmp_path, "--epochs", "2", name="on")
    _, off = run(tmp_path, "--epochs", "2", "--no-online-probe", name="off")
    a = torch.load(on / "last.pt", weights_only=False)
    b = torch.load(off / "last.pt", weights_only=False)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert "probe" in a and "probe" not in b
    s_on, s_off = summaries(on), summaries(off)
    assert [r["epoch_loss"] for r in s_on] == [r["epoch_loss"] for r in s_off]
    assert [r["val_knn_top1"] for r in s_on] == [r["val_knn_top1"] for r in s_off]
    assert not any("online" in k for r in s_off for k in r)
    for r in s_on:
        assert 0 <= r["val_online_top1"] <= r["val_online_top5"] <= 100
    # The probe's weights moved from zero between the two scores.
    assert a["probe"]["weight"].abs().sum() > 0


def test_resume_with_the_probe_is_bit_exact(tmp_path, monkeypatch):
    common = ["--epochs", "2"]
    run(tmp_path, *common, name="straight")
    real_build = pipelines.build

    def build_that_stops(*a, **kw):  # a crash right after epoch 0's checkpoint
        loader = real_build(*a, **kw)
        set_epoch = loader.set_epoch

        def stop_at_1(e):
            if e == 1 and kw.get("recipe") != "eval":
                raise Interrupt
            set_epoch(e)

        loader.set_epoch = stop_at_1
        return loader

    monkeypatch.setattr(pipelines, "build", build_that_stops)
    with pytest.raises(Interrupt):
        run(tmp_path, *common, name="resumed")
    monkeypatch.setattr(pipelines, "build", real_build)
    run(tmp_path, *common, "--resume", name="resumed")
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)
    assert all(torch.equal(a["probe"][k], b["probe"][k]) for k in a["probe"])
    assert a["probe_optimizer"]["state"][0]["step"] == b["probe_optimizer"]["state"][0]["step"]
    keys = ("epoch_loss", "epoch_online_loss", "val_online_top1", "val_online_top5")
    straight, resumed = summaries(tmp_path / "straight"), summaries(tmp_path / "resumed")
    assert [[r[k] for k in keys] for r in straight] == [[r[k] for k in keys] for r in resumed]
