"""The consortium commands' error."""

from __future__ import annotations

from ..errors import DeaiError


class ConsortiumError(DeaiError):
    """A consortium set-up step cannot be done as asked (repeated, or wrong)."""
