"""The core's proxy of a connector run on workers: a worker names a client by its object's
address, which a client made per call (as IRC's were) may share with an earlier, freed one.
The proxy of a client is never another user's, nor the same user's in another portal: its
operations would go out as that user, or to that portal."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from mimi_testnet import TestNetConnector

from bridge.connector import MatrixUser, PortalKey
from bridge.scale.core_proxy import proxy_for
from bridge.scale.op_requests import OpRequests


def test_a_handle_seen_again_is_not_taken_for_an_earlier_client() -> None:
    local = TestNetConnector(SimpleNamespace(log=logging.getLogger("test")), {})
    requests = OpRequests(None, logging.getLogger("test"), request_timeout_s=1, unowned_notice_s=1)
    proxy = proxy_for(local, requests)
    answer = {"handle": "w1/7f3a2c", "caps": ["EditHandling"]}
    ann, bob = MatrixUser("@ann:x", "Ann", "user"), MatrixUser("@bob:x", "Bob", "user")
    lobby, other = PortalKey("testnet", "lobby"), PortalKey("testnet", "other")

    for_ann = proxy._client(answer, ann, lobby)
    for_bob = proxy._client(answer, bob, lobby)
    for_ann_elsewhere = proxy._client(answer, ann, other)
    assert for_bob is not for_ann and for_bob._user is bob and for_bob._portal == lobby
    assert for_ann_elsewhere is not for_ann and for_ann_elsewhere._portal == other
    # The same client asked for again: the same proxy (presence goes once per client).
    assert proxy._client(dict(answer), MatrixUser("@ann:x", "Ann", "user"), lobby) is for_ann
    # Another client's capabilities under the handle: a proxy with those.
    plain = proxy._client({"handle": "w1/7f3a2c", "caps": []}, ann, lobby)
    assert plain is not for_ann and not hasattr(plain, "handle_matrix_edit")
    assert hasattr(for_ann, "handle_matrix_edit")
