"""The answer to ``query.identity``: which chain address this node acts for.

Apart from the phase handlers (:mod:`.handlers`) because Flower starts a ClientApp process
for every message, and this one needs only the key: no torch, Opacus or web3 to load.
"""

from __future__ import annotations

from flwr.app import Context, Message

from ..protocol.identity import sign_identity
from ..messages import CONFIG, IdentityReply, IdentityRequest, reply_message
from .locator import RunLocator
from .participant import Participant

__all__ = ["handle_identity"]


def handle_identity(participant: Participant, message: Message, context: Context) -> Message:
    """Prove which chain address this node acts for: sign the coordinator's fresh
    challenge, bound to the run and this node's Flower id, with the participant's key."""
    config = message.content[CONFIG]
    request = IdentityRequest.from_record(config)  # a malformed challenge: nothing to sign
    locator = RunLocator.from_config(config)
    signature = sign_identity(participant.account, challenge=request.challenge, contract=locator.contract,
                              run_id=locator.run_id, node_id=int(context.node_id))  # fmt: skip
    return reply_message(message, IdentityReply(address=participant.address, signature=signature))
