"""Node identity: the SuperNode key hash and the signed challenge."""

from __future__ import annotations

import secrets

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from eth_account import Account

from deai_flower.protocol.identity import recover_identity, sign_identity, supernode_identity
from deai_flower.errors import ConfigError

CONTRACT = "0x" + "ab" * 20


def test_a_supernode_key_has_one_identity_whatever_its_encoding() -> None:
    public = ec.generate_private_key(ec.SECP384R1()).public_key()
    openssh = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert supernode_identity(openssh + b" silo-0\n") == supernode_identity(pem) != supernode_identity(
        ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    assert len(supernode_identity(pem)) == 32
    with pytest.raises(ConfigError, match="not an OpenSSH or PEM public key"):
        supernode_identity(b"ssh-rsa garbage")


def test_a_signature_recovers_only_for_the_statement_it_signed() -> None:
    account, challenge = Account.create(), secrets.token_bytes(32)
    statement = {"challenge": challenge, "contract": CONTRACT, "run_id": 3, "node_id": 2**63 + 5}
    signature = sign_identity(account, **statement)
    assert recover_identity(signature, **statement) == account.address
    for change in ({"challenge": secrets.token_bytes(32)}, {"contract": "0x" + "cd" * 20}, {"run_id": 4},
                   {"node_id": 6}):  # fmt: skip
        assert recover_identity(signature, **{**statement, **change}) != account.address
    assert recover_identity(b"\x00" * 10, **statement) is None
    with pytest.raises(ValueError, match="32 bytes"):
        sign_identity(account, **{**statement, "challenge": b"short"})
