"""Configs from older releases: unknown keys, renamed keys, and ``--upgrade-config``.

An unknown key is a warning naming the nearest known key, never a stop: a typo should not take
the bridge down, and a key a newer release added should not stop an older one. A renamed key
is read under its old name with a warning. ``mimi-bridge -c config.yaml --upgrade-config``
rewrites the file in the layout of this release's example, comments included, with the admin's
values; keys this release does not know are kept, marked by a comment.

The known keys of the core's sections are the ones :mod:`bridge.config` reads; those of a
connector's section are the keys of its section in the example config (a connector the example
does not show is not checked here).
"""

from __future__ import annotations

import copy
import difflib
import re
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import CommentMark
from ruamel.yaml.tokens import CommentToken

# Old dotted key -> new dotted key; ``*`` matches any one key (a network id, say). A rename is
# listed here for as long as configs with the old name may be around.
RENAMES: dict[str, str] = {}

# Mappings whose keys are the admin's own (user ids, network ids, dictConfig), not key names.
FREE_FORM = (
    "bridge.permissions",
    "logging",
    "connectors.irc.networks.*.power_levels",
    "connectors.deltachat.provisioned",
)
# Mappings whose every value has the layout of the example's first one.
PER_ITEM = ("connectors.irc.networks",)

UNKNOWN_NOTE = "not a key this release knows; kept by --upgrade-config"


def example_path() -> Path:
    """This release's example config: installed under ``<prefix>/share/mimi-bridge`` by pip,
    at the top of a source checkout otherwise."""
    for candidate in (
        Path(sys.prefix) / "share" / "mimi-bridge" / "config.example.yaml",
        Path(__file__).resolve().parent.parent / "config.example.yaml",
    ):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("config.example.yaml not found (reinstall mimi-bridge)")


def suggestion(name: str, known: Iterable[str]) -> str:
    """`` (did you mean "x"?)`` for the nearest known key, or nothing."""
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _matches(pattern: str, path: str) -> bool:
    a, b = pattern.split("."), path.split(".")
    return len(a) == len(b) and all(x in ("*", y) for x, y in zip(a, b, strict=True))


def _free(path: str) -> bool:
    return any(_matches(p, path) for p in FREE_FORM)


def _per_item(path: str) -> bool:
    return any(_matches(p, path) for p in PER_ITEM)


def _commented_keys(example_text: str) -> set[str]:
    """Keys the example shows commented out (``# public_address: ...``): known, not set."""
    return set(re.findall(r"^\s*#\s*([a-z_]+):\s", example_text, re.MULTILINE))


# --- renamed keys ------------------------------------------------------------------------


def _expand(doc: Any, parts: list[str], prefix: list[str]) -> Iterable[list[str]]:
    """Concrete key paths in ``doc`` matching ``parts`` (``*`` expands over the keys there)."""
    if not parts:
        yield prefix
        return
    if not isinstance(doc, Mapping):
        return
    head, rest = parts[0], parts[1:]
    keys = [str(k) for k in doc] if head == "*" else [head]
    for key in keys:
        if key in doc:
            yield from _expand(doc[key], rest, [*prefix, key])


def _parent(doc: Any, path: list[str], create: bool) -> Any:
    node = doc
    for key in path[:-1]:
        if not isinstance(node, MutableMapping):
            return None
        if key not in node:
            if not create:
                return None
            node[key] = CommentedMap()
        node = node[key]
    return node if isinstance(node, MutableMapping) else None


def apply_renames(doc: Any, renames: Mapping[str, str] = RENAMES) -> list[str]:
    """Move every old key of ``doc`` to its new name, in place; one warning each."""
    warnings = []
    for old, new in renames.items():
        old_parts, new_parts = old.split("."), new.split(".")
        for path in list(_expand(doc, old_parts, [])):
            # The new path takes the old one's concrete keys where the pattern had ``*``.
            target = [path[i] if p == "*" else p for i, p in enumerate(new_parts)]
            src = _parent(doc, path, create=False)
            if src is None:
                continue
            value = src[path[-1]]
            dst = _parent(doc, target, create=True)
            old_key, new_key = ".".join(path), ".".join(target)
            if dst is None:
                continue
            if target[-1] in dst:
                warnings.append(
                    f"{old_key}: renamed {new_key}, which is set too: the old key is ignored"
                )
                continue
            del src[path[-1]]
            dst[target[-1]] = value
            warnings.append(
                f"{old_key}: now called {new_key}; read under its old name"
                " (mimi-bridge --upgrade-config rewrites the file)"
            )
    return warnings


# --- unknown keys in connector sections ----------------------------------------------------


def connector_warnings(doc: Mapping[str, Any], example: Mapping[str, Any], text: str) -> list[str]:
    """Unknown keys in the connectors' sections, compared with the example's sections."""
    out: list[str] = []
    sections = doc.get("connectors")
    shown = example.get("connectors") or {}
    if not isinstance(sections, Mapping):
        return out
    commented = _commented_keys(text)
    for name, section in sections.items():
        if isinstance(section, Mapping) and isinstance(shown.get(name), Mapping):
            _walk(section, shown[name], f"connectors.{name}", commented, out)
    return out


def _walk(
    have: Mapping[str, Any],
    known: Mapping[str, Any],
    path: str,
    commented: set[str],
    out: list[str],
) -> None:
    if _free(path):
        return
    if _per_item(path):
        first = next(iter(known.values()), None)
        for key, value in have.items():
            if isinstance(value, Mapping) and isinstance(first, Mapping):
                _walk(value, first, f"{path}.{key}", commented, out)
        return
    for key, value in have.items():
        key = str(key)
        if key not in known:
            if key not in commented:
                out.append(f"{path}.{key}: unknown key, ignored{suggestion(key, known)}")
        elif isinstance(value, Mapping) and isinstance(known[key], Mapping):
            _walk(value, known[key], f"{path}.{key}", commented, out)


# --- --upgrade-config ----------------------------------------------------------------------


def upgraded(admin: Any, example: Any, example_text: str, check: Any = None) -> Any:
    """A new document: the example's layout and comments, the admin's values.

    A key the admin did not set stays with the example's value when that changes nothing
    (``check(a, b)`` says whether two documents mean the same; without it such keys are left
    out), and is left out otherwise: its default applies, as before. Connector sections the
    admin does not have come from the example only when it leaves them disabled. Keys the
    example does not know are kept at the end of their section with a comment."""
    apply_renames(admin)
    new = copy.deepcopy(example)
    unset: list[list[str]] = []
    _merge(new, admin, [], _commented_keys(example_text), unset)
    for path in reversed(unset):  # innermost first
        parent = _parent(new, path, create=False)
        if parent is None or path[-1] not in parent:
            continue
        without = copy.deepcopy(new)
        _delete(_parent(without, path, create=False), path[-1])
        if check is None or not check(new, without):
            _delete(parent, path[-1])
    return new


def _merge(
    new: Any, admin: Mapping[str, Any], path: list[str], commented: set[str], unset: list[list[str]]
) -> None:
    dotted = ".".join(path)
    in_connectors = bool(path) and path[0] == "connectors"
    tail = _take_tail(new)
    for key in list(new):
        sub = [*path, str(key)]
        if key not in admin:
            if dotted == "connectors":
                if not _disabled(new[key]):
                    del new[key]
            elif in_connectors:
                del new[key]  # a connector's defaults are its own: no way to check here
            else:
                unset.append(sub)
            continue
        value = admin[key]
        if isinstance(value, Mapping) and isinstance(new[key], CommentedMap):
            if _per_item(".".join(sub)):
                layout = next(iter(new[key].values()), None)
                items = CommentedMap()
                for name, item in value.items():
                    if isinstance(item, Mapping) and isinstance(layout, CommentedMap):
                        items[name] = copy.deepcopy(layout)
                        _merge(items[name], item, [*sub, str(name)], commented, unset)
                    else:
                        items[name] = item
                _put_tail(items, _take_tail(new[key]))
                new[key] = items
                continue
            if not _free(".".join(sub)):
                _merge(new[key], value, sub, commented, unset)
                continue
        if isinstance(new[key], CommentedMap) and isinstance(value, CommentedMap):
            _take_tail(value)  # the admin's, or the example's from an earlier upgrade
            _put_tail(value, _take_tail(new[key]))
        new[key] = value
    for key, value in admin.items():
        if key in new:
            continue
        new[key] = value
        known = str(key) in commented or dotted == "connectors"
        if not known and isinstance(new, CommentedMap):
            new.yaml_add_eol_comment(UNKNOWN_NOTE, key)
    _put_tail(new, tail)


def _take_tail(m: Any) -> str:
    """Detach the comment lines after a mapping's last entry (ruamel keeps them with that
    entry: the next section's comment, a blank line); its end-of-line comment stays."""
    if not isinstance(m, CommentedMap) or not m:
        return ""
    entry = m.ca.items.get(list(m)[-1])
    token = entry[2] if entry and len(entry) > 2 else None
    if token is None or "\n" not in token.value:
        return ""
    cut = token.value.index("\n") + 1
    tail = str(token.value[cut:])
    token.value = token.value[:cut]
    return tail


def _put_tail(m: Any, tail: str) -> None:
    if not tail or not isinstance(m, CommentedMap) or not m:
        return
    entry = m.ca.items.setdefault(list(m)[-1], [None, None, None, None])
    if entry[2] is None:
        entry[2] = CommentToken("\n" + tail, CommentMark(0), None)
    else:
        if not entry[2].value.endswith("\n"):
            entry[2].value += "\n"
        entry[2].value += tail


def _delete(m: Any, key: Any) -> None:
    """Delete a key, keeping the comment lines after the mapping's last entry."""
    tail = _take_tail(m)
    del m[key]
    _put_tail(m, tail)


def _disabled(section: Any) -> bool:
    return isinstance(section, Mapping) and section.get("enabled") is False


def upgrade_file(path: Path) -> list[str]:
    """Rewrite ``path`` as :func:`upgraded` makes it, after checking the result still loads;
    the old file is kept as ``<name>.bak``. Returns the warnings of the old file."""
    from . import config as cfgmod

    admin = cfgmod.load_document(path)
    before = cfgmod.parse(admin, path)  # a config with errors is fixed first, not rewritten
    example_file = example_path()
    text = example_file.read_text(encoding="utf-8")
    example = cfgmod._yaml().load(text)

    def same(a: Any, b: Any) -> bool:
        try:
            x, y = cfgmod.parse(a, path), cfgmod.parse(b, path)
        except cfgmod.ConfigError:
            return False
        x.warnings, y.warnings = [], []
        return x == y

    new = upgraded(copy.deepcopy(admin), example, text, same)
    cfgmod.parse(new, path)
    path.with_name(path.name + ".bak").write_bytes(path.read_bytes())
    cfgmod.save_document(path, new)
    return before.warnings
