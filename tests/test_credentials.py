"""Login credentials sealed with the config's key."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bridge.credentials import CredentialBox, CredentialError


def test_sealed_credentials_open_with_the_same_key_only() -> None:
    token = CredentialBox("key one").seal({"password": "hunter2"})
    assert "hunter2" not in token
    assert CredentialBox("key one").open(token) == {"password": "hunter2"}
    with pytest.raises(CredentialError, match="credentials_key"):
        CredentialBox("key two").open(token)


def test_the_cipher_library_is_loaded_only_when_a_login_is_sealed_or_opened() -> None:
    # It takes about 6 MiB of memory: a bridge without stored logins does without it.
    code = (
        "import sys, bridge.bridge, bridge.credentials as c;"
        "box = c.CredentialBox('k');"
        "print('cryptography' in sys.modules);"
        "box.open(box.seal({}));"
        "print('cryptography' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "True"]
