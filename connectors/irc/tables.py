"""The IRC connector's tables in the bridge's database, as migrations (history: a released
migration is never changed; a change to the tables is a new one at the end).

Version 1 is the schema of the releases that created the table themselves: ``IF NOT EXISTS``
lets it adopt it as it is."""

from __future__ import annotations

from bridge.connector import Migrations

MIGRATIONS: Migrations = [
    # 1: custom nicks of Matrix users' puppets (``irc nick``).
    "CREATE TABLE IF NOT EXISTS irc_puppet_nick (network TEXT NOT NULL, "
    "user_id TEXT NOT NULL, nick TEXT NOT NULL, PRIMARY KEY (network, user_id))",
    # 2: when each Matrix user last sent a message through a network (milliseconds since the
    # epoch): reconnects after a restart go most recent first.
    "CREATE TABLE irc_puppet_activity (network TEXT NOT NULL, user_id TEXT NOT NULL, "
    "last_message BIGINT NOT NULL, PRIMARY KEY (network, user_id))",
    # 3: auto-commands after connect (``irc autocmd``), a JSON list per user and network.
    "CREATE TABLE irc_autocmd (network TEXT NOT NULL, user_id TEXT NOT NULL, "
    "commands TEXT NOT NULL, PRIMARY KEY (network, user_id))",
    # 4: channels whose puppet stays after its Matrix user left the portal room
    # (``require_matrix_membership: false``), by the portal's channel id.
    "CREATE TABLE irc_kept_seat (network TEXT NOT NULL, user_id TEXT NOT NULL, "
    "channel TEXT NOT NULL, PRIMARY KEY (network, user_id, channel))",
    # 5: the nick each connected puppet has now, folded (rfc1459), and the connector instance
    # holding it: when the connector runs split across scale-out workers, the listening bot
    # tells the other instances' puppets from IRC users by it (puppet_nicks.py).
    "CREATE TABLE irc_live_nick (network TEXT NOT NULL, nick TEXT NOT NULL, "
    "user_id TEXT NOT NULL, instance TEXT NOT NULL, PRIMARY KEY (network, nick))",
]
