"""The view state a reader saves into a graph: checked whole before anything is written.

The state is the graph's ``annotations`` (see :class:`~clew.attribution.Graph`): ``supernodes``,
``labels``, ``pins`` and ``view``. Every node it names must be a node of the graph; every field has
one type and a bounded size. Anything else is refused with a one-line error and the file is left
as it was.
"""

from __future__ import annotations

import math
from typing import Any

from clew.errors import ClewError

MAX_TEXT = 500
"""Longest name, label or reason."""
MAX_ITEMS = 10_000
"""Most pins, labels, supernodes or members of one supernode."""
SOURCES = ("user", "auto")
VIEW_FIELDS = {
    "threshold": "number",
    "edge_threshold": "number",
    "errors": "bool",
    "selected": "key-or-null",
}
"""The view fields the explorer keeps, and their types."""


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ClewError(f"state: {where} is not a string")
    if len(value) > MAX_TEXT:
        raise ClewError(f"state: {where} is longer than {MAX_TEXT} characters")
    return value


def _key(value: Any, where: str, keys: set[str]) -> str:
    if not isinstance(value, str) or value not in keys:
        raise ClewError(f"state: {where} {str(value)[:80]!r} is not a node of the graph")
    return value


def _list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise ClewError(f"state: {where} is not a list")
    if len(value) > MAX_ITEMS:
        raise ClewError(f"state: {where} has more than {MAX_ITEMS} entries")
    return value


def check_state(state: Any, keys: set[str]) -> dict[str, Any]:
    """The annotations to save, checked against the graph's node ``keys``; a one-line error otherwise."""
    if not isinstance(state, dict):
        raise ClewError("state: not an object")
    unknown = set(state) - {"supernodes", "labels", "pins", "view"}
    if unknown:
        raise ClewError(f"state: unknown field {sorted(unknown)[0]!r} (supernodes, labels, pins, view)")
    out: dict[str, Any] = {}

    supernodes = []
    for i, s in enumerate(_list(state.get("supernodes", []), "supernodes")):
        where = f"supernodes[{i}]"
        if not isinstance(s, dict):
            raise ClewError(f"state: {where} is not an object")
        extra = set(s) - {"name", "members", "why", "side", "source", "examples"}
        if extra:
            raise ClewError(f"state: {where} has an unknown field {sorted(extra)[0]!r}")
        name = _text(s.get("name"), f"{where}.name").strip()
        if not name:
            raise ClewError(f"state: {where}.name is empty")
        members = [
            _key(m, f"{where}.members[{j}]", keys)
            for j, m in enumerate(_list(s.get("members"), f"{where}.members"))
        ]
        if not members:
            raise ClewError(f"state: {where}.members is empty")
        if len(set(members)) != len(members):
            raise ClewError(f"state: {where}.members lists a node twice")
        source = s.get("source", "user")
        if source not in SOURCES:
            raise ClewError(f"state: {where}.source {source!r} is not one of {', '.join(SOURCES)}")
        why = s.get("why", "")
        if isinstance(why, dict):  # clew.circuits: member -> why it is in the group
            why = {
                _key(k, f"{where}.why key", set(members)): _text(v, f"{where}.why[{k!r}]")
                for k, v in why.items()
            }
        else:
            why = _text(why, f"{where}.why")
        entry = {"name": name, "members": members, "why": why, "source": source}
        if "side" in s:
            entry["side"] = _text(s["side"], f"{where}.side")
        if "examples" in s:  # clew.circuits: the group's best examples, as text
            entry["examples"] = [
                _text(e, f"{where}.examples[{j}]")
                for j, e in enumerate(_list(s["examples"], f"{where}.examples"))
            ]
        supernodes.append(entry)
    out["supernodes"] = supernodes

    labels = state.get("labels", {})
    if not isinstance(labels, dict) or len(labels) > MAX_ITEMS:
        raise ClewError("state: labels is not an object of node -> label")
    out["labels"] = {_key(k, "labels key", keys): _text(v, f"labels[{k!r}]") for k, v in labels.items()}

    pins = [_key(p, f"pins[{i}]", keys) for i, p in enumerate(_list(state.get("pins", []), "pins"))]
    out["pins"] = list(dict.fromkeys(pins))

    view = state.get("view", {})
    if not isinstance(view, dict):
        raise ClewError("state: view is not an object")
    checked: dict[str, Any] = {}
    for name, value in view.items():
        kind = VIEW_FIELDS.get(name)
        if kind is None:
            raise ClewError(f"state: view has an unknown field {name!r} ({', '.join(VIEW_FIELDS)})")
        if kind == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ClewError(f"state: view.{name} is not a number")
            if not 0 < value <= 1:
                raise ClewError(f"state: view.{name} {value} is not above 0 and at most 1")
            checked[name] = float(value)
        elif kind == "bool":
            if not isinstance(value, bool):
                raise ClewError(f"state: view.{name} is not true or false")
            checked[name] = value
        else:
            checked[name] = None if value is None else _key(value, f"view.{name}", keys)
    out["view"] = checked
    return out
