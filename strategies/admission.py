"""Node admission: which Flower nodes act for which registered chain address.

A node is asked to act only once it has proven a registered address (design: identity):
it signs a fresh challenge with its chain key, and where the SuperLink reports its
SuperNode public key (a deployment with node authentication) that key must be the one
registered with the address. A node whose proof fails is refused with its reason.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from logging import WARNING
from typing import Any

from eth_utils import is_address, to_checksum_address
from flwr.common import log
from flwr.serverapp import Grid

from deai_flower.chain import RoundsContract
from deai_flower.protocol.identity import CHALLENGE_BYTES, recover_identity, supernode_identity
from deai_flower.errors import ConfigError, ProtocolError
from deai_flower.messages import IdentityReply, IdentityRequest, read_reply, request_message

__all__ = ["NodeAdmission"]


class NodeAdmission:
    """The nodes of one run that proved their chain address, and those refused.

    Parameters
    ----------
    contract, run_id:
        The run the nodes prove their address for (the challenge is bound to both).
    locator:
        Where the run is, sent with every identity query.
    bind_supernode_keys:
        Require the SuperNode key the SuperLink reports to be the one registered with the
        address. Only a SuperLink with node authentication reports real keys; Flower's
        simulation runtime makes up random ones, which no registry entry can match.
    timeout_s:
        How long to wait for the nodes' answers.
    """

    def __init__(self, *, contract: RoundsContract, run_id: int, locator: Mapping[str, Any],
                 bind_supernode_keys: bool, timeout_s: float) -> None:  # fmt: skip
        self.contract = contract
        self.run_id = run_id
        self.locator = dict(locator)
        self.bind_supernode_keys = bind_supernode_keys
        self.timeout_s = timeout_s
        #: The nodes that proved their chain address, by node id.
        self.addresses: dict[int, str] = {}
        #: Nodes refused (identity proof failed, cannot serve, terms refuse the run): the
        #: address they claimed or are bound to, and why.
        self.refused: dict[int, dict[str, str]] = {}
        self._asked: set[int] = set()  # nodes asked for their address already
        self._silent: set[int] = set()  # asked, but no answer (error or none): asked again

    def name(self, node_id: int) -> str:
        """The node's proven address, or its node id when it has none."""
        return self.addresses.get(node_id, str(node_id))

    def discover(self, grid: Grid) -> None:
        """Learn the chain address of every node not asked before, keeping only nodes
        that prove it: a node that connects after the first round takes part from the next.

        Each new node gets a fresh random challenge and must return an EIP-191 signature
        over (challenge, contract, run id, its node id) that recovers to the address it
        claims; that address must be registered and, where the SuperLink reports the
        node's SuperNode public key (a deployment with node authentication), registered
        with that key's identity hash; and no other node may have proven it already. A
        node whose proof fails is refused with its reason (:attr:`refused`) and never
        asked again. A node that did not answer (an error reply, or none in time) is not
        refused for good: it is asked again at the next round's discovery, since a
        transient fault must not exclude a silo for the rest of the run.
        """
        keys = {int(info.node_id): bytes(info.public_key) for info in grid.get_nodes()}
        new = [n for n in keys if n not in self._asked or n in self._silent]
        self._asked.update(new)
        self._silent.difference_update(new)
        if not new:
            return
        challenges = {n: IdentityRequest(challenge=secrets.token_bytes(CHALLENGE_BYTES)) for n in new}
        messages = [request_message(challenges[n], self.locator, node_id=n, group_id="identity") for n in new]
        replies = list(grid.send_and_receive(messages, timeout=self.timeout_s))
        answered = set()
        for reply in replies:
            node_id = int(reply.metadata.src_node_id)
            answered.add(node_id)
            if reply.has_error():
                self._silent.add(node_id)
                self._unavailable(node_id, keys.get(node_id, b""), _error_line(reply.error.reason))
                log(WARNING, "node %s did not prove its chain address (%s); it is asked again next round",
                    node_id, reply.error.reason)  # fmt: skip
                continue
            try:
                claim: IdentityReply = read_reply(IdentityReply, reply)
            except ProtocolError as exc:
                self.refuse(node_id, "", f"its identity proof is malformed: {exc}")
                continue
            reason = self._identity_problem(node_id, claim, challenges[node_id].challenge, keys.get(node_id, b""))
            if reason:
                self.refuse(node_id, claim.address, reason)
            else:
                self.addresses[node_id] = to_checksum_address(claim.address)
                self.refused.pop(node_id, None)  # it could not serve before; it can now
        for node_id in set(new) - answered:
            self._silent.add(node_id)
            self._unavailable(node_id, keys.get(node_id, b""), "did not answer the identity challenge in time")
            log(WARNING, "node %s did not answer the identity challenge in time; it is asked again next round",
                node_id)  # fmt: skip

    def refuse(self, node_id: int, address: str, reason: str) -> None:
        """Never ask the node to act again in this run (it keeps no proven address)."""
        self.addresses.pop(node_id, None)
        self.refused[node_id] = {"address": address, "reason": reason}
        log(WARNING, "node %s refused, it will not be asked to act: %s", node_id, reason)

    def _identity_problem(self, node_id: int, claim: IdentityReply, challenge: bytes, public_key: bytes) -> str:
        """Why a node's identity proof fails, or '' when it holds."""
        if not is_address(claim.address):
            return f"claims {claim.address!r}, which is not an address"
        address = to_checksum_address(claim.address)
        signer = recover_identity(claim.signature, challenge=challenge, contract=self.contract.address,
                                  run_id=self.run_id, node_id=node_id)  # fmt: skip
        if signer != address:
            return f"claims {address} but its signature over the challenge is by {signer or 'nobody (malformed)'}"
        active, identity = self.contract.participant_info(address)
        if not active:
            return f"signs as {address}, which is not a registered participant"
        if public_key and self.bind_supernode_keys:
            try:
                node_identity = supernode_identity(public_key)
            except ConfigError as exc:
                return f"the SuperLink reports an unreadable SuperNode key for it ({exc})"
            if node_identity != identity:
                return (f"signs as {address}, but its SuperNode key (identity 0x{node_identity.hex()}) is not the "
                        f"one registered for {address} (0x{identity.hex()})")
        holder = next((n for n, a in self.addresses.items() if a == address), None)
        if holder is not None:
            return f"signs as {address}, which node {holder} has proven already"
        return ""

    def _unavailable(self, node_id: int, public_key: bytes, reason: str) -> None:
        """Report a node that cannot serve (its ClientApp fails, e.g. on its node config)
        by name: the registered address its SuperNode key is bound to, where the
        SuperLink reports keys. It is not asked to act until it proves its address."""
        self.refused[node_id] = {"address": self._registered_holder(public_key), "reason": f"cannot serve: {reason}"}

    def _registered_holder(self, public_key: bytes) -> str:
        """The registered address bound to this SuperNode key ('' when none or unknown)."""
        if not public_key or not self.bind_supernode_keys:
            return ""
        try:
            identity = supernode_identity(public_key)
        except ConfigError:
            return ""
        return next((a for a in self.contract.members() if self.contract.participant_info(a)[1] == identity), "")


def _error_line(reason: str) -> str:
    """A node's error reply as one line: Flower writes ``<class 'module.Error'>:<'text'>``."""
    match = re.fullmatch(r"<class '(?:[\w.]+\.)?(\w+)'>:<'(.*)'>", reason.strip(), flags=re.DOTALL)
    line = f"{match.group(1)}: {match.group(2)}" if match else reason.strip()
    return line.splitlines()[0] if line else "no reason given"
