"""Who a round samples and who may attest it (docs/protocol.md §2.2, §2.5): the one home
of the rule the contract enforces, for the coordinator (whom to ask), the attesters and
the verifier (who was entitled to commit and to vote).

The contract's rule: the registry indices at the first ``k`` positions of the
beacon-keyed shuffle of the registry as it was when the round opened
(:func:`~.encoding.sampled_indices`, ``k`` from :func:`~.encoding.sampled_count`), less
any index whose holder was assigned after the round opened (a registry epoch above the
round's); the first :func:`~.encoding.committee_size_of` positions are the committee,
whose revealers are the eligible attesters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .encoding import committee_size_of, sampled_count, sampled_indices

__all__ = ["RoundSample", "round_sample"]


@dataclass(frozen=True)
class RoundSample:
    """One round's sample: the registry index at each sampled position, in shuffle order,
    the registry epoch the round opened in, and how many positions are committee seats."""

    indices: tuple[int, ...]
    registry_epoch: int
    committee_seats: int
    _position_of: Mapping[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_position_of", {index: p for p, index in enumerate(self.indices)})

    def position(self, *, index: int, epoch: int) -> int | None:
        """The sampled position of the registry entry at ``index`` assigned in registry
        epoch ``epoch``; None when it is not sampled (an entry assigned after the round
        opened sits the round out, whatever index it took over)."""
        if epoch > self.registry_epoch:
            return None
        return self._position_of.get(index)

    def in_committee(self, *, index: int, epoch: int) -> bool:
        """Whether that entry holds a committee seat (its reveal makes it an eligible attester)."""
        position = self.position(index=index, epoch=epoch)
        return position is not None and position < self.committee_seats

    def members(self, registry: Sequence[str], *, entry_epoch: Callable[[str], int] | None = None) -> dict[str, int]:
        """The sampled addresses and their positions, in position order, given the registry
        as it is now (``registry[i]``: the address at index ``i``). ``entry_epoch`` gives an
        address's registry epoch; None: the registry has not changed since the round opened,
        so no entry is newer than the round. An index revoked since, and not refilled, has
        no address and drops out."""
        sampled: dict[str, int] = {}
        for position, index in enumerate(self.indices):
            if index >= len(registry):
                continue
            address = registry[index]
            if entry_epoch is not None and entry_epoch(address) > self.registry_epoch:
                continue
            sampled[address] = position
        return sampled

    def committee(self, positions: Mapping[str, int], revealers: Iterable[str]) -> list[str]:
        """The eligible attesters: the ``revealers`` at committee positions (``positions``:
        as :meth:`members` gives them), in shuffle order."""
        seated = [a for a in revealers if positions.get(a, self.committee_seats) < self.committee_seats]
        return sorted(seated, key=positions.__getitem__)


def round_sample(*, beacon: bytes, registry_size: int, registry_epoch: int, sample_bps: int,
                 committee_size: int) -> RoundSample:  # fmt: skip
    """The sample of a round that opened with ``beacon`` on a registry of ``registry_size``
    entries in epoch ``registry_epoch`` (``getRound``/``RoundOpened``), under the run's
    ``sample_bps`` and ``committee_size`` (0: every sampled revealer attests)."""
    indices = sampled_indices(beacon=beacon, registry_size=registry_size, sample_bps=sample_bps)
    seats = committee_size_of(sampled=sampled_count(registry_size=registry_size, sample_bps=sample_bps),
                              committee_size=committee_size)  # fmt: skip
    return RoundSample(indices=tuple(indices), registry_epoch=registry_epoch, committee_seats=seats)
