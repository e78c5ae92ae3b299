"""What crosses the bus: the connector contract's dataclasses, enums, bytes and plain JSON
values, encoded as JSON. Only the types listed here are decoded (a message names a type by
its class name, never by an import path), so a message can build nothing else."""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
from typing import Any

from bridge.connector import base, capabilities, events, ids


class CodecError(ValueError):
    """A message that is not what this codec writes."""


def _contract_types() -> dict[str, type]:
    out: dict[str, type] = {}
    for module in (events, base, capabilities, ids):
        for name in dir(module):
            obj = getattr(module, name)
            if not isinstance(obj, type) or obj.__module__ != module.__name__:
                continue
            if dataclasses.is_dataclass(obj) or issubclass(obj, enum.Enum):
                out[name] = obj
    return out


TYPES: dict[str, type] = _contract_types()


def to_wire(value: Any) -> Any:
    """A JSON-able form of ``value``."""
    if value is None or isinstance(value, bool | int | float | str):
        if isinstance(value, enum.Enum):
            return {"$e": type(value).__name__, "v": value.value}
        return value
    if isinstance(value, enum.Enum):
        return {"$e": type(value).__name__, "v": value.value}
    if isinstance(value, bytes | bytearray):
        return {"$b": base64.b64encode(bytes(value)).decode("ascii")}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if TYPES.get(name) is not type(value):
            raise CodecError(f"{name} is not a type of the connector contract")
        fields = {
            f.name: to_wire(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not callable(getattr(value, f.name))  # handlers stay on their side
        }
        return {"$t": name, "f": fields}
    if isinstance(value, list | tuple):
        items = [to_wire(v) for v in value]
        return items if isinstance(value, list) else {"$tuple": items}
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise CodecError(f"mapping keys must be strings, not {key!r}")
        return {"$d": {k: to_wire(v) for k, v in value.items()}}
    raise CodecError(f"{type(value).__name__} cannot cross the bus")


def from_wire(data: Any) -> Any:
    if data is None or isinstance(data, bool | int | float | str):
        return data
    if isinstance(data, list):
        return [from_wire(v) for v in data]
    if not isinstance(data, dict):
        raise CodecError(f"unexpected {type(data).__name__}")
    if "$t" in data:
        cls = TYPES.get(str(data["$t"]))
        if cls is None or not dataclasses.is_dataclass(cls):
            raise CodecError(f"unknown type {data['$t']!r}")
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        fields = {k: from_wire(v) for k, v in dict(data.get("f") or {}).items() if k in known}
        try:
            return cls(**fields)
        except TypeError as e:
            raise CodecError(f"{cls.__name__}: {e}") from e
    if "$e" in data:
        cls = TYPES.get(str(data["$e"]))
        if cls is None or not issubclass(cls, enum.Enum):
            raise CodecError(f"unknown enum {data['$e']!r}")
        return cls(data["v"])
    if "$b" in data:
        return base64.b64decode(str(data["$b"]))
    if "$tuple" in data:
        return tuple(from_wire(v) for v in data["$tuple"])
    if "$d" in data:
        return {str(k): from_wire(v) for k, v in dict(data["$d"]).items()}
    raise CodecError(f"unknown tag in {sorted(data)}")


def encode(value: Any) -> bytes:
    return json.dumps(to_wire(value), separators=(",", ":")).encode("utf-8")


def decode(raw: bytes) -> Any:
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise CodecError(f"not JSON: {e}") from e
    return from_wire(data)
