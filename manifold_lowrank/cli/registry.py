"""Registry of *method runners* for the command line.

A runner is a named callable ``config -> result`` that runs one method on one problem
and returns a flat result dictionary (plus optional ``history`` for plots). Runners are
grouped by the subcommand that uses them (``"demo"`` today; ``"compare"``, ``"train"``
and ``"finetune"`` register their runners the same way), so adding a method to the
command line is one decorated function::

    from manifold_lowrank.cli.registry import register

    @register("my-method", group="demo", description="what it does")
    def run_my_method(config):
        ...
        return {"method": "my-method", "rel_error": 1e-3, "time_s": 0.4}

Runners that need optional packages list their import names in ``requires``; they stay
registered but are reported as unavailable (and refused with a clear message) when one
is missing.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "REGISTRY",
    "Registry",
    "Runner",
    "RunnerFn",
    "UnknownRunnerError",
    "register",
]

RunnerFn = Callable[[Mapping[str, Any]], dict[str, Any]]
"""Signature of a runner: ``fn(config) -> result dict``."""


class UnknownRunnerError(ValueError):
    """Raised for a runner name that is not registered (or not in the requested group)."""


def _module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package missing or broken
        return False


@dataclass(frozen=True)
class Runner:
    """One registered method runner.

    Attributes
    ----------
    name : str
        Unique name used on the command line (``--methods name,...``).
    group : str
        The subcommand that runs it (``"demo"``, ``"compare"``, ...).
    fn : RunnerFn
        ``fn(config) -> dict``; ``config`` is a read-only mapping prepared by the
        subcommand (problem data, device, seed, step counts, ...).
    description : str
        One line shown by ``manifold-lowrank info`` and in error messages.
    requires : tuple of str
        Import names of optional packages the runner needs.
    default : bool
        Whether the subcommand runs it when no ``--methods`` are given.
    """

    name: str
    group: str
    fn: RunnerFn = field(repr=False)
    description: str = ""
    requires: tuple[str, ...] = ()
    default: bool = True

    def missing(self) -> list[str]:
        """Import names from :attr:`requires` that cannot be found."""
        return [mod for mod in self.requires if not _module_available(mod)]

    @property
    def available(self) -> bool:
        """``True`` when every package in :attr:`requires` is importable."""
        return not self.missing()

    def __call__(self, config: Mapping[str, Any]) -> dict[str, Any]:
        missing = self.missing()
        if missing:
            raise RuntimeError(
                f"method {self.name!r} needs the package(s) {', '.join(missing)}, "
                "which are not installed"
            )
        return self.fn(config)


class Registry:
    """A name → :class:`Runner` table with per-group listings."""

    def __init__(self) -> None:
        self._runners: dict[str, Runner] = {}

    def add(self, runner: Runner) -> Runner:
        """Register ``runner``; its name must be new."""
        if not runner.name or any(c.isspace() or c == "," for c in runner.name):
            raise ValueError(
                f"runner name must be non-empty without spaces or commas, got {runner.name!r}"
            )
        if runner.name in self._runners:
            raise ValueError(f"a runner named {runner.name!r} is already registered")
        self._runners[runner.name] = runner
        return runner

    def register(
        self,
        name: str,
        *,
        group: str,
        description: str = "",
        requires: Iterable[str] = (),
        default: bool = True,
    ) -> Callable[[RunnerFn], RunnerFn]:
        """Decorator form of :meth:`add`; returns the function unchanged."""

        def decorator(fn: RunnerFn) -> RunnerFn:
            self.add(
                Runner(
                    name=name,
                    group=group,
                    fn=fn,
                    description=description,
                    requires=tuple(requires),
                    default=default,
                )
            )
            return fn

        return decorator

    def get(self, name: str, group: str | None = None) -> Runner:
        """The runner called ``name`` (in ``group`` if given).

        Raises
        ------
        UnknownRunnerError
            With the list of valid names in the message.
        """
        runner = self._runners.get(name)
        if runner is None or (group is not None and runner.group != group):
            where = f" for {group!r}" if group is not None else ""
            valid = ", ".join(self.names(group)) or "(none registered)"
            raise UnknownRunnerError(f"unknown method {name!r}{where}; choose from: {valid}")
        return runner

    def runners(self, group: str | None = None) -> list[Runner]:
        """Registered runners (of ``group`` if given), in registration order."""
        return [r for r in self._runners.values() if group is None or r.group == group]

    def names(self, group: str | None = None) -> list[str]:
        """Names of :meth:`runners`."""
        return [r.name for r in self.runners(group)]

    def groups(self) -> list[str]:
        """Groups that have at least one runner, in first-registration order."""
        return list(dict.fromkeys(r.group for r in self._runners.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._runners

    def __len__(self) -> int:
        return len(self._runners)


REGISTRY = Registry()
"""The process-wide registry used by the command line."""

register = REGISTRY.register
"""Shortcut for :meth:`Registry.register` on :data:`REGISTRY`."""
