"""A run as the chain records it: its spec, fetched by the digest the chain holds."""

from __future__ import annotations

from typing import Any

from ..errors import StoreError
from ..protocol.spec import RunSpec, SpecError, spec_cid


def fetch_spec(contract: Any, run_id: int, store: Any) -> RunSpec:
    """The spec of ``run_id``: the blob named by the chain's ``specHash``, parsed and
    checked as supported by this release.

    Raises :class:`SpecError` with one reason: no such run, the store lacks the spec or
    returns other bytes, or the spec does not parse or is not supported.
    """
    params = contract.run_params(run_id)
    if params is None:
        raise SpecError(f"contract {contract.address} has no run {run_id}")
    cid = spec_cid(bytes(params["specHash"]))
    try:
        data = store.get(cid)  # the store re-verifies the bytes against the CID
    except StoreError as exc:
        raise SpecError(f"run {run_id}: cannot fetch its spec {cid} ({exc})") from exc
    spec = RunSpec.from_bytes(data)
    spec.check_supported()
    return spec
