"""``deai release …``: which code a silo runs.

    deai release hash [APP_DIR | FILE.fab]       SHA-256 of the FAB ``flwr run APP_DIR`` ships (default: .)
    deai release gate --runtime-api-address HOST:PORT --approved-fab SHA256 [...]
                      (--insecure | --root-certificates CA)
                                                  run the SuperNode's ClientApps, only for approved FABs

A silo starts ``flower-supernode --isolation process --port PORT ...`` and, next to it,
``deai release gate --runtime-api-address 127.0.0.1:PORT --approved-fab …``: a run whose
FAB is not one of the pinned hashes is refused with an error reply naming its hash, and
none of the FAB's code runs on the silo.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _hash(args: argparse.Namespace) -> None:
    from ..consortium.release import fab_sha256

    print(f"{fab_sha256(args.app)}  {args.app}")


def _gate(args: argparse.Namespace) -> None:
    from ..errors import ConfigError
    from ..silo_gate import parse_approved, serve

    if args.insecure == (args.root_certificates is not None):
        raise ConfigError("say how to reach the SuperNode's Runtime API: --insecure (loopback) or --root-certificates CA")
    approved = parse_approved(args.approved_fab)
    try:
        serve(args.runtime_api_address, approved,
              root_certificates_path=str(args.root_certificates) if args.root_certificates else None)  # fmt: skip
    except KeyboardInterrupt:  # Ctrl-C is how an operator stops it
        pass


def add_parser(groups: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    release = groups.add_parser("release", help="the release a silo approves and the gate that enforces it")
    actions = release.add_subparsers(dest="action", required=True)
    digest = actions.add_parser("hash", help="SHA-256 of the FAB an app directory builds, or of a FAB file")
    digest.add_argument("app", nargs="?", type=Path, default=Path("."), help="app directory or .fab (default: .)")
    digest.set_defaults(func=_hash)
    gate = actions.add_parser("gate", help="run the ClientApps of a SuperNode started with --isolation process, "
                                           "only for runs whose FAB is approved")  # fmt: skip
    gate.add_argument("--runtime-api-address", required=True, metavar="HOST:PORT",
                      help="the SuperNode's Runtime API (its --port)")  # fmt: skip
    gate.add_argument("--approved-fab", action="append", required=True, metavar="SHA256",
                      help="SHA-256 of an approved FAB (deai release hash); repeat for several releases")  # fmt: skip
    gate.add_argument("--insecure", action="store_true", help="reach the Runtime API without TLS (loopback)")
    gate.add_argument("--root-certificates", type=Path, default=None, metavar="CA",
                      help="CA certificate of the Runtime API's TLS (flower-supernode --ssl-*)")  # fmt: skip
    gate.set_defaults(func=_gate)
