"""validate_config."""

from __future__ import annotations

import pytest

from bridge.connector import ConfigError
from connectors.irc import IRCConnector
from connectors.irc.config import parse_config

OK = {"networks": {"libera": {"host": "irc.example.org", "tls": True}}}


def test_defaults() -> None:
    cfg = parse_config(OK)["libera"]
    assert cfg.port == 6697 and cfg.tls and cfg.tls_verify
    assert cfg.nick_template == "{displayname}[m]"
    assert cfg.line_limit == 3 and cfg.edits == "prefix" and cfg.reactions == "action"
    assert cfg.power_levels["o"] == 50 and cfg.power_levels["v"] == 10
    assert cfg.ssl_context() is not None
    assert cfg.auth == "sasl" and cfg.nickserv_nick == "NickServ"
    assert cfg.nickserv_identify == "IDENTIFY {account} {password}"


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({}, "networks"),
        ({"networks": {}}, "networks"),
        ({"networks": {"Bad_Id": {"host": "x"}}}, "networks.Bad_Id"),
        ({"networks": {"a": {}}}, "networks.a.host"),
        ({"networks": {"a": {"host": "x", "port": "six"}}}, "networks.a.port"),
        ({"networks": {"a": {"host": "x", "port": 70000}}}, "networks.a.port"),
        ({"networks": {"a": {"host": "x", "tls": "yes"}}}, "networks.a.tls"),
        ({"networks": {"a": {"host": "x", "edits": "diff"}}}, "networks.a.edits"),
        ({"networks": {"a": {"host": "x", "channels": ["nochan"]}}}, "networks.a.channels"),
        ({"networks": {"a": {"host": "x", "nick_template": "x"}}}, "networks.a.nick_template"),
        ({"networks": {"a": {"host": "x", "flood": {"rate": 0}}}}, "networks.a.flood.rate"),
        (
            {"networks": {"a": {"host": "x", "bot": {"sasl_account": "u"}}}},
            "networks.a.bot.sasl_password",
        ),
        ({"networks": {"a": {"host": "x", "auth": "pam"}}}, "networks.a.auth"),
        ({"networks": {"a": {"host": "x", "nickserv_nick": "#ns"}}}, "networks.a.nickserv_nick"),
        (
            {"networks": {"a": {"host": "x", "nickserv_identify": "IDENTIFY {account}"}}},
            "networks.a.nickserv_identify",
        ),
        (
            {"networks": {"a": {"host": "x", "nickserv_identify": "ID {pw} {password}"}}},
            "networks.a.nickserv_identify",
        ),
        (
            {"networks": {"a": {"host": "x", "reconnect": {"min_delay": 5, "max_delay": 1}}}},
            "networks.a.reconnect.max_delay",
        ),
    ],
)
def test_bad_config(config: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        IRCConnector.validate_config(config)
    assert info.value.key == key


def test_several_networks() -> None:
    cfgs = parse_config({"networks": {"a": {"host": "x"}, "b": {"host": "y", "port": 7000}}})
    assert set(cfgs) == {"a", "b"} and cfgs["b"].port == 7000 and not cfgs["a"].tls


def test_require_matrix_membership() -> None:
    assert parse_config(OK)["libera"].require_matrix_membership is True
    net = {"host": "x", "require_matrix_membership": False}
    assert parse_config({"networks": {"a": net}})["a"].require_matrix_membership is False
    net = {"host": "x", "require_matrix_membership": True}
    assert parse_config({"networks": {"a": net}})["a"].require_matrix_membership is True


@pytest.mark.parametrize("value", ["no", 0, 1, None, "false"])
def test_require_matrix_membership_must_be_a_boolean(value: object) -> None:
    net = {"host": "x", "require_matrix_membership": value}
    with pytest.raises(ConfigError) as info:
        IRCConnector.validate_config({"networks": {"a": net}})
    assert info.value.key == "networks.a.require_matrix_membership"
    assert str(info.value) == "networks.a.require_matrix_membership: must be true or false"
