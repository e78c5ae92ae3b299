"""bridge/memory.py: freed start-up memory handed back to the system."""

from __future__ import annotations

import platform

from bridge.memory import release_freed_memory


def test_freed_memory_is_released_on_glibc() -> None:
    # Debian's libc is glibc: the trim must be found and called, not skipped.
    assert platform.libc_ver()[0] == "glibc"
    assert release_freed_memory() is True
