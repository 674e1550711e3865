"""One typed dataclass per command -> argparse flags + TOML file, shared by every `fastssl.*` command.

Each field becomes `--field-name VALUE` (booleans: `--flag/--no-flag`); `--config FILE.toml` sets
fields from a file first and flags override it. Unknown keys, wrong types and values outside a
field's `choices` are errors that name the valid options. Field help comes from
`field(metadata={"help": ...})`; choices from `metadata={"choices": [...]}`.

Commands wrap their `main` in `cli(...)`, which turns `ConfigError` and `pipelines.DataError` into one
line on stderr and exit code 2 (no traceback), as users expect from a command-line tool.
"""

import argparse
import dataclasses
import functools
import math
import os
import sys
import tomllib
import types
import typing

from pipelines import DataError


class ConfigError(ValueError):
    """A bad flag or config value; printed as one line, exit code 2."""


def _base_type(tp):
    """Return (python type, optional?) for int / float / str / bool / Optional[...] annotations."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported annotation {tp}")
        return args[0], True
    return tp, False


def _coerce(name, value, tp, choices):
    base, optional = _base_type(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name}: a value is required")
    if base is bool:
        if isinstance(value, bool):
            out = value
        elif isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            out = value.lower() in ("true", "1", "yes")
        else:
            raise ConfigError(f"{name}: expected true/false, got {value!r}")
    elif base is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        try:
            out = int(value)
        except ValueError:
            raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
    elif base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        try:
            out = float(value)
        except ValueError:
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
        if not math.isfinite(out):  # nan slips past every `x <= 0` check; inf is never a setting
            raise ConfigError(f"{name}: expected a finite number, got {value!r}")
    elif base is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        out = value
    else:
        raise TypeError(f"unsupported field type {tp} for {name}")
    if choices is not None and out not in choices:
        raise ConfigError(f"{name}: {out!r} is not one of {', '.join(map(str, choices))}")
    return out


def _flag(name):
    return "--" + name.replace("_", "-")


def load_toml(path):
    if os.path.isdir(path):
        raise ConfigError(f"config file {path} is a directory, not a TOML file")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not valid TOML: it is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {str(e).splitlines()[0]}") from None


def from_dict(cls, values: dict, source="config"):
    """Build `cls` from a dict, refusing unknown keys and wrong types (used for TOML and checkpoints)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in values if k.replace("-", "_") not in fields]
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(fields)}")
    kwargs = {}
    for k, v in values.items():
        f = fields[k.replace("-", "_")]
        kwargs[f.name] = _coerce(k, v, f.type, f.metadata.get("choices"))
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def parse(cls, argv=None, description=None, base=None):
    """Parse `argv` (default sys.argv[1:]) into a `cls` instance:
    defaults < `base` (a dict, e.g. a resumed run's saved config) < --config TOML < flags."""
    hints = typing.get_type_hints(cls)
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE.toml", help="read settings from a TOML file; flags override it")
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        kind, _ = _base_type(tp)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        choices = f.metadata.get("choices")
        help_ = f.metadata.get("help", "")
        help_ += f" (default: {default})" if default is not None else ""
        if kind is bool:
            p.add_argument(
                _flag(f.name),
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_,
            )
        else:
            p.add_argument(
                _flag(f.name),
                dest=f.name,
                default=argparse.SUPPRESS,
                metavar=f.name.upper(),
                help=help_ + (f"; one of: {', '.join(map(str, choices))}" if choices else ""),
            )

    def error(message):  # argparse's own errors (unknown flags) must also be one line + exit 2
        raise ConfigError(message)

    p.error = error
    args = vars(p.parse_args(argv))
    toml = load_toml(args["config"]) if args.get("config") else {}
    args.pop("config", None)
    values = dict(base or {})
    values.update({k.replace("-", "_"): v for k, v in toml.items()})
    values.update(args)
    fields = {f.name for f in dataclasses.fields(cls)}
    if "config" in values or not set(values) <= fields:
        bad = sorted(set(values) - fields)
        raise ConfigError(f"unknown key(s) {', '.join(bad)}; valid keys: {', '.join(sorted(fields))}")
    return from_dict(cls, values)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def cli(main):
    """Decorator for a command's `main(argv=None)`: user errors -> one stderr line, exit code 2."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except (ConfigError, DataError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
