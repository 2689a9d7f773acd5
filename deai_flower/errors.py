"""The project's exception hierarchy.

Every error the library raises on purpose derives from :class:`DeaiError`, so the
command-line entry points can print one readable line and exit non-zero instead of a
traceback. Library errors (web3, Opacus, Hydra, OS) are mapped to these at the boundary
with ``raise ... from exc``.
"""

from __future__ import annotations


class DeaiError(Exception):
    """Root of every error deai-flower raises on purpose."""


class ConfigError(DeaiError):
    """A configuration value is missing, unknown or out of range."""


# --- content store and blobs -------------------------------------------------------


class StoreError(DeaiError):
    """The content store failed or refused an operation."""


class StoreUnavailableError(StoreError):
    """The content store (directory or IPFS node) cannot be reached."""


class BlobNotFoundError(StoreError):
    """No blob with the requested CID is in the store."""


class InvalidCidError(StoreError):
    """A string or byte sequence is not a CID this project accepts."""


class TamperedBlobError(StoreError):
    """A blob's bytes do not hash to the CID it was requested by."""


class ResultUnrecoverableError(StoreError):
    """A finalized result's blob is unavailable and cannot be rebuilt from the round's reveals."""


class BlobFormatError(DeaiError):
    """A blob is not a valid canonical model blob (size, header, names, shapes, values)."""


# --- chain -------------------------------------------------------------------------


class ChainError(DeaiError):
    """The chain node or the round contract failed or refused an operation."""


class ChainUnavailableError(ChainError):
    """The JSON-RPC node cannot be reached."""


class ContractRevertError(ChainError):
    """A transaction or call reverted; ``error_name`` and ``args`` decode the custom error."""

    def __init__(self, message: str, *, error_name: str = "", args: tuple[object, ...] = ()):
        super().__init__(message)
        self.error_name = error_name
        self.error_args = args


class ProtocolError(DeaiError):
    """A round could not complete under the protocol's rules (no quorum, too few reveals)."""


# --- privacy -----------------------------------------------------------------------


class PrivacyError(DeaiError):
    """Differential-privacy settings or accounting failed."""


class PrivacyBudgetExhaustedError(PrivacyError):
    """Training one more round would take a participant past its (epsilon, delta) budget."""


def one_line(exc: BaseException) -> str:
    """An exception as one line; the project's own errors without their type name."""
    text = " ".join(str(exc).split())
    if isinstance(exc, ConfigError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
