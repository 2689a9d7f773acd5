"""``deai silo check``: can this silo serve with this node config? One line per check.

    deai silo check --node-config 'keystore="..." password-file="..." data-path="..." ...'
    deai silo check --node-config silo.toml

The node config is written exactly as ``flower-supernode --node-config`` takes it (and
read with Flower's own parser). Exit status 0 when every check holds, 1 when one fails,
2 when the node config cannot be parsed.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import ConfigError


def add_parser(groups: argparse._SubParsersAction) -> None:
    silo = groups.add_parser("silo", help="a silo's own checks")
    actions = silo.add_subparsers(dest="action", required=True)
    check = actions.add_parser("check", help="check a SuperNode's node config before it serves",
                               description="Check a silo's node config: its terms, key and password, data file, "
                                           "chain and pinned contract, and store; one line each. Exit status 1 "
                                           "when a check fails.")  # fmt: skip
    check.add_argument("--node-config", required=True, metavar="CONFIG",
                       help="the value given to flower-supernode --node-config, or a .toml file")  # fmt: skip
    check.add_argument("--timeout", type=float, default=10.0, help="seconds per chain request (default: 10)")
    check.set_defaults(func=run_check)


def parse_node_config(text: str) -> dict[str, Any]:
    """``--node-config``'s value as the SuperNode reads it (Flower's parser).

    Raises:
        ConfigError: one line, when Flower's parser refuses it.
    """
    from flwr.common.config import parse_config_args

    try:
        return parse_config_args([text])
    except Exception as exc:  # noqa: BLE001 - click, TOML and OS errors: one line for each
        message = getattr(exc, "message", None) or str(exc)
        raise ConfigError(f"--node-config cannot be parsed: {' '.join(message.split())}") from exc


def run_check(args: argparse.Namespace) -> None:
    from ..participant.silo_check import check_node_config

    checks = check_node_config(parse_node_config(args.node_config), timeout_s=args.timeout)
    for check in checks:
        print(check.line())
    if not all(check.ok for check in checks):
        sys.exit(1)
