"""Registries that carry their own metadata: every family of algorithms is a `Registry` of name → `Entry`.

An entry is the function plus what the code around it must know to call it without knowing its name: the flags
its family declares (an advantage estimator: does it compare the responses of one prompt, does it work per token
or per sequence, does it need a critic or a greedy baseline sample; a preference loss: does it read a reference)
and its hyperparameters with their defaults. The loops, `posttrain explain`, the presets and validation read these
— there are no lists of names anywhere else, no signature inspection and no if-chains on names.

    ADVANTAGES = Registry("advantage estimator", flags={"level": "sequence", "needs_groups": False})

    @ADVANTAGES.register("rloo", needs_groups=True)
    def rloo(batch): ...

    ADVANTAGES.get("rloo")                  → the function
    ADVANTAGES.entry("rloo").needs_groups   → True
    ADVANTAGES.select(needs_groups=True)    → ["rloo", …] (sorted)
    ADVANTAGES.get("nope")                  → UnknownName: unknown advantage estimator 'nope' — valid: rloo, …

Declared hyperparameters must be the function's own keyword arguments with the same defaults (the tests check
every registry). A registry is also a mapping name → function (`in`, iteration, `[name]`, `items()`); assigning
`registry[name] = fn` replaces the function and keeps the entry's metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Mapping

from posttrain.errors import ConfigError


_REQUIRED = object()  # Registry.get without a default: an unknown name is an error


class UnknownName(ConfigError, ValueError):
    """A name that no entry of a registry has; the message lists the valid ones. A ConfigError (the CLI exits 2
    with the message) and a ValueError (what the pure functions raise for a bad argument)."""


@dataclass(frozen=True)
class Entry:
    """A registered function and what it declares. `flags` holds the family's flags (each also readable as an
    attribute: `entry.needs_groups`); `hparams` maps each hyperparameter to its default; `fields` names the
    config field that sets a hyperparameter where the two names differ (e.g. grpo's `std` is `algo.grpo_std`)."""

    name: str
    fn: Callable
    flags: Mapping[str, Any] = field(default_factory=dict)
    hparams: Mapping[str, Any] = field(default_factory=dict)
    fields: Mapping[str, str] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        flags = self.__dict__.get("flags", {})
        if name in flags:
            return flags[name]
        raise AttributeError(f"{type(self).__name__} '{self.__dict__.get('name')}' has no flag {name!r}")

    @property
    def summary(self) -> str:
        """The first line of the function's docstring."""
        return (self.fn.__doc__ or "").strip().split("\n")[0]


class Registry:
    """name → Entry for one family. `flags` declares the family's flags and their defaults; `register` rejects a
    flag the family does not declare, so a typo cannot silently leave a default in place."""

    def __init__(self, kind: str, flags: Mapping[str, Any] | None = None):
        self.kind = kind  # what one entry is, for messages: "advantage estimator", "policy loss", …
        self.flags = dict(flags or {})
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, hparams: Mapping[str, Any] | None = None,
                 fields: Mapping[str, str] | None = None, **flags):
        """Decorator: put `fn` in the registry under `name` with these flags and hyperparameters."""
        unknown = set(flags) - set(self.flags)
        if unknown:
            raise TypeError(f"{self.kind} '{name}': unknown flag(s) {', '.join(sorted(unknown))} — this registry "
                            f"declares {', '.join(self.flags) or 'none'}")
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")

        def wrap(fn):
            self._entries[name] = Entry(name, fn, {**self.flags, **flags}, dict(hparams or {}), dict(fields or {}))
            return fn
        return wrap

    def entry(self, name: str) -> Entry:
        """The entry registered under `name`; an unknown name raises UnknownName listing the valid ones."""
        if name not in self._entries:
            raise UnknownName(f"unknown {self.kind} '{name}' — valid: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def get(self, name: str, default: Any = _REQUIRED) -> Callable:
        """The function registered under `name`; UnknownName listing the valid ones if there is none, unless a
        `default` is given (then it is returned, as dict.get does)."""
        if default is not _REQUIRED and name not in self._entries:
            return default
        return self.entry(name).fn

    def select(self, **flags) -> list[str]:
        """The sorted names whose entries have every given flag value, e.g. select(needs_groups=True)."""
        return sorted(n for n, e in self._entries.items() if all(e.flags[k] == v for k, v in flags.items()))

    # ---- a mapping name → function ----------------------------------------------------------------------------------

    def __getitem__(self, name: str) -> Callable:
        return self._entries[name].fn

    def __setitem__(self, name: str, fn: Callable) -> None:
        old = self._entries.get(name)
        self._entries[name] = replace(old, fn=fn) if old else Entry(name, fn, dict(self.flags))

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self):
        return self._entries.keys()

    def items(self):
        return [(name, e.fn) for name, e in self._entries.items()]

    def values(self):
        return [e.fn for e in self._entries.values()]

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
