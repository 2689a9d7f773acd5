"""Node identity: which chain address a Flower node acts for, and which SuperNode key it runs with.

Two bindings make a silo's identity:

* the consortium registers the silo's chain address with the hash of its SuperNode's
  public key (:func:`supernode_identity`, the contract's ``register(participant,
  identity)``): the key the SuperLink authenticates the node with
  (``flwr supernode register``);
* the node proves, per run, that it holds the chain key of the address it claims: it
  signs a fresh challenge of the coordinator's, bound to the contract, the run and its
  Flower node id, with EIP-191 (:func:`sign_identity`, :func:`recover_identity`).

Pure functions: no chain, no store, no Flower.
"""

from __future__ import annotations

from eth_abi import encode
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address

from ..errors import ConfigError

__all__ = ["CHALLENGE_BYTES", "identity_digest", "recover_identity", "sign_identity", "supernode_identity"]

#: Domain tag of the signed identity statement (a signature for anything else never matches).
IDENTITY_DOMAIN = "deai-flower/node-identity/v1"
#: Length of the coordinator's random challenge.
CHALLENGE_BYTES = 32


def supernode_identity(public_key: bytes) -> bytes:
    """keccak256 of a SuperNode public key's DER SubjectPublicKeyInfo.

    ``public_key`` may be OpenSSH (``ecdsa-sha2-nistp384 AAAA…``, the ``.pub`` file
    ``flwr supernode register`` takes) or PEM (as the SuperLink reports a node's key):
    both give the same 32 bytes, which the contract's registry binds to the silo's address.

    Raises:
        ConfigError: the bytes are not a public key in either format.
    """
    from cryptography.hazmat.primitives import serialization

    data = bytes(public_key).strip()
    try:
        if data.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_ssh_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"not an OpenSSH or PEM public key ({exc})") from None
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return keccak(der)


def identity_digest(*, challenge: bytes, contract: str, run_id: int, node_id: int) -> bytes:
    """The 32 bytes a node signs: ``keccak256(abi.encode(domain, challenge, contract, runId, nodeId))``."""
    if len(challenge) != CHALLENGE_BYTES:
        raise ValueError(f"identity challenge must be {CHALLENGE_BYTES} bytes (got {len(challenge)})")
    return keccak(encode(["string", "bytes32", "address", "uint256", "uint64"],
                         [IDENTITY_DOMAIN, challenge, to_checksum_address(contract), run_id, node_id]))  # fmt: skip


def sign_identity(account: LocalAccount, *, challenge: bytes, contract: str, run_id: int, node_id: int) -> bytes:
    """The node's EIP-191 signature (65 bytes) over :func:`identity_digest`."""
    digest = identity_digest(challenge=challenge, contract=contract, run_id=run_id, node_id=node_id)
    return bytes(account.sign_message(encode_defunct(primitive=digest)).signature)


def recover_identity(signature: bytes, *, challenge: bytes, contract: str, run_id: int, node_id: int) -> str | None:
    """The address that signed this statement, or None when the signature is malformed."""
    digest = identity_digest(challenge=challenge, contract=contract, run_id=run_id, node_id=node_id)
    try:
        return str(Account.recover_message(encode_defunct(primitive=digest), signature=bytes(signature)))
    except Exception:  # noqa: BLE001 - eth_keys raises several types for malformed signatures
        return None
