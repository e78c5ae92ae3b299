"""Client certificates for ``login irc <network> certfp``: a self-signed certificate per Matrix
user and network, whose fingerprint the user's services account knows (``NickServ CERT ADD``).

The certificate and its key travel in the login's credentials, which the core keeps encrypted.
``ssl`` loads a key only from a file: it is written for the moment of loading, itself encrypted
with a one-time passphrase, into a private temporary directory, and removed at once.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import os
import secrets
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path

VALID_DAYS = 3650  # services check the fingerprint, not the dates


class CertificateError(Exception):
    pass


def make_certificate(common_name: str) -> tuple[str, str]:
    """A new key and self-signed certificate (ECDSA P-256), as PEM texts (cert, key)."""
    # cryptography is imported here and in _load, not with the module: about 8 MiB that a
    # bridge with no certfp login never needs.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64] or "matrix")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


def fingerprint(cert_pem: str) -> str:
    """The SHA-256 fingerprint of the certificate (hex, as IRC servers show it)."""
    try:
        der = ssl.PEM_cert_to_DER_cert(cert_pem)
    except ValueError as e:
        raise CertificateError(f"the stored client certificate is damaged: {e}") from e
    return hashlib.sha256(der).hexdigest()


def _load(ctx: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(key_pem.encode(), None)
        x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError as e:
        raise CertificateError(f"the stored client certificate is damaged: {e}") from e
    passphrase = secrets.token_bytes(32)
    sealed = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )
    with tempfile.TemporaryDirectory(prefix="mimi-irc-") as tmp:
        os.chmod(tmp, 0o700)
        cert_file, key_file = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert_file.write_text(cert_pem)
        key_file.write_bytes(sealed)
        try:
            ctx.load_cert_chain(cert_file, key_file, password=passphrase)
        except ssl.SSLError as e:
            raise CertificateError(f"the client certificate cannot be used: {e}") from e


async def client_context(
    make_context: Callable[[], ssl.SSLContext | None], cert_pem: str, key_pem: str
) -> ssl.SSLContext:
    """A TLS context of the network (``make_context``) presenting the client certificate."""
    ctx = make_context()
    if ctx is None:
        raise CertificateError("a client certificate needs TLS (tls: true)")
    await asyncio.to_thread(_load, ctx, cert_pem, key_pem)
    return ctx
