"""The autoencoder and Deep InfoMax methods: their losses from the definitions, the prior game's
signs inside the method, every parameter trained, and the loss going down on a tiny real run."""

import pytest
import torch
import torch.nn.functional as F

import pipelines
from fastssl import checkpoint as ckpt
from fastssl.config import parse
from fastssl.losses import infonce_mi, jsd_mi, prior_matching_loss
from fastssl.methods import METHODS
from fastssl.models import Decoder, resnet18, resnet50
from fastssl.pretrain import PretrainConfig, main
from fastssl.train import train

TINY = [
    "--dataset",
    "cifar10-sample",
    "--subset",
    "256",
    "--batch-size",
    "128",
    "--stem",
    "imagenet",
    "--no-progress",
    "--no-compile",
    "--device",
    "cpu",
    "--log-interval",
    "1",
    "--knn-every",
    "0",
    "--optimizer",
    "adamw",
    "--lr",
    "0.004",
    "--warmup-epochs",
    "0",
]


def make(*flags):
    cfg = parse(PretrainConfig, list(flags))
    torch.manual_seed(0)
    return METHODS[cfg.method](cfg, 10)


def batch(n=6, size=32, seed=0):
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return pipelines.Batch(x, x.clone(), torch.zeros(n, dtype=torch.long))


def test_registered_with_an_existing_recipe():
    for name in ("autoencoder", "dim"):
        assert METHODS[name].recipe in pipelines.RECIPES


@pytest.mark.parametrize("stem, size, layer3", [("cifar", 32, 8), ("imagenet", 32, 2), ("cifar", 40, 10)])
def test_layer3_tap_and_decoder_shapes(stem, size, layer3):
    net = resnet18(stem=stem).eval()
    x = torch.randn(2, 3, size, size)
    c, h = net.forward_layer3(x)
    assert c.shape == (2, 256, layer3, layer3)
    torch.testing.assert_close(h, net(x), rtol=0, atol=0)  # the tap is the same computation
    assert Decoder(512)(h, (size, size + 8)).shape == (2, 3, size, size + 8)


@pytest.mark.parametrize("noise", [0.0, 0.7])
def test_autoencoder_loss_is_mse_to_the_clean_view(noise):
    method = make("--method", "autoencoder", "--stem", "imagenet", "--ae-noise", str(noise))
    b = batch()
    torch.manual_seed(1)
    loss, logs = method(b)
    torch.manual_seed(1)  # the same noise draw, applied by hand
    noisy = b.view1 + noise * torch.randn_like(b.view1) if noise else b.view1
    want = F.mse_loss(method.decoder(method.backbone(noisy), (32, 32)), b.view1)
    torch.testing.assert_close(loss, want)
    if noise:  # the target is the clean view, not the noisy input
        wrong = F.mse_loss(method.decoder(method.backbone(noisy), (32, 32)), noisy)
        assert not torch.allclose(loss, wrong)


@pytest.mark.parametrize("estimator, fn", [("jsd", jsd_mi), ("infonce", infonce_mi)])
def test_dim_loss_from_its_terms(estimator, fn):
    method = make(
        "--method",
        "dim",
        "--stem",
        "imagenet",
        "--dim-estimator",
        estimator,
        "--dim-alpha",
        "0.5",
        "--dim-beta",
        "1",
        "--dim-gamma",
        "0.1",
    )
    torch.manual_seed(2)
    loss, logs = method(batch())
    assert loss.item() == pytest.approx(
        -0.5 * logs["mi_global"].item() - logs["mi_local"].item() + 0.1 * logs["prior_d_loss"].item(),
        rel=1e-5,
    )
    # Each logged MI term is the chosen estimator on the critic's scores.
    c, y = method.backbone.forward_layer3(batch().view1)
    scores = torch.einsum("ie,jep->ijp", method.local_y(y), method.local_c(c)) / 512**0.5
    assert logs["mi_local"].item() == pytest.approx(fn(scores).item(), rel=1e-5)


@pytest.mark.parametrize(
    "flags, absent",
    [
        ([], ("global_c", "global_y")),  # DIM(L) defaults
        (["--dim-alpha", "1", "--dim-gamma", "0"], ("prior_code", "discriminator")),
    ],
)
def test_every_parameter_gets_a_gradient(flags, absent):
    # DistributedDataParallel fails on parameters without gradients, so unused terms are not built.
    method = make("--method", "dim", "--stem", "imagenet", *flags)
    assert not any(hasattr(method, name) for name in absent)
    method(batch())[0].backward()
    assert all(p.grad is not None for p in method.parameters())


def test_prior_matching_signs_inside_the_method():
    """The one backward gives the discriminator the gradient of gamma L_D and the encoder's prior
    code the gradient of -gamma L_D: D is trained to discriminate, the encoder to confuse it."""
    gamma = 0.1
    method = make("--method", "dim", "--stem", "imagenet", "--dim-gamma", str(gamma))
    b = batch()
    torch.manual_seed(3)
    method(b)[0].backward()
    torch.manual_seed(3)  # the same prior sample, the game's loss without any reversal
    _, y = method.backbone.forward_layer3(b.view1)
    code = torch.sigmoid(method.prior_code(y))
    d = method.discriminator
    d_loss = gamma * prior_matching_loss(d(torch.rand_like(code)).squeeze(1), d(code).squeeze(1))
    w_code, w_disc = method.prior_code.weight, d[0].weight
    g_code, g_disc = torch.autograd.grad(d_loss, [w_code, w_disc])
    torch.testing.assert_close(w_code.grad, -g_code)
    torch.testing.assert_close(w_disc.grad, g_disc)


@pytest.mark.parametrize(
    "bad",
    [
        ["--dim-gamma", "-0.1"],
        ["--ae-noise", "-1"],
        ["--method", "dim", "--dim-alpha", "0", "--dim-beta", "0"],
        ["--dim-estimator", "mine"],
    ],
)
def test_bad_flags_exit_2(tmp_path, capsys, bad):
    with pytest.raises(SystemExit) as e:
        main(TINY + ["--out", str(tmp_path / "x"), *bad])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error:") and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "flags",
    [
        ["--method", "autoencoder", "--ae-noise", "0.5"],
        ["--method", "dim"],
        ["--method", "dim", "--dim-estimator", "infonce"],
    ],
    ids=["denoising-autoencoder", "dim-jsd", "dim-infonce"],
)
def test_loss_goes_down_on_a_tiny_real_run(tmp_path, monkeypatch, flags):
    monkeypatch.delenv("FASTSSL_DATA", raising=False)
    argv = TINY + ["--epochs", "2", "--out", str(tmp_path / "run"), *flags]
    train(parse(PretrainConfig, argv), argv)
    epochs = [r for r in ckpt.read_jsonl(tmp_path / "run" / "metrics.jsonl") if r.get("summary")]
    assert len(epochs) == 2 and epochs[1]["epoch_loss"] < epochs[0]["epoch_loss"]
    assert (tmp_path / "run" / "backbone.pt").is_file()


@pytest.mark.parametrize("method", ["simclr", "supervised", "autoencoder", "dim"])
def test_heads_size_themselves_from_a_resnet50(method):
    """Projector, classifier, decoder and DIM critics read 2048 / 1024 from the backbone; one
    training step on 16px images updates every parameter."""
    m = make("--method", method, "--backbone", "resnet50", "--stem", "imagenet", "--dim-alpha", "1")
    first = {
        "simclr": lambda: m.head.net[0],
        "supervised": lambda: m.classifier,
        "autoencoder": lambda: m.decoder.fc,
        "dim": lambda: m.local_y.net[0],
    }[method]()
    assert isinstance(m.backbone, type(resnet50())) and m.backbone.layer4[0].conv3.out_channels == 2048
    assert first.in_features == 2048
    if method == "dim":
        assert m.local_c.net[0].in_channels == m.global_c.conv[0].in_channels == 1024
    b = batch(n=4, size=16)
    b.labels = torch.arange(4)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    before = [p.detach().clone() for p in m.parameters()]
    loss, _ = m(b)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    moved = [not torch.equal(p0, p) for p0, p in zip(before, m.parameters())]
    assert all(moved), [n for (n, _), mv in zip(m.named_parameters(), moved) if not mv][:3]


def test_resnet50_run_round_trips_through_its_checkpoints(tmp_path, monkeypatch):
    tv = pytest.importorskip("torchvision")
    monkeypatch.delenv("FASTSSL_DATA", raising=False)
    out = tmp_path / "run"
    argv = TINY + [
        "--subset",
        "32",
        "--batch-size",
        "16",
        "--epochs",
        "1",
        "--backbone",
        "resnet50",
        "--proj-hidden-dim",
        "64",
        "--out",
        str(out),
    ]  # later flags override TINY's
    train(parse(PretrainConfig, argv), argv)
    state = ckpt.load_training_state(str(out / "last.pt"))
    assert state["config"]["backbone"] == "resnet50"
    for path in (out, out / "last.pt", out / "backbone.pt"):
        net, info = ckpt.load_network(str(path))
        assert info["arch"] == "resnet50" and info["stem"] == "imagenet" and net.feature_dim == 2048
        want = {k[len("backbone.") :]: v for k, v in state["model"].items() if k.startswith("backbone.")}
        assert net.state_dict().keys() == want.keys() and all(
            torch.equal(net.state_dict()[k], want[k]) for k in want
        )
    missing, unexpected = tv.models.resnet50().load_state_dict(torch.load(out / "backbone.pt"), strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
