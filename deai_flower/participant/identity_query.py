"""The answer to ``query.identity``: which chain address this node acts for.

Apart from the phase handlers (:mod:`.handlers`) because Flower starts a ClientApp process
for every message, and this one needs only the key: no torch, Opacus or web3 to load.
"""

from __future__ import annotations

from flwr.app import Context, Message

from ..consortium.identity import CHALLENGE_BYTES, sign_identity
from ..errors import ProtocolError
from ..messages import CONFIG, reply
from .locator import RunLocator
from .participant import Participant

__all__ = ["handle_identity"]


def handle_identity(participant: Participant, message: Message, context: Context) -> Message:
    """Prove which chain address this node acts for: sign the coordinator's fresh
    challenge, bound to the run and this node's Flower id, with the participant's key."""
    config = message.content[CONFIG]
    challenge = config.get("challenge")
    if not isinstance(challenge, bytes) or len(challenge) != CHALLENGE_BYTES:
        raise ProtocolError(f"identity query without a {CHALLENGE_BYTES}-byte challenge: nothing to sign")
    locator = RunLocator.from_config(config)
    signature = sign_identity(participant.account, challenge=challenge, contract=locator.contract,
                              run_id=locator.run_id, node_id=int(context.node_id))  # fmt: skip
    return reply(message, status={"address": participant.address, "signature": signature})
