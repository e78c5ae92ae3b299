"""Shard leases: which worker holds which shard's connections, in a JetStream key-value bucket.

A lease is one key per shard. A worker claims a free shard by creating its key (which fails
while another holds it) and renews it every ``renew_every`` by updating it with the revision
it last wrote (compare-and-set). The bucket's ``max_age`` is the lease's TTL: a key nobody
renews disappears and the shard is free. The revision is a fencing token: it only grows, and a
takeover always writes a higher one.

Safety: a worker stops acting on a shard (``on_lose``) before the key could have expired. Its
deadline counts from the moment it *sent* its last successful renewal (the server stored it
later, so the key lives at least that long), minus a margin for ``on_lose`` to close the
connections. A worker cut off from NATS therefore gives its shards up before another can take
them, and two workers never hold one shard's connections at once.

Balance: every worker announces itself in a second bucket (a key per worker, same TTL) and aims
at ``ceil(shards / live workers)``; one over its share releases shards (``on_lose``, then the key
is deleted) while others have room, and free shards are claimed by whoever has room, at most
``claims_per_second`` at a time so a moved set reconnects within a network's connect limits.

NATS 2.9 does not announce keys removed by ``max_age``, so a watcher's view of the buckets
treats a key not renewed for a TTL as gone (a create then tells for sure).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

log = logging.getLogger(__name__)

Callback = Callable[[str], Awaitable[None]]
T = TypeVar("T")

_KEY_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=/.")


def _check_key(what: str, key: str) -> None:
    if not key or key[0] == "." or key[-1] == "." or not set(key) <= _KEY_CHARS:
        raise ValueError(
            f"{what} {key!r} cannot be a NATS key: use letters, digits and -_=/. "
            "(not first or last)"
        )


async def _within(aw: Awaitable[T], seconds: float) -> T:
    """``aw``, or TimeoutError after ``seconds``. Unlike ``asyncio.wait_for`` on Python 3.11, it
    never swallows a cancellation that arrives as ``aw`` completes (a loop would outlive stop())."""
    async with asyncio.timeout(seconds):
        return await aw


@dataclass(eq=False)
class _Lease:
    revision: int
    # monotonic time by which on_lose must have been called unless a renewal succeeds
    valid_until: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class _Seen:
    """A key as a watcher last reported it."""

    revision: int
    value: dict[str, Any] | None  # None: deleted
    since: float  # monotonic time this revision was first seen


class _BucketView:
    """Every key of a bucket as a watcher reports it, rebuilt every ``refresh`` seconds (a
    fresh watcher lists only the keys still stored, and survives what an old one may not)."""

    def __init__(self, kv: KeyValue, name: str, refresh: float, changed: asyncio.Event) -> None:
        self._kv = kv
        self._name = name
        self._refresh = refresh
        self._changed = changed
        self.entries: dict[str, _Seen] = {}
        self.ready = asyncio.Event()
        self.closed = False

    def _apply(self, key: str, revision: int, value: dict[str, Any] | None, now: float) -> None:
        old = self.entries.get(key)
        if old is not None and old.revision >= revision:
            return
        self.entries[key] = _Seen(revision, value, now)
        if old is None or _holder(old.value) != _holder(value):
            self._changed.set()

    @staticmethod
    def _decode(entry: KeyValue.Entry) -> dict[str, Any] | None:
        if entry.operation is not None:  # DEL or PURGE
            return None
        try:
            value = json.loads(entry.value or b"")
        except ValueError:
            value = None
        return value if isinstance(value, dict) else {"worker": None}

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.closed:
            try:
                watcher = await self._kv.watchall()
            except Exception as exc:
                log.warning("cannot watch bucket %s (%s); retrying", self._name, exc)
                await asyncio.sleep(min(1.0, self._refresh))
                continue
            try:
                await self._follow(watcher, loop.time() + self._refresh)
            except Exception as exc:
                log.warning("watching bucket %s failed (%s); watching again", self._name, exc)
                await asyncio.sleep(min(1.0, self._refresh))
            finally:
                with contextlib.suppress(Exception):
                    await _within(watcher.stop(), 2.0)

    async def _follow(self, watcher: KeyValue.KeyWatcher, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        initial: dict[str, KeyValue.Entry] | None = {}
        while (left := deadline - loop.time()) > 0 and not self.closed:
            try:
                async with asyncio.timeout(left):
                    entry = await anext(watcher)
            except (TimeoutError, StopAsyncIteration):
                return
            now = loop.time()
            if entry is None:  # the end of what was stored when the watcher started
                if initial is not None:
                    for key in set(self.entries) - set(initial):
                        del self.entries[key]  # expired: the bucket no longer has it
                        self._changed.set()
                    for key, e in initial.items():
                        self._apply(key, e.revision or 0, self._decode(e), now)
                    initial = None
                    self.ready.set()
                continue
            if initial is not None:
                initial[entry.key] = entry
            else:
                self._apply(entry.key, entry.revision or 0, self._decode(entry), now)


def _holder(value: dict[str, Any] | None) -> tuple[Any, Any] | None:
    return None if value is None else (value.get("worker"), value.get("instance"))


async def open_bucket(js: JetStreamContext, name: str, ttl: float) -> tuple[KeyValue, float]:
    """The bucket (created with ``max_age`` = ``ttl`` if missing) and its actual TTL."""
    _check_key("bucket", name)
    try:
        kv = await js.key_value(name)
    except nats.js.errors.BucketNotFoundError:
        try:
            kv = await js.create_key_value(
                KeyValueConfig(
                    bucket=name,
                    description="mimi-bridge shard leases",
                    history=1,
                    ttl=ttl,
                    storage=StorageType.FILE,
                )
            )
        except nats.js.errors.BadRequestError:
            kv = await js.key_value(name)  # another worker created it first
    status = await kv.status()
    actual = status.ttl
    if not actual:
        raise ValueError(
            f"NATS bucket {name} keeps keys forever, so a dead worker's leases would never "
            f"expire: delete the bucket (nats kv rm {name}) to have it created with a TTL"
        )
    if not math.isclose(actual, ttl, rel_tol=0.01):
        log.warning(
            "bucket %s has a TTL of %.1f s, not %.1f s: using %.1f s", name, actual, ttl, actual
        )
    return kv, actual


class ShardLeases:
    """Hold a fair share of ``shards`` among the live workers sharing ``bucket``.

    ``on_gain(shard)`` runs (as a task) once a shard is this worker's; ``on_lose(shard)`` once it
    no longer is, before another worker could claim it: it must close the shard's connections
    within ``lose_margin`` seconds. Errors in either are logged and change nothing else."""

    def __init__(
        self,
        js: JetStreamContext,
        worker_id: str,
        shards: Sequence[str],
        *,
        on_gain: Callback,
        on_lose: Callback,
        ttl: float = 15.0,
        renew_every: float = 5.0,
        bucket: str = "mimi_shards",
        presence_bucket: str | None = None,
        claims_per_second: float = 10.0,
        lose_margin: float | None = None,
        request_timeout: float | None = None,
    ) -> None:
        _check_key("worker id", worker_id)
        for shard in shards:
            _check_key("shard", shard)
        if len(set(shards)) != len(shards):
            raise ValueError("shards must not repeat")
        if claims_per_second <= 0:
            raise ValueError("claims_per_second must be positive")
        self._js = js
        self.worker_id = worker_id
        self._shards = list(shards)
        self._on_gain = on_gain
        self._on_lose = on_lose
        self._ttl = ttl
        self._renew_every = renew_every
        self._bucket = bucket
        self._presence_bucket = presence_bucket or f"{bucket}_workers"
        self._pace = 1.0 / claims_per_second
        self._margin = lose_margin if lose_margin is not None else max(1.0, ttl / 5)
        self._timeout = request_timeout or min(renew_every, 2.0)
        self._check_timing(ttl)
        # another process of the same worker id (a restart) is someone else
        self._instance = secrets.token_hex(8)
        self._value = json.dumps({"worker": worker_id, "instance": self._instance}).encode()
        self._held: dict[str, _Lease] = {}
        self._gains: dict[str, asyncio.Task[None]] = {}
        self._gained: set[str] = set()
        self._giving_up: set[asyncio.Task[None]] = set()
        self._retry_at: dict[str, float] = {}
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._kv: KeyValue | None = None
        self._presence: KeyValue | None = None
        self._shard_view: _BucketView | None = None
        self._worker_view: _BucketView | None = None
        self._rng = random.Random()
        self._closing = False

    def _check_timing(self, ttl: float) -> None:
        if self._renew_every + self._timeout >= ttl - self._margin:
            raise ValueError(
                f"a lease of {ttl} s cannot be renewed every {self._renew_every} s "
                f"(requests time out after {self._timeout} s, on_lose gets {self._margin} s): "
                "renew more often or use a longer TTL"
            )

    # -- public -----------------------------------------------------------------------------

    def owned(self) -> frozenset[str]:
        return frozenset(self._held)

    def revision(self, shard: str) -> int | None:
        """The lease's current KV revision: it grows with every renewal and takeover, so a
        higher one always comes from the later holder."""
        lease = self._held.get(shard)
        return None if lease is None else lease.revision

    async def start(self) -> None:
        self._kv, self._ttl = await open_bucket(self._js, self._bucket, self._ttl)
        self._presence, _ = await open_bucket(self._js, self._presence_bucket, self._ttl)
        self._check_timing(self._ttl)
        await self._announce()
        self._shard_view = _BucketView(self._kv, self._bucket, self._ttl, self._changed)
        self._worker_view = _BucketView(
            self._presence, self._presence_bucket, self._ttl, self._changed
        )
        self._tasks = [
            asyncio.create_task(self._shard_view.run(), name="leases-watch-shards"),
            asyncio.create_task(self._worker_view.run(), name="leases-watch-workers"),
        ]
        # decide on what is there, not on an empty view
        with contextlib.suppress(TimeoutError):
            await _within(
                asyncio.gather(self._shard_view.ready.wait(), self._worker_view.ready.wait()),
                self._ttl,
            )
        self._tasks += [
            asyncio.create_task(self._renew_loop(), name="leases-renew"),
            asyncio.create_task(self._watchdog(), name="leases-watchdog"),
            asyncio.create_task(self._balance_loop(), name="leases-balance"),
        ]

    async def stop(self, release: bool = True) -> None:
        """Give up every shard (``on_lose`` each); with ``release`` delete the keys too, so
        other workers take over at once instead of after the TTL."""
        self._closing = True
        for view in (self._shard_view, self._worker_view):
            if view is not None:
                view.closed = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, *self._giving_up, return_exceptions=True)
        held, self._held = self._held, {}
        await asyncio.gather(*(self._give_up(s, lease, release) for s, lease in held.items()))
        if release and self._presence is not None:
            with contextlib.suppress(Exception):
                await _within(self._presence.delete(self.worker_id), self._timeout)

    # -- holding ------------------------------------------------------------------------------

    async def _announce(self) -> None:
        assert self._presence is not None
        await _within(self._presence.put(self.worker_id, self._value), self._timeout)

    async def _renew_loop(self) -> None:
        while not self._closing:
            results = await asyncio.gather(
                self._announce(),
                *(self._renew(s, lease) for s, lease in list(self._held.items())),
                return_exceptions=True,
            )
            ok = all(r is True or r is None for r in results)
            if not ok:
                log.debug("some renewals failed: %s", [r for r in results if r not in (True, None)])
            await asyncio.sleep(self._renew_every if ok else min(self._renew_every, 1.0))

    async def _renew(self, shard: str, lease: _Lease) -> bool:
        assert self._kv is not None
        loop = asyncio.get_running_loop()
        async with lease.lock:
            if self._held.get(shard) is not lease:
                return True
            sent = loop.time()
            try:
                revision = await _within(
                    self._kv.update(shard, self._value, last=lease.revision), self._timeout
                )
            except nats.js.errors.KeyWrongLastSequenceError:
                return await self._mismatch(shard, lease)
            except (TimeoutError, nats.errors.Error) as exc:
                log.debug("renewing %s failed: %s", shard, exc)
                return False
            if self._held.get(shard) is lease:
                lease.revision = revision
                lease.valid_until = sent + self._ttl - self._margin
                return True
        # given up while the renewal was under way: let the next worker have it at once
        with contextlib.suppress(Exception):
            await _within(self._kv.delete(shard, last=revision), self._timeout)
        return True

    async def _mismatch(self, shard: str, lease: _Lease) -> bool:
        """The key is not at the revision this worker wrote last: either an earlier renewal
        went through without its answer arriving, or the lease is someone else's now."""
        assert self._kv is not None
        try:
            entry: KeyValue.Entry | None = await _within(self._kv.get(shard), self._timeout)
        except nats.js.errors.KeyNotFoundError:
            entry = None
        except (TimeoutError, nats.errors.Error):
            return False
        if entry is not None and entry.value == self._value and entry.revision:
            lease.revision = entry.revision  # the deadline stays: the next renewal moves it
            return False
        log.warning("lease on shard %s was taken over; giving it up", shard)
        if self._held.get(shard) is lease:
            del self._held[shard]
            await self._lose(shard)
        return True

    async def _watchdog(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            now = loop.time()
            late = [(s, lease) for s, lease in self._held.items() if lease.valid_until <= now]
            for shard, _ in late:
                del self._held[shard]
                log.warning("could not renew the lease on shard %s in time; giving it up", shard)
            for shard, lease in late:
                task = asyncio.create_task(self._give_up(shard, lease, True))
                self._giving_up.add(task)
                task.add_done_callback(self._giving_up.discard)
            if late:
                self._changed.set()
            nearest = min((lease.valid_until for lease in self._held.values()), default=now + 1)
            await asyncio.sleep(max(0.0, min(nearest - loop.time(), 0.25)))

    async def _give_up(self, shard: str, lease: _Lease, delete: bool) -> None:
        """``on_lose``, then (if asked) delete the key so the next worker need not wait."""
        await self._lose(shard)
        if delete and self._kv is not None:
            try:
                await _within(self._kv.delete(shard, last=lease.revision), self._timeout)
            except Exception as exc:
                log.debug("could not delete lease %s (it expires on its own): %s", shard, exc)

    async def _lose(self, shard: str) -> None:
        task = self._gains.pop(shard, None)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])
        if shard not in self._gained:
            return
        self._gained.discard(shard)
        try:
            await self._on_lose(shard)
        except Exception:
            log.exception("on_lose failed for shard %s", shard)

    async def _gain(self, shard: str) -> None:
        self._gained.add(shard)
        try:
            await self._on_gain(shard)
        except Exception:
            log.exception("on_gain failed for shard %s", shard)

    # -- balance ------------------------------------------------------------------------------

    async def _balance_loop(self) -> None:
        while not self._closing:
            action = self._next_action()
            if action is None:
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await _within(self._changed.wait(), 0.5)
                continue
            kind, shard = action
            if kind == "claim":
                await self._claim(shard)
            else:
                await self._release(shard)
            await asyncio.sleep(self._pace)

    def _next_action(self) -> tuple[str, str] | None:
        assert self._shard_view is not None and self._worker_view is not None
        now = asyncio.get_running_loop().time()
        live = {
            key
            for key, seen in self._worker_view.entries.items()
            if seen.value is not None and now - seen.since < self._ttl
        }
        live.add(self.worker_id)
        counts: Counter[str] = Counter()
        free: list[str] = []
        for shard in self._shards:
            if shard in self._held:
                continue
            seen = self._shard_view.entries.get(shard)
            if seen is None or seen.value is None or now - seen.since >= self._ttl:
                if self._retry_at.get(shard, 0.0) <= now:
                    free.append(shard)
            else:
                counts[str(seen.value.get("worker"))] += 1
        mine = len(self._held)
        total = len(self._shards)
        target = math.ceil(total / len(live))
        floor = total // len(live)
        others = [w for w in live if w != self.worker_id]
        if mine < target and free:
            mains = [s for s in free if s.endswith(".main")]
            return "claim", (mains[0] if mains else self._rng.choice(free))
        # release only into room others have and free shards do not fill already
        if mine > target:
            room = sum(max(0, target - counts[w]) for w in others)
        elif mine == target > floor:
            room = sum(max(0, floor - counts[w]) for w in others)
        else:
            room = 0
        if room > len(free):
            candidates = [s for s in self._held if not s.endswith(".main")] or list(self._held)
            return "release", self._rng.choice(candidates)
        return None

    async def _claim(self, shard: str) -> None:
        assert self._kv is not None
        loop = asyncio.get_running_loop()
        sent = loop.time()
        try:
            revision = await _within(self._kv.create(shard, self._value), self._timeout)
        except nats.js.errors.KeyWrongLastSequenceError:
            # still held (the view had not seen its renewal): look again a little later
            self._retry_at[shard] = sent + min(1.0, self._renew_every)
            return
        except (TimeoutError, nats.errors.Error) as exc:
            log.debug("claiming %s failed: %s", shard, exc)
            self._retry_at[shard] = sent + 1.0
            return
        self._held[shard] = _Lease(revision, sent + self._ttl - self._margin)
        self._gains[shard] = asyncio.create_task(self._gain(shard), name=f"gain-{shard}")

    async def _release(self, shard: str) -> None:
        lease = self._held.get(shard)
        if lease is None:
            return
        async with lease.lock:
            if self._held.get(shard) is not lease:
                return
            del self._held[shard]
            # not straight back: leave it to the worker that has room
            self._retry_at[shard] = asyncio.get_running_loop().time() + self._renew_every
            await self._give_up(shard, lease, True)
