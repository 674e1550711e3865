"""The config layer: flags, TOML, precedence, and user errors as ConfigError."""

import pytest

from fastssl.config import ConfigError, parse
from fastssl.pretrain import PretrainConfig


def test_defaults_and_flags():
    cfg = parse(PretrainConfig, ["--epochs", "3", "--no-progress", "--compile", "--subset", "100"])
    assert cfg.epochs == 3 and cfg.progress is False and cfg.compile is True and cfg.subset == 100
    assert parse(PretrainConfig, []).compile is None  # auto


def test_toml_then_flags(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("epochs = 7\ntemperature = 0.5\nbatch-size = 64\n")
    cfg = parse(PretrainConfig, ["--config", str(f), "--epochs", "9"])
    assert (cfg.epochs, cfg.temperature, cfg.batch_size) == (9, 0.5, 64)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--epochs", "0"], "epochs"),
        (["--epochs", "two"], "integer"),
        (["--pipeline", "magic"], "gpu"),  # the valid choices are listed
        (["--dataset", "mnist"], "cifar10"),
        (["--no-such-flag", "1"], "unrecognized"),
        (["--lr", "-1"], "lr"),
        (["--resume", "--overwrite"], "contradict"),
    ],
)
def test_bad_flags(argv, words):
    with pytest.raises(ConfigError, match=words):
        parse(PretrainConfig, argv)


def test_toml_errors(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("epochz = 7\n")
    with pytest.raises(ConfigError, match="unknown key.*valid keys"):
        parse(PretrainConfig, ["--config", str(f)])
    f.write_text('epochs = "many"\n')
    with pytest.raises(ConfigError, match="integer"):
        parse(PretrainConfig, ["--config", str(f)])
    f.write_text("epochs = = 7\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse(PretrainConfig, ["--config", str(f)])
    with pytest.raises(ConfigError, match="not found"):
        parse(PretrainConfig, ["--config", str(tmp_path / "missing.toml")])
