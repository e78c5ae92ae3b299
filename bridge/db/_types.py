"""A row as both backends return it (asyncpg Record, sqlite3 Row): read by column name."""

from typing import Any

Record = Any
