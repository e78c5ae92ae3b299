"""mimi-bridge: a Matrix application service with connector plugins."""

from .deferred import defer, import_aiohttp_lean

# Idle memory: see bridge/deferred.py.
defer("asyncpg")
import_aiohttp_lean()
