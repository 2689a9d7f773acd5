"""The admin role moves in two steps: offered by the admin, taken by the new key."""

from __future__ import annotations

import pytest
from support import Deployment

from deai_flower.errors import ContractRevertError


def test_the_admin_role_is_offered_then_accepted(deployment: Deployment) -> None:
    d = deployment
    old, new = d.admin, d.as_client(3)  # client 3 is not registered: any key may become admin
    with pytest.raises(ContractRevertError, match="NotAdmin"):
        new.transfer_admin(new.account.address)
    tx = old.transfer_admin(new.account.address)
    assert [e["event"] for e in tx.events] == ["AdminTransferStarted"]
    assert old.pending_admin() == new.account.address
    # offered, not yet taken: the old admin still rules, the new key does not
    with pytest.raises(ContractRevertError, match="NotAdmin"):
        new.register(d.clients[3].address, b"\x09" * 32)
    with pytest.raises(ContractRevertError, match="NotPendingAdmin"):
        d.as_client(0).accept_admin()
    tx = new.accept_admin()
    assert [(e["event"], e["args"]["previousAdmin"], e["args"]["admin"]) for e in tx.events] == [
        ("AdminTransferred", old.account.address, new.account.address)]
    assert old.admin() == new.account.address
    assert old.pending_admin() == "0x" + "00" * 20
    new.register(d.clients[3].address, b"\x09" * 32)
    with pytest.raises(ContractRevertError, match="NotAdmin"):
        old.register(d.clients[3].address, b"\x0a" * 32)
    with pytest.raises(ContractRevertError, match="NotAdmin"):
        old.transfer_admin(old.account.address)


def test_a_pending_transfer_can_be_redirected_or_cancelled(deployment: Deployment) -> None:
    d = deployment
    d.admin.transfer_admin(d.clients[0].address)
    d.admin.transfer_admin("0x" + "00" * 20)  # cancelled: nobody can take it
    with pytest.raises(ContractRevertError, match="NotPendingAdmin"):
        d.as_client(0).accept_admin()
    assert d.admin.admin() == d.admin.account.address
