"""Generated bad command lines and TOML files for every command: each ends in exit code 2 with
at most 3 lines on stderr, names the offending setting, and raises nothing else (an exception
other than SystemExit would fail the test with its traceback)."""

import dataclasses
import random
import typing

import pytest

from fastssl import convert, pretrain
from fastssl.config import _base_type
from fastssl.eval import embed, knn, linear  # the commands' code (fastssl.knn etc. are entry points)

COMMANDS = {  # command -> (main, config class, flags a valid command line needs)
    "pretrain": (pretrain.main, pretrain.PretrainConfig, []),
    "linear": (linear.main, linear.LinearConfig, ["--backbone", "random"]),
    "knn": (knn.main, knn.KNNConfig, ["--backbone", "random"]),
    "embed": (
        embed.main,
        embed.EmbedConfig,
        ["--backbone", "random", "--dataset", "cifar10-sample", "--out", "/nonexistent/never-written.npz"],
    ),
    "convert": (convert.main, convert.ConvertConfig, ["--to", "dali", "--out", "/nonexistent/never-written"]),
}
BAD_INT = ["nan", "inf", "1.5", "abc", "", "1e3", "--"]
BAD_FLOAT = ["nan", "inf", "-inf", "NaN", "1e999", "abc", "", "0x"]
BAD_TOML = ["= 1", "key = ", "[[x", "a = 'unclosed"]


def numeric_fields(cls):
    hints = typing.get_type_hints(cls)
    return [
        (f.name, _base_type(hints[f.name])[0])
        for f in dataclasses.fields(cls)
        if _base_type(hints[f.name])[0] in (int, float)
    ]


def cases():
    rng, out = random.Random(0), []
    for command, (_, cls, required) in COMMANDS.items():
        for name, kind in numeric_fields(cls):
            flag = "--" + name.replace("_", "-")
            value = rng.choice(BAD_INT if kind is int else BAD_FLOAT)
            out.append((command, ("argv", [*required, flag, value]), name))
            toml = rng.choice(
                [
                    f"{name} = nan",
                    f"{name} = inf",
                    f"{name} = -inf",
                    f"{name} = 'x'",
                    f"{name} = [1, 2]",
                    f"{name} = true",
                ]
            )
            if kind is int:
                toml = rng.choice([toml.replace("nan", "1.5"), f"{name} = 'x'", f"{name} = [1]"])
            out.append((command, ("toml", required, toml.encode()), name))
        out.append((command, ("argv", [*required, "--no-such-flag", "1"]), "no-such-flag"))
        out.append((command, ("toml", required, b"no_such_key = 1"), "no_such_key"))
        out.append((command, ("toml", required, rng.choice(BAD_TOML).encode()), "TOML"))
        out.append(
            (command, ("toml", required, bytes(rng.randrange(256) for _ in range(64)) + b"\xff"), "TOML")
        )
        out.append((command, ("dir", required), "directory"))
    out.append(("linear", ("argv", ["--backbone", "random", "--lrs", "0.1,nan"]), "lrs"))
    out.append(("linear", ("argv", ["--backbone", "random", "--wds", "inf"]), "wds"))
    return out


CASES = cases()


def test_enough_cases():
    assert len(CASES) >= 50 and {c[0] for c in CASES} == set(COMMANDS)


@pytest.mark.parametrize("command, case, words", CASES, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(CASES)])
def test_bad_input_is_one_clear_line(tmp_path, capsys, monkeypatch, command, case, words):
    monkeypatch.delenv("FASTSSL_DATA", raising=False)
    main = COMMANDS[command][0]
    if case[0] == "argv":
        argv = case[1]
    elif case[0] == "toml":
        path = tmp_path / "bad.toml"
        path.write_bytes(case[2])
        argv = [*case[1], "--config", str(path)]
    else:
        argv = [*case[1], "--config", str(tmp_path)]
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2, (argv, err)
    assert err.startswith("error:") and len(err.splitlines()) <= 3 and "Traceback" not in err
    assert words.lower() in err.lower() or words.replace("_", "-") in err, (argv, err)
