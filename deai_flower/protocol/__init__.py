"""The protocol core: what every party computes the same way, with no I/O.

The run spec and the run parameters it gives the chain (:mod:`.spec`), the on-chain
encodings (:mod:`.encoding`), the blob format (:mod:`.blob`), CIDs (:mod:`.cid`), the
aggregation rules (:mod:`.rules`), sampling and committee (:mod:`.sampling`), ε
(:mod:`.epsilon`), the judgment of a reveal (:mod:`.judgment`), contribution scores
(:mod:`.scores`) and a round's result and outcome (:mod:`.outcome`). Each decision is
made here once: attesters, participants, the coordinator and ``deai verify`` call these
functions, without Flower's server side or torch.
"""
