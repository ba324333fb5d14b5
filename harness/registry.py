"""Name registries for models, tasks, optimizers and presets.

Entries are declared in small catalog modules (`baselines/catalog.py`, `models/catalog.py`, `tasks/catalog.py`,
`optimizers/catalog.py`, `harness/presets.py`) as `"package.module:attribute"` strings, so listing names never
imports torch-heavy code; the target is imported only when an entry is loaded. Lookup is case-insensitive, accepts
aliases, and an unknown name raises a one-line error naming the closest matches and the full list.
"""

from __future__ import annotations

import difflib
import functools
import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from harness.errors import UnknownNameError


@dataclass(frozen=True)
class Entry:
    name: str  # canonical registry name, e.g. "titans-mac"
    target: str  # "package.module:attribute", imported lazily by `load`
    aliases: tuple[str, ...] = ()  # other accepted spellings
    summary: str = ""  # one line for `harness ls`
    meta: dict = field(default_factory=dict, compare=False)  # free-form facts (paper, family, ...)


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


class Registry:
    def __init__(self, kind: str, catalogs: tuple[str, ...]):
        self.kind = kind  # "model", "task", ... used in error messages
        self._catalogs = catalogs  # modules whose import registers the entries
        self._entries: dict[str, Entry] = {}
        self._lookup: dict[str, str] = {}
        self._catalogs_loaded = False
        self._prefixes: dict[str, Entry] = {}  # "hf" -> the entry that builds "hf:<source>" names

    def register(self, name: str, target: str, aliases: tuple[str, ...] = (), summary: str = "", **meta) -> None:
        if ":" not in target:
            raise ValueError(f"registry target must be 'module:attribute', got {target!r}")
        for spelling in (name, *aliases):
            owner = self._lookup.get(_key(spelling))
            if owner is not None and owner != name:
                raise ValueError(f"{self.kind} name {spelling!r} already registered for {owner!r}")
        self._entries[name] = Entry(name, target, tuple(aliases), summary, meta)
        for spelling in (name, *aliases):
            self._lookup[_key(spelling)] = name

    def register_prefix(self, prefix: str, target: str, summary: str = "", **meta) -> None:
        """Names of the form "<prefix>:<anything>" (e.g. hf:<repo-id-or-folder>), built by `target` with
        source=<anything>; the resolved entry's name is the whole string and its meta holds the source."""
        if ":" not in target:
            raise ValueError(f"registry target must be 'module:attribute', got {target!r}")
        self._prefixes[_key(prefix)] = Entry(f"{prefix}:<source>", target, (), summary, meta)

    def prefixes(self) -> list[Entry]:
        self._ensure_catalogs()
        return [self._prefixes[p] for p in sorted(self._prefixes)]

    def _ensure_catalogs(self) -> None:
        if not self._catalogs_loaded:
            self._catalogs_loaded = True
            for module in self._catalogs:
                importlib.import_module(module)

    def names(self) -> list[str]:
        self._ensure_catalogs()
        return sorted(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return (self._entries[n] for n in self.names())

    def __contains__(self, name: str) -> bool:
        self._ensure_catalogs()
        return _key(name) in self._lookup

    def resolve(self, name: str) -> Entry:
        """The entry for `name` or an alias of it; unknown names raise UnknownNameError with suggestions."""
        self._ensure_catalogs()
        prefix, colon, source = name.strip().partition(":")
        if colon and _key(prefix) in self._prefixes:
            if not source.strip():
                raise UnknownNameError(f"{self.kind} {name!r} names no source; write {prefix}:<repo-id-or-folder>")
            template = self._prefixes[_key(prefix)]
            return Entry(f"{_key(prefix)}:{source.strip()}", template.target, (), template.summary,
                         {**template.meta, "source": source.strip()})
        canonical = self._lookup.get(_key(name))
        if canonical is None:
            close = difflib.get_close_matches(_key(name), list(self._lookup), n=3, cutoff=0.5)
            close = list(dict.fromkeys(self._lookup[c] for c in close))
            hint = f"did you mean {', '.join(close)}? " if close else ""
            forms = "".join(f", or {p.name}" for p in self._prefixes.values())
            raise UnknownNameError(f"unknown {self.kind} {name!r}; {hint}known {self.kind}s: {', '.join(self.names())}"
                                   f"{forms}")
        return self._entries[canonical]

    def load(self, name: str) -> Any:
        """Import and return the entry's target (a builder function or class)."""
        entry = self.resolve(name)
        module, attr = entry.target.split(":")
        target = getattr(importlib.import_module(module), attr)
        if "source" in entry.meta:  # a "<prefix>:<source>" name: the builder gets the source
            return functools.partial(target, source=entry.meta["source"])
        return target


MODELS = Registry("model", ("baselines.catalog", "models.catalog"))
TASKS = Registry("task", ("tasks.catalog",))
OPTIMIZERS = Registry("optimizer", ("optimizers.catalog",))
PRESETS = Registry("preset", ("harness.presets",))
