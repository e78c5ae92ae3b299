"""Shard names: fixed for fixed user ids in every version, since a core and its workers are
upgraded one at a time and must agree on which worker holds whose connections."""

from __future__ import annotations

import pytest

from bridge.scale.shards import all_shards, shard_of


@pytest.mark.parametrize(
    ("user", "shard", "of_16"),
    [
        ("@alice:example.org", "irc.74", "irc.10"),
        ("@bob:example.org", "irc.65", "irc.1"),
        ("@zoë:example.org", "irc.221", "irc.13"),
        ("@mimibot:localhost", "irc.143", "irc.15"),
        ("@a:b", "irc.59", "irc.11"),
    ],
)
def test_a_user_always_lands_on_the_same_shard(user: str, shard: str, of_16: str) -> None:
    assert shard_of("irc", user) == shard
    assert shard_of("irc", user, shards=16) == of_16


def test_bots_and_components_live_on_the_main_shard() -> None:
    assert shard_of("irc", None) == "irc.main"
    assert shard_of("xmpp", None, shards=4) == "xmpp.main"


def test_all_shards_lists_every_shard_once_with_main() -> None:
    shards = all_shards("irc")
    assert len(shards) == len(set(shards)) == 257
    assert shards[0] == "irc.0" and shards[-1] == "irc.main"
    users = [f"@user{n}:example.org" for n in range(2000)]
    assert {shard_of("irc", u) for u in users} <= set(shards)
    # spread: 2,000 users reach nearly every one of 256 shards
    assert len({shard_of("irc", u) for u in users}) > 240


@pytest.mark.parametrize("network", ["", "irc.libera", "irc*", "a b"])
def test_a_network_name_that_cannot_name_a_shard_is_refused(network: str) -> None:
    with pytest.raises(ValueError, match="cannot name a shard"):
        shard_of(network, "@alice:example.org")


def test_zero_shards_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one shard"):
        all_shards("irc", 0)


def test_a_scope_answers_by_the_same_mapping() -> None:
    from bridge.connector import ShardScope

    users = [f"@u{n}:example.org" for n in range(50)]
    held = frozenset({shard_of("net", u) for u in users[:10]} | {"net.main"})
    scope = ShardScope(held)
    assert scope.main("net") and not scope.main("other")
    assert all(scope.owns("net", u) for u in users[:10])
    assert all(scope.owns("net", u) == (shard_of("net", u) in held) for u in users)
    assert not any(scope.owns("other", u) for u in users)
    assert not ShardScope(frozenset({"net.3"})).main("net")
