"""The protocol core: what every party computes the same way, with no I/O.

The run spec (:mod:`.spec`), the on-chain encodings (:mod:`.encoding`), the blob format
(:mod:`.blob`), CIDs (:mod:`.cid`) and the aggregation rules (:mod:`.rules`). Attesters,
participants and verifiers import these without Flower's server side.
"""
