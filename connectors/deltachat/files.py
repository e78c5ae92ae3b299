"""Files between Matrix and the Delta Chat core: a file from Matrix is written to a directory
of its own for the core to take and removed after; a picture the core holds (an avatar)
becomes an attachment."""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from bridge.connector import Attachment


@contextlib.asynccontextmanager
async def staged(outdir: Path, filename: str, data: bytes) -> AsyncIterator[Path]:
    """``data`` in ``outdir/<random>/<filename>`` while the block runs."""
    path = outdir / uuid.uuid4().hex / filename
    await asyncio.to_thread(_write, path, data)
    try:
        yield path
    finally:
        await asyncio.to_thread(shutil.rmtree, path.parent, ignore_errors=True)


async def read_picture(path: str) -> Attachment | None:
    """A picture of the core's as an attachment; None when it cannot be read."""
    try:
        data = await asyncio.to_thread(Path(path).read_bytes)
    except OSError:
        return None
    mime = mimetypes.guess_type(path)[0] or "image/jpeg"
    return Attachment(filename=Path(path).name, mimetype=mime, data=data)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
