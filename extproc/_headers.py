"""``Headers``: a view of one header (or trailer) map that records changes for Envoy.

Values are ``str`` decoded as latin-1, so every byte Envoy sends survives a read/write round
trip (the ASGI convention). Changes are folded per name, so ``del h["x"]; h["x"] = "1"`` and
``h["x"] = "1"; del h["x"]`` both mean what they say although Envoy applies removals before sets.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, overload

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from .errors import MutationError

_SET = 0  # replace all values of the name
_APPEND = 1  # keep the original values, append these
_REMOVE = 2  # remove every value


# Headers whose mutation Envoy ignores unless the filter's mutation_rules allow routing changes.
ROUTING_HEADERS = frozenset({"host", ":authority", ":scheme", ":method"})

# Pseudo-headers a processor may set in each kind of map (routing ones need allow_routing).
_SETTABLE_PSEUDO = {
    "request": frozenset({":path"}),
    "response": frozenset({":status"}),
    "trailers": frozenset(),
}

# RFC 9110 token characters, lower-case only (Envoy lower-cases names on the wire).
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")
_BAD_VALUE = frozenset("\r\n\x00")

# Names already validated, keyed with everything the verdict depends on.
_CHECKED: dict[tuple[str, str, str, bool, bool], str] = {}


class Headers:
    """Request/response headers or trailers of one HTTP message.

    ``h[name]`` and ``h.get(name)`` return all values of a name joined by ``", "``;
    ``h.get_all(name)`` returns them as a list. ``h[name] = v`` replaces, ``h.add(name, v)``
    appends, ``del h[name]`` removes (a no-op when absent, as in Envoy).
    """

    __slots__ = ("_allow_envoy", "_allow_routing", "_changes", "_folds", "_index", "_kind",
                 "_locked", "_raw")

    def __init__(
        self,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        *,
        kind: str = "request",
        allow_routing: bool = False,
        allow_envoy: bool = False,
    ) -> None:
        pairs: list[tuple[str, str]] = []
        if headers is not None:
            items = headers.items() if isinstance(headers, Mapping) else headers
            pairs = [(str(k).lower(), _as_str(k, v)) for k, v in items]
        self._raw: Any = None
        self._index: dict[str, list[str]] | None = _index_pairs(pairs)
        self._changes: dict[str, tuple[int, list[str]]] | None = None
        self._kind = kind
        self._allow_routing = allow_routing
        self._allow_envoy = allow_envoy
        self._locked: str | None = None
        self._folds: list[dict[str, tuple[int, list[str]]]] | None = None

    @classmethod
    def _from_proto(
        cls, header_values: Any, kind: str, allow_routing: bool, allow_envoy: bool
    ) -> Headers:
        self = cls.__new__(cls)
        self._raw = header_values  # parsed on first read: a processor that only writes pays nothing
        self._index = None
        self._changes = None
        self._kind = kind
        self._allow_routing = allow_routing
        self._allow_envoy = allow_envoy
        self._locked = None
        self._folds = None
        return self

    # -- reading ---------------------------------------------------------------------------

    def _base(self) -> dict[str, list[str]]:
        index = self._index
        if index is None:
            index = {}
            for hv in self._raw:
                key = hv.key
                raw = hv.raw_value
                # Older data planes (and hand-written clients) fill ``value``: read it too.
                value = raw.decode("latin-1") if raw else str(hv.value)
                values = index.get(key)
                if values is None:
                    index[key] = [value]
                else:
                    values.append(value)
            self._index = index
            self._raw = None
            if self._folds is not None:
                for changes in self._folds:
                    _fold(index, changes)
                self._folds = None
        return index

    def _values(self, name: str) -> Sequence[str]:
        changes = self._changes
        change = changes.get(name) if changes else None
        if change is None:
            return self._base().get(name, ())
        op, values = change
        if op == _SET:
            return values
        if op == _APPEND:
            return [*self._base().get(name, ()), *values]
        return ()

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order (e.g. each ``set-cookie``)."""
        return list(self._values(name.lower()))

    @overload
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: str) -> str: ...
    @overload
    def get(self, name: str, default: str | None) -> str | None: ...

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self._values(name.lower())
        if not values:
            return default
        return values[0] if len(values) == 1 else ", ".join(values)

    def __getitem__(self, name: str) -> str:
        values = self._values(name.lower())
        if not values:
            raise KeyError(name)
        return values[0] if len(values) == 1 else ", ".join(values)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self._values(name.lower()))

    def keys(self) -> list[str]:
        """Header names, each once, in the order first seen."""
        names = [n for n in self._base() if self._values(n)]
        if self._changes:
            names.extend(n for n, (op, _) in self._changes.items()
                         if op != _REMOVE and n not in self._base())
        return names

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def items(self) -> list[tuple[str, str]]:
        """Every ``(name, value)`` pair; a repeated header appears once per value."""
        return [(n, v) for n in self.keys() for v in self._values(n)]

    def to_dict(self) -> dict[str, str]:
        """``{name: joined value}``, handy in tests and logs."""
        return {n: ", ".join(self._values(n)) for n in self.keys()}

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Headers):
            return self.items() == other.items()
        if isinstance(other, Mapping):
            return self.to_dict() == {str(k).lower(): v for k, v in other.items()}
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({self.items()!r})"

    # -- writing ---------------------------------------------------------------------------

    def __setitem__(self, name: str, value: str | bytes) -> None:
        name = self._check(name, "set")
        text = _as_str(name, value)
        if name == ":status" and not (len(text) == 3 and text.isascii() and text.isdigit()
                                      and "2" <= text[0] <= "5"):
            # Envoy ignores a :status below 200 (and cannot parse non-ASCII digits).
            raise MutationError(f":status must be a 3-digit status 200-599, got {text!r}")
        self._change(name, _SET, text)

    def add(self, name: str, value: str | bytes) -> None:
        """Append a value, keeping those already present."""
        name = self._check(name, "add")
        if name.startswith(":"):
            raise MutationError(f"{name} is single-valued: assign it (headers[{name!r}] = ...)")
        text = _as_str(name, value)
        changes = self._changes
        change = changes.get(name) if changes else None
        if change is None or change[0] == _REMOVE:
            self._change(name, _APPEND if change is None else _SET, text)
        else:
            change[1].append(text)

    def __delitem__(self, name: str) -> None:
        name = self._check(name, "remove")
        if name.startswith(":") or name == "host":
            raise MutationError(f"Envoy never removes {name}; it would silently ignore this")
        self._change(name, _REMOVE, None)

    def pop(self, name: str, default: str | None = None) -> str | None:
        """Remove ``name`` and return its joined value (``default`` when absent)."""
        value = self.get(name, default)
        del self[name]
        return value

    def update(self, other: Mapping[str, str | bytes] | Iterable[tuple[str, str | bytes]]) -> None:
        """Set every name of ``other`` (replacing existing values)."""
        items = other.items() if isinstance(other, Mapping) else other
        for name, value in items:
            self[name] = value

    def _check(self, name: str, action: str) -> str:
        if self._locked is not None:
            raise MutationError(self._locked)
        if type(name) is not str:
            raise MutationError(f"header names are str, got {type(name).__name__}")
        key = (name, action, self._kind, self._allow_routing, self._allow_envoy)
        checked = _CHECKED.get(key)
        if checked is not None:
            return checked
        checked = self._check_slow(name, action)
        if len(_CHECKED) >= 4096:
            _CHECKED.clear()
        _CHECKED[key] = checked
        return checked

    def _check_slow(self, name: str, action: str) -> str:
        if not isinstance(name, str):
            raise MutationError(f"header names are str, got {type(name).__name__}")
        name = name.lower()
        body = name[1:] if name.startswith(":") else name
        if not body or not _TOKEN.issuperset(body):
            raise MutationError(f"invalid header name {name!r}")
        if name.startswith(":"):
            settable = _SETTABLE_PSEUDO[self._kind]
            routing = name in ROUTING_HEADERS and self._kind == "request"
            if action != "remove" and not (name in settable or (routing and self._allow_routing)):
                hint = (" unless the Processor sets allow_routing_mutations = True"
                        if routing else "")
                raise MutationError(f"Envoy ignores a change of {name} in {self._kind} "
                                    f"headers{hint}")
        elif name == "host" and not self._allow_routing:
            raise MutationError("Envoy ignores a change of host unless the Processor sets "
                                "allow_routing_mutations = True")
        elif name.startswith("x-envoy-") and not self._allow_envoy:
            raise MutationError(f"Envoy ignores a change of {name} (x-envoy-*) unless the "
                                "Processor sets allow_envoy_mutations = True")
        return name

    def _change(self, name: str, op: int, value: str | None) -> None:
        if self._changes is None:
            self._changes = {}
        self._changes[name] = (op, [] if value is None else [value])

    # -- for the message loop --------------------------------------------------------------

    @property
    def changed(self) -> bool:
        """True when changes are waiting to be sent to Envoy."""
        return bool(self._changes)

    def _take_mutation(self) -> Any:
        """The pending changes as a HeaderMutation (None when there are none); clears them."""
        if not self._changes:
            return None
        mutation = pb.HeaderMutation()
        self._write_mutation(mutation)
        return mutation

    def _write_mutation(self, mutation: Any) -> None:
        """Write the pending changes into ``mutation`` (a HeaderMutation) and clear them.

        Built in place: constructing nested messages and copying them costs 3x more.
        """
        changes = self._changes
        if not changes:
            return
        set_headers = mutation.set_headers
        for name, (op, values) in changes.items():
            if op == _REMOVE:
                mutation.remove_headers.append(name)
                continue
            append = op != _SET
            for value in values:
                option = set_headers.add()
                header = option.header
                header.key = name
                header.raw_value = value.encode("latin-1")
                # Envoy's ext_proc reads the (deprecated) ``append`` flag; ``append_action``
                # left at its default makes Envoys that prefer append_action fall back to it.
                option.append.value = append
                append = True
        self._changes = None
        if self._index is not None:
            _fold(self._index, changes)
        elif self._folds is None:
            self._folds = [changes]
        else:
            self._folds.append(changes)

    def _lock(self, reason: str) -> None:
        self._locked = reason


def _fold(index: dict[str, list[str]], changes: dict[str, tuple[int, list[str]]]) -> None:
    """Apply sent changes to the parsed base, so later reads and changes start from them."""
    for name, (op, values) in changes.items():
        if op == _REMOVE:
            index.pop(name, None)
        elif op == _SET:
            index[name] = list(values)
        else:
            index.setdefault(name, []).extend(values)


def _index_pairs(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    index: dict[str, list[str]] = {}
    for key, value in pairs:
        index.setdefault(key, []).append(value)
    return index


def _as_str(name: object, value: object) -> str:
    if type(value) is str and value.isascii() and value.isprintable():
        return value  # the common case: no CR, LF or NUL possible, latin-1 encodable
    if isinstance(value, (bytes, bytearray, memoryview)):
        text = bytes(value).decode("latin-1")
    elif isinstance(value, str):
        text = value
        try:
            text.encode("latin-1")
        except UnicodeEncodeError:
            raise MutationError(
                f"value of {name} has characters outside latin-1; pass bytes "
                "(e.g. value.encode()) to send UTF-8") from None
    elif isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    else:
        raise MutationError(f"value of {name} must be str or bytes, got {type(value).__name__}")
    if not _BAD_VALUE.isdisjoint(text):
        raise MutationError(f"value of {name} contains CR, LF or NUL, which Envoy rejects")
    return text


def header_mutation(headers: Mapping[str, str | bytes] | None, kind: str = "response") -> Any:
    """A HeaderMutation that sets each of ``headers`` (used for immediate responses)."""
    if not headers:
        return None
    view = Headers(kind=kind)
    for name, value in headers.items():
        view[name] = value
    return view._take_mutation()
