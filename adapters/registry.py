"""The adapter registry: adapters are found through the ``carbon_gateway.adapters`` entry-point group.

A package adds an adapter by declaring, in its ``pyproject.toml``::

    [project.entry-points."carbon_gateway.adapters"]
    my-schema = "my_package.my_module:ADAPTER"

where ``ADAPTER`` satisfies `adapters.base.Adapter` and its ``info.name`` equals the entry-point name. The
gateway's built-in adapters register the same way, so they exist only once the distribution is installed
(``pip install -e .``). An entry point that fails to load is skipped and reported by `load_problems`; it
never hides the other adapters.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib.metadata import entry_points

from adapters.base import Adapter, AdapterInfo

ENTRY_POINT_GROUP = "carbon_gateway.adapters"


class AdapterNotFound(LookupError):
    """No installed adapter has the requested name."""


class NoAdaptersInstalled(LookupError):
    """The entry-point group is empty: the distribution is not installed."""

    def __init__(self) -> None:
        super().__init__(
            f"no adapters are registered under the entry-point group {ENTRY_POINT_GROUP!r}. The built-in adapters "
            "register through the project's packaging metadata: install the project (e.g. `pip install -e .` in "
            "the source tree, or `make install`) and try again"
        )


@dataclass(frozen=True, slots=True)
class LoadProblem:
    """An entry point that could not be loaded, and why."""

    entry_point: str
    message: str


@dataclass(frozen=True, slots=True)
class _Loaded:
    adapters: dict[str, Adapter]
    problems: tuple[LoadProblem, ...]


@functools.cache
def _load() -> _Loaded:
    found: dict[str, Adapter] = {}
    problems: list[LoadProblem] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as error:  # a broken third-party plugin must not hide the others
            problems.append(LoadProblem(ep.name, f"cannot be imported ({ep.value}): {error!r}"))
            continue
        if not isinstance(obj, Adapter):
            problems.append(
                LoadProblem(ep.name, f"{ep.value} does not satisfy the adapter protocol (adapters.base.Adapter)")
            )
            continue
        if obj.info.name != ep.name:
            problems.append(
                LoadProblem(
                    ep.name,
                    f"{ep.value} calls itself {obj.info.name!r}; the entry point "
                    "and the adapter must have the same name",
                )
            )
            continue
        if ep.name in found:
            problems.append(LoadProblem(ep.name, "two entry points use this name; the first one is kept"))
            continue
        found[ep.name] = obj
    return _Loaded(found, tuple(problems))


def reload() -> None:
    """Forget the loaded adapters (after installing or removing a package)."""
    _load.cache_clear()


def installed() -> dict[str, Adapter]:
    """Every loaded adapter by name; raises `NoAdaptersInstalled` when there is none."""
    loaded = _load()
    if not loaded.adapters:
        raise NoAdaptersInstalled()
    return dict(loaded.adapters)


def get_adapter(name: str) -> Adapter:
    """The adapter called ``name``."""
    adapters = installed()
    try:
        return adapters[name]
    except KeyError:
        raise AdapterNotFound(
            f"no adapter named {name!r} is installed; installed adapters: {', '.join(sorted(adapters))}"
        ) from None


def list_adapters() -> list[AdapterInfo]:
    """Name, description and schemas read and written of every installed adapter, sorted by name."""
    return [adapter.info for _, adapter in sorted(installed().items())]


def load_problems() -> tuple[LoadProblem, ...]:
    """Entry points that were skipped, with the reason."""
    return _load().problems
