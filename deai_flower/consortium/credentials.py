"""A silo's and the SuperLink's credentials, written as files the deployment reads.

* :func:`create_keystore`: a silo's chain key as an encrypted keystore (Web3 Secret
  Storage, what geth and eth_account read) and its password file;
* :func:`create_tls`: a certificate authority and the SuperLink's TLS certificate
  (``flower-superlink --ssl-ca-certfile/--ssl-certfile/--ssl-keyfile``; SuperNodes and
  ``flwr`` trust the CA certificate);
* :func:`create_supernode_keys`: a SuperNode's EC P-384 key pair in OpenSSH format
  (``flower-supernode --auth-supernode-private-key``, ``flwr supernode register KEY.pub``).

Nothing is ever overwritten: an existing file is a :class:`ConsortiumError` naming it.
Private files are created readable by their owner only.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account

from ..protocol.identity import supernode_identity
from .errors import ConsortiumError

__all__ = ["SiloKey", "SupernodeKeys", "TlsFiles", "create_keystore", "create_supernode_keys", "create_tls"]


def _free(paths: Iterable[Path]) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise ConsortiumError(f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
                              "nothing was written (remove them or choose another --out or --name)")  # fmt: skip


def _write(path: Path, data: bytes, *, private: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


@dataclass(frozen=True)
class SiloKey:
    address: str
    keystore: Path
    password_file: Path


def create_keystore(out_dir: Path, name: str, *, password: str | None = None, kdf: str = "scrypt",
                    iterations: int | None = None) -> SiloKey:  # fmt: skip
    """A fresh chain key, encrypted to ``OUT/NAME.keystore.json`` with the password written
    to ``OUT/NAME.password`` (a random one unless given). ``iterations``: the KDF's work
    factor (eth_account's default when None; lower only in tests)."""
    out_dir = Path(out_dir)
    keystore, password_file = out_dir / f"{name}.keystore.json", out_dir / f"{name}.password"
    _free([keystore, password_file])
    if kdf not in ("scrypt", "pbkdf2"):
        raise ConsortiumError(f"kdf must be scrypt or pbkdf2 (got {kdf!r})")
    password = secrets.token_urlsafe(24) if password is None else password
    account = Account.create()
    document = Account.encrypt(account.key, password, kdf=kdf, iterations=iterations)
    _write(password_file, (password + "\n").encode(), private=True)
    _write(keystore, json.dumps(document).encode(), private=True)
    return SiloKey(account.address, keystore.resolve(), password_file.resolve())


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def create_tls(out_dir: Path, *, hosts: Iterable[str] = (), days: int = 365) -> TlsFiles:
    """A CA (``ca.crt``, ``ca.key``) and a SuperLink certificate it signs (``server.pem``,
    ``server.key``) valid for ``localhost``, ``127.0.0.1``, ``::1`` and ``hosts`` (names
    or IP addresses the SuperNodes and ``flwr`` reach the SuperLink by)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out_dir = Path(out_dir)
    files = TlsFiles(out_dir / "ca.crt", out_dir / "ca.key", out_dir / "server.pem", out_dir / "server.key")
    _free([files.ca_cert, files.ca_key, files.server_cert, files.server_key])
    names: list[x509.GeneralName] = []
    for host in ["localhost", "127.0.0.1", "::1", *hosts]:
        name: x509.GeneralName
        try:
            name = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            if not host or any(c in host for c in " /:"):
                raise ConsortiumError(f"--host {host!r} is neither a host name nor an IP address") from None
            name = x509.DNSName(host.lower())  # DNS names are case-insensitive
        if name not in names:  # --host localhost (or a name given twice) is named once
            names.append(name)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "deai-flower consortium CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "deai-flower SuperLink")]))
        .issuer_name(ca_name).public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    no_password = serialization.NoEncryption()
    _write(files.ca_key, ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, no_password), private=True)
    _write(files.ca_cert, ca_cert.public_bytes(pem), private=False)
    _write(files.server_key, server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, no_password),
           private=True)  # fmt: skip
    _write(files.server_cert, server_cert.public_bytes(pem), private=False)
    return TlsFiles(*(p.resolve() for p in (files.ca_cert, files.ca_key, files.server_cert, files.server_key)))


@dataclass(frozen=True)
class SupernodeKeys:
    private_key: Path
    public_key: Path
    identity: bytes  # what the registry binds to the silo's address


def create_supernode_keys(out_dir: Path, name: str) -> SupernodeKeys:
    """An EC P-384 key pair, OpenSSH format: ``OUT/NAME`` (private) and ``OUT/NAME.pub``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out_dir = Path(out_dir)
    private_path, public_path = out_dir / name, out_dir / f"{name}.pub"
    _free([private_path, public_path])
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())  # fmt: skip
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(private_path, private, private=True)
    _write(public_path, public + f" {name}\n".encode(), private=False)
    return SupernodeKeys(private_path.resolve(), public_path.resolve(), supernode_identity(public))
