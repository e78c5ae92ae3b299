"""The ID-mapping database: portals, ghosts, users, logins, messages, reactions, and the
appservice transactions the homeserver pushed."""

from .ghosts import Ghost, GhostStore
from .messages import MessageRow, MessageStore, ReactionRow
from .open import DatabaseUnavailable, connector_tables, open_database
from .portals import Portal, PortalStore
from .transactions import PendingEvent, TransactionStore
from .users import LoginRow, UserStore

__all__ = [
    "DatabaseUnavailable",
    "Ghost",
    "GhostStore",
    "LoginRow",
    "MessageRow",
    "MessageStore",
    "PendingEvent",
    "Portal",
    "PortalStore",
    "ReactionRow",
    "TransactionStore",
    "UserStore",
    "connector_tables",
    "open_database",
]
