"""Credentials: keystores, the SuperLink's TLS files and SuperNode key pairs, never overwritten."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from deai_flower.chain import keystore_key
from deai_flower.consortium.credentials import create_keystore, create_supernode_keys, create_tls
from deai_flower.consortium.errors import ConsortiumError
from deai_flower.protocol.identity import supernode_identity


def test_a_keystore_decrypts_with_its_password_file_and_is_private(tmp_path: Path) -> None:
    key = create_keystore(tmp_path, "silo-0", iterations=2**4)
    assert keystore_key(key.keystore, password_file=key.password_file).address == key.address
    assert stat.S_IMODE(key.keystore.stat().st_mode) == stat.S_IMODE(key.password_file.stat().st_mode) == 0o600
    given = create_keystore(tmp_path, "silo-1", password="chosen", kdf="pbkdf2", iterations=2)
    assert given.password_file.read_text() == "chosen\n"
    with pytest.raises(ConsortiumError, match=r"silo-0.keystore.json, .*silo-0.password already exist"):
        create_keystore(tmp_path, "silo-0")


def test_tls_files_chain_to_the_ca_and_name_the_superlinks_hosts(tmp_path: Path) -> None:
    files = create_tls(tmp_path, hosts=["link.example.org", "10.0.0.7"])
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "link.example.org"} <= set(names.get_values_for_type(x509.DNSName))
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1", "10.0.0.7"}
    key = serialization.load_pem_private_key(files.server_key.read_bytes(), password=None)
    assert key.public_key().public_numbers() == server.public_key().public_numbers()  # type: ignore[union-attr]
    with pytest.raises(ConsortiumError, match="already exist"):
        create_tls(tmp_path)
    with pytest.raises(ConsortiumError, match="neither a host name nor an IP"):
        create_tls(tmp_path / "other", hosts=["https://link"])


def test_each_tls_name_is_in_the_certificate_once(tmp_path: Path) -> None:
    hosts = ["localhost", "127.0.0.1", "0:0:0:0:0:0:0:1", "Link.example.org", "link.example.org"]
    files = create_tls(tmp_path, hosts=hosts)
    names = x509.load_pem_x509_certificate(files.server_cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value  # fmt: skip
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "link.example.org"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]


def test_supernode_keys_are_what_flower_loads(tmp_path: Path) -> None:
    from flwr.cli.supernode.register import try_load_public_key

    keys = create_supernode_keys(tmp_path, "silo-0")
    private = serialization.load_ssh_private_key(keys.private_key.read_bytes(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
    assert keys.public_key.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert supernode_identity(try_load_public_key(keys.public_key)) == keys.identity  # what the SuperLink stores
    with pytest.raises(ConsortiumError, match="already exist"):
        create_supernode_keys(tmp_path, "silo-0")
