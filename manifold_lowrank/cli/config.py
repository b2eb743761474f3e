"""Options of the command line: one declaration serves argparse and ``--config`` TOML files.

Values are resolved with the precedence *built-in default < TOML file < command line*.
A TOML file holds global keys at the top level and one table per subcommand::

    seed = 0
    device = "cpu"

    [demo]
    task = "completion"
    steps = 300
    methods = ["fixedrank-radam", "geoopt-stiefel"]

Every value, from either source, goes through the same validating converter, so a bad
value gives the same one-line message naming the option and the valid range.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CLIError",
    "Option",
    "choice",
    "fraction",
    "int_list",
    "load_toml",
    "method_list",
    "nonneg_float",
    "nonneg_int",
    "positive_float",
    "positive_int",
    "probability",
    "resolve",
    "text",
    "tolerance",
]


class CLIError(Exception):
    """A user error: reported as one line on stderr, exit status 2, no traceback."""


Converter = Callable[[Any], Any]


def _number(value: Any, kind: type, what: str) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"expected {what}, got {value!r}")
    if isinstance(value, str):
        try:
            return kind(value.strip())
        except ValueError:
            raise ValueError(f"expected {what}, got {value!r}") from None
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ValueError(f"expected {what}, got {value!r}")
    if isinstance(value, (int, float)):
        return kind(value)
    raise ValueError(f"expected {what}, got {value!r}")


def positive_int(value: Any) -> int:
    """An integer ``≥ 1``."""
    out = _number(value, int, "an integer >= 1")
    if out < 1:
        raise ValueError(f"expected an integer >= 1, got {value!r}")
    return out


def nonneg_int(value: Any) -> int:
    """An integer ``≥ 0``."""
    out = _number(value, int, "an integer >= 0")
    if out < 0:
        raise ValueError(f"expected an integer >= 0, got {value!r}")
    return out


def positive_float(value: Any) -> float:
    """A finite float ``> 0``."""
    out = _number(value, float, "a number > 0")
    if not (out > 0 and out < float("inf")):
        raise ValueError(f"expected a finite number > 0, got {value!r}")
    return out


def fraction(value: Any) -> float:
    """A float in ``(0, 1]``."""
    out = _number(value, float, "a number in (0, 1]")
    if not 0 < out <= 1:
        raise ValueError(f"expected a number in (0, 1], got {value!r}")
    return out


def tolerance(value: Any) -> float:
    """A float in ``[0, 1)`` (a relative truncation tolerance τ)."""
    out = _number(value, float, "a number in [0, 1)")
    if not 0 <= out < 1:
        raise ValueError(f"expected a number in [0, 1), got {value!r}")
    return out


def probability(value: Any) -> float:
    """A float in ``[0, 1]``."""
    out = _number(value, float, "a number in [0, 1]")
    if not 0 <= out <= 1:
        raise ValueError(f"expected a number in [0, 1], got {value!r}")
    return out


def int_list(value: Any) -> list[int]:
    """Comma-separated integers ``≥ 1`` (command line) or a list of them (TOML)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise ValueError(f"expected comma-separated integers >= 1, got {value!r}")
    try:
        return [positive_int(v) for v in items]
    except ValueError:
        raise ValueError(f"expected comma-separated integers >= 1, got {value!r}") from None


def nonneg_float(value: Any) -> float:
    """A finite float ``≥ 0``."""
    out = _number(value, float, "a number >= 0")
    if not (out >= 0 and out < float("inf")):
        raise ValueError(f"expected a finite number >= 0, got {value!r}")
    return out


def choice(*choices: str) -> Converter:
    """A converter accepting exactly one of ``choices``."""

    def convert(value: Any) -> str:
        if not isinstance(value, str) or value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}; got {value!r}")
        return value

    convert.__name__ = "choice"
    return convert


def method_list(value: Any) -> list[str]:
    """Comma-separated names (command line) or a list of strings (TOML)."""
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value]
    else:
        raise ValueError(f"expected comma-separated method names, got {value!r}")
    items = [v for v in items if v]
    if not items:
        raise ValueError("expected at least one method name")
    return list(dict.fromkeys(items))


def text(value: Any) -> str:
    """Any non-empty string."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


@dataclass(frozen=True)
class Option:
    """One option, usable as ``--flag`` and as a TOML key.

    Attributes
    ----------
    key : str
        Config key (``steps``); the flag is ``--steps`` (underscores become dashes).
    convert : Converter
        Validating converter; raises ``ValueError`` with a message for bad values.
    default : Any
        Built-in default (``None`` means "decided by the command").
    help : str
        Help text.
    metavar : str, optional
        Placeholder shown in ``--help``.
    flag : bool
        A switch (``--no-progress``) taking no value; ``convert`` is ignored.
    hidden : bool
        Left out of ``--help`` (options for tests and debugging).
    """

    key: str
    convert: Converter
    default: Any
    help: str
    metavar: str | None = None
    flag: bool = False
    hidden: bool = False

    @property
    def option_string(self) -> str:
        return "--" + self.key.replace("_", "-")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        """Add to ``parser`` with a suppressed default, so only given values appear."""
        if self.flag:
            parser.add_argument(
                self.option_string,
                dest=self.key,
                action="store_true",
                default=argparse.SUPPRESS,
                help=argparse.SUPPRESS if self.hidden else self.help,
            )
            return

        def argparse_type(raw: str) -> Any:
            try:
                return self.convert(raw)
            except ValueError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None

        argparse_type.__name__ = self.key
        parser.add_argument(
            self.option_string,
            dest=self.key,
            type=argparse_type,
            default=argparse.SUPPRESS,
            metavar=self.metavar or self.key.upper(),
            help=argparse.SUPPRESS
            if self.hidden
            else f"{self.help} (default: {self.default})"
            if self.default is not None
            else self.help,
        )

    def check(self, value: Any, source: str) -> Any:
        """Convert a value coming from ``source`` (e.g. a TOML file) or raise CLIError."""
        if self.flag:
            if not isinstance(value, bool):
                raise CLIError(f"{source}: {self.key} must be true or false, got {value!r}")
            return value
        try:
            return self.convert(value)
        except ValueError as exc:
            raise CLIError(f"{source}: {self.key}: {exc}") from None


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file with :mod:`tomllib` (Python ≥ 3.11) or ``tomli``."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on Python 3.10 only
        try:
            import tomli as tomllib
        except ImportError:
            raise CLIError(
                "--config needs Python >= 3.11 or the 'tomli' package (pip install tomli)"
            ) from None
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise CLIError(f"--config: file not found: {p}") from None
    except IsADirectoryError:
        raise CLIError(f"--config: expected a TOML file, got the directory {p}") from None
    except PermissionError:
        raise CLIError(f"--config: cannot read {p} (permission denied)") from None
    except tomllib.TOMLDecodeError as exc:
        raise CLIError(f"--config: {p} is not valid TOML: {exc}") from None


def resolve(
    global_options: Sequence[Option],
    command: str,
    command_options: Sequence[Option],
    given: Mapping[str, Any],
    toml: Mapping[str, Any] | None,
    *,
    commands: Sequence[str],
    source: str = "config",
) -> dict[str, Any]:
    """Merge defaults, the TOML tables and the command-line values of one command.

    Parameters
    ----------
    global_options, command_options : sequence of Option
        Options of the whole program and of ``command``.
    given : mapping
        Values given on the command line (already converted).
    toml : mapping, optional
        Parsed ``--config`` file: global keys at the top level, a table per command.
    commands : sequence of str
        All command names (tables for other commands are allowed and ignored).

    Raises
    ------
    CLIError
        For unknown keys or invalid values in the TOML data.
    """
    out: dict[str, Any] = {o.key: o.default for o in (*global_options, *command_options)}
    if toml:
        by_key_global = {o.key: o for o in global_options}
        by_key_cmd = {o.key: o for o in command_options}
        for key, value in toml.items():
            if key in commands:
                if not isinstance(value, dict):
                    raise CLIError(f"{source}: [{key}] must be a table")
                continue
            if key == "config":
                raise CLIError(f"{source}: 'config' cannot be set inside a config file")
            opt = by_key_global.get(key)
            if opt is None:
                valid = ", ".join([*by_key_global, *(f"[{c}]" for c in commands)])
                raise CLIError(f"{source}: unknown key {key!r}; valid top-level keys: {valid}")
            out[key] = opt.check(value, source)
        section = toml.get(command, {})
        for key, value in section.items():
            opt = by_key_cmd.get(key) or by_key_global.get(key)
            if opt is None or key == "config":
                valid = ", ".join(o.key for o in (*command_options, *global_options))
                raise CLIError(f"{source}: [{command}] unknown key {key!r}; valid keys: {valid}")
            out[key] = opt.check(value, f"{source} [{command}]")
    out.update(given)
    return out
