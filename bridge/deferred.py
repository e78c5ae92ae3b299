"""What the bridge loads only once it uses it, for idle memory.

``mautrix.util.async_db`` imports asyncpg (about 4 MiB with its extension modules) whether
the database is PostgreSQL or SQLite, so an SQLite bridge would carry it for nothing.
:func:`defer` puts a placeholder in ``sys.modules`` that runs the real module the first time
one of its names is read (``asyncpg.connect``, ``asyncpg.PostgresError``, ``from asyncpg
import Record``): ``import asyncpg`` alone costs nothing. ``importlib.util.LazyLoader`` does
the same from Python 3.12 on; on 3.11 it loads on the import system's own look at
``__spec__``, which every ``import asyncpg`` does.

aiohttp resolves names with c-ares when aiodns can be imported (slixmpp installs it), which
costs about 1.4 MiB; :func:`import_aiohttp_lean` makes it use its other default, the system's
``getaddrinfo`` (``/etc/hosts``, nsswitch, as every other program on the host), and leaves
aiodns importable for slixmpp.

aiohttp also builds its two default TLS contexts at import, each reading the system's CA
bundle (about 2 MiB of parsed certificates for the two) though a bridge talking plain HTTP to a
homeserver on loopback never verifies a certificate. While aiohttp is imported, the reading
of the default certificates is recorded instead of done, and each context so created reads
them before its first handshake (:func:`load_deferred_certificates` does it off the event
loop beforehand; a context nobody prepared reads them at its first ``wrap_bio``/``wrap_socket``,
about 20 ms once).
"""

from __future__ import annotations

import importlib.util
import ssl
import sys
import threading
import types
import weakref
from typing import Any


class _Deferred(types.ModuleType):
    """A module whose code runs at the first read of a name it does not have yet."""

    def __getattr__(self, name: str) -> Any:
        # Only called for names not set yet: the import system's own (``__spec__``,
        # ``__path__``...) are set by module_from_spec, anything else (``__version__`` too)
        # needs the module's code.
        state: dict[str, Any] = self.__dict__["_mimi_deferred"]
        with state["lock"]:
            if state["loading"]:  # a name read while its own code runs: not there yet
                raise AttributeError(f"partially initialized module {self.__name__!r}: {name}")
            if not state["done"]:
                state["loading"] = True
                try:
                    spec = self.__spec__
                    assert spec is not None and spec.loader is not None
                    spec.loader.exec_module(self)
                except BaseException:
                    sys.modules.pop(self.__name__, None)
                    raise
                finally:
                    state["loading"] = False
                state["done"] = True
                self.__class__ = types.ModuleType  # type: ignore[assignment]  # plain from now on
                self.__dict__.pop("_mimi_deferred", None)
        return object.__getattribute__(self, name)


def defer(name: str) -> None:
    """Make ``import name`` cheap until one of the module's names is read. Nothing happens
    when it is imported already or not installed."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    module.__dict__["_mimi_deferred"] = {
        "lock": threading.RLock(),
        "loading": False,
        "done": False,
    }
    module.__class__ = _Deferred
    sys.modules[name] = module


# Contexts whose default certificates are still to be read -> the calls to make then.
_PENDING: weakref.WeakKeyDictionary[ssl.SSLContext, list[tuple[str, tuple[Any, ...]]]] = (
    weakref.WeakKeyDictionary()
)
_PENDING_LOCK = threading.Lock()


def _load_pending(ctx: ssl.SSLContext) -> None:
    with _PENDING_LOCK:
        calls = _PENDING.pop(ctx, None)
    if calls is None:
        return
    for vars_name in ("wrap_bio", "wrap_socket"):
        ctx.__dict__.pop(vars_name, None)
    for method, args in calls:
        getattr(ssl.SSLContext, method)(ctx, *args)


def _defer_certificates(ctx: ssl.SSLContext, method: str, args: tuple[Any, ...]) -> None:
    with _PENDING_LOCK:
        first = ctx not in _PENDING
        _PENDING.setdefault(ctx, []).append((method, args))
    if not first:
        return

    def wrap_bio(*a: Any, **k: Any) -> ssl.SSLObject:
        _load_pending(ctx)
        return ssl.SSLContext.wrap_bio(ctx, *a, **k)

    def wrap_socket(*a: Any, **k: Any) -> ssl.SSLSocket:
        _load_pending(ctx)
        return ssl.SSLContext.wrap_socket(ctx, *a, **k)

    # Instance attributes come before the class's methods: the first handshake loads them.
    ctx.__dict__["wrap_bio"] = wrap_bio
    ctx.__dict__["wrap_socket"] = wrap_socket


def load_deferred_certificates() -> None:
    """Read the default certificates of every context that deferred them (blocking: call it
    in a thread)."""
    with _PENDING_LOCK:
        contexts = list(_PENDING)
    for ctx in contexts:
        _load_pending(ctx)


def import_aiohttp_lean() -> None:
    """Import aiohttp while aiodns cannot be found, so that its ``DefaultResolver`` is the
    threaded ``getaddrinfo`` one, and with its default TLS contexts' certificates deferred.
    Nothing happens when aiohttp is imported already."""
    if "aiohttp" in sys.modules:
        return
    block_aiodns = "aiodns" not in sys.modules
    if block_aiodns:
        sys.modules["aiodns"] = None  # type: ignore[assignment]  # "import aiodns": ImportError
    real = {
        name: getattr(ssl.SSLContext, name)
        for name in ("load_default_certs", "set_default_verify_paths")
    }

    def deferring(name: str) -> Any:
        def record(self: ssl.SSLContext, *args: Any) -> None:
            _defer_certificates(self, name, args)

        return record

    try:
        for name in real:
            setattr(ssl.SSLContext, name, deferring(name))
        import aiohttp.connector  # noqa: F401
    finally:
        for name, method in real.items():
            setattr(ssl.SSLContext, name, method)
        if block_aiodns:
            del sys.modules["aiodns"]
