"""Client certificates of certfp logins (connectors/irc/certs.py)."""

from __future__ import annotations

import hashlib
import ssl
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from connectors.irc.certs import CertificateError, client_context, fingerprint, make_certificate


def test_fingerprint_is_the_sha256_of_the_certificate() -> None:
    cert, _key = make_certificate("alice")
    der = x509.load_pem_x509_certificate(cert.encode()).public_bytes(serialization.Encoding.DER)
    assert fingerprint(cert) == hashlib.sha256(der).hexdigest()


def test_a_damaged_certificate_is_a_certificate_error() -> None:
    with pytest.raises(CertificateError):
        fingerprint("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")


async def test_the_certificate_loads_into_a_tls_context() -> None:
    cert, key = make_certificate("alice")
    ctx = await client_context(lambda: ssl.create_default_context(), cert, key)
    assert isinstance(ctx, ssl.SSLContext)
    with pytest.raises(CertificateError):
        await client_context(lambda: ssl.create_default_context(), cert, "damaged")


def test_the_connector_loads_cryptography_only_for_certfp() -> None:
    # About 8 MiB of idle memory for a bridge with no certfp login.
    code = "import sys, connectors.irc; print('cryptography' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
