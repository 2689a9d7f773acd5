"""``deai local …``: start and stop the background parts of a trial on one machine.

    deai local start --dir DIR NAME -- CMD [ARG ...]   CMD in the background (its own session),
                                                        logged to DIR/logs/NAME.log, recorded in DIR/run
    deai local list --dir DIR                          what is recorded there, running or not
    deai local stop --dir DIR [NAME ...]               stop those (default: all), with what they spawned
    deai local chain [--port 8545]                     a development chain (anvil) in the foreground
    deai local stop-superlink                          stop the SuperLink `flwr run .` started on
                                                        Flower's `local` connection (found by its port)

Nothing else is ever stopped: a record whose process id now belongs to another program
(its start time differs) is only removed, and ``stop-superlink`` refuses a port held by
anything but Flower's local SuperLink. Errors are one ``error:`` line, exit status 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _start(args: argparse.Namespace) -> None:
    from ..consortium.background import start

    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    record = start(args.dir, args.name, command)
    print(f"started {record.name} (process {record.pid}); log {record.log}")


def _list(args: argparse.Namespace) -> None:
    from ..consortium.background import recorded

    records = recorded(args.dir)
    if not records:
        print(f"nothing recorded under {Path(args.dir).resolve() / 'run'}")
    for record in records:
        state = "running" if record.alive() else "exited"
        print(f"{record.name:<16} {state:<8} process {record.pid:<8} {' '.join(record.argv)[:100]}")


def _stop(args: argparse.Namespace) -> None:
    from ..consortium.background import stop

    done = stop(args.dir, args.names)
    if not done:
        print(f"nothing recorded under {Path(args.dir).resolve() / 'run'}")
    for name, what in done:
        print(f"{name}: {what}")


def _stop_superlink(args: argparse.Namespace) -> None:
    from ..consortium.background import local_superlink_port, stop_local_superlink

    port = args.port or local_superlink_port()
    pid = stop_local_superlink(port)
    if pid is None:
        print(f"no local SuperLink is listening on 127.0.0.1:{port}")
    else:
        print(f"stopped the local SuperLink on 127.0.0.1:{port} (process {pid}) and what it had started")


def _chain(args: argparse.Namespace) -> None:
    import os
    import sys

    from ..chain.devnode import find_anvil, install_anvil
    from ..consortium.localnet import PROJECT_ROOT

    anvil = find_anvil(search_from=PROJECT_ROOT) or install_anvil()
    print(f"development chain (anvil, {anvil}) at http://{args.host}:{args.port}", flush=True)
    sys.stdout.flush()
    os.execv(str(anvil), [str(anvil), "--host", args.host, "--port", str(args.port)])


def add_parser(groups: Any) -> None:
    local = groups.add_parser("local", help="start and stop the background parts of a trial on one machine",
                              description="Start a trial's long-running parts (chain node, store, SuperLink, "
                                          "SuperNodes) in the background and stop exactly those; stop the "
                                          "SuperLink `flwr run .` starts on Flower's local connection.")  # fmt: skip
    actions = local.add_subparsers(dest="action", required=True)

    p = actions.add_parser("start", help="start a command in the background, recorded under --dir")
    p.add_argument("--dir", required=True, type=Path, help="where its record (run/NAME.json) and log go")
    p.add_argument("name", help="its name in the records (letters, digits, - _ .)")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARG ...]", help="the command, after --")
    p.set_defaults(func=_start)

    p = actions.add_parser("list", help="the processes recorded under --dir")
    p.add_argument("--dir", required=True, type=Path)
    p.set_defaults(func=_list)

    p = actions.add_parser("stop", help="stop processes recorded under --dir (default: all), with their children")
    p.add_argument("--dir", required=True, type=Path)
    p.add_argument("names", nargs="*", metavar="NAME")
    p.set_defaults(func=_stop)

    p = actions.add_parser("chain", help="run a development chain (anvil, installed with npm on first use) here")
    p.add_argument("--host", default="127.0.0.1", help="the address it listens on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8545, help="its JSON-RPC port (default: 8545)")
    p.set_defaults(func=_chain)

    p = actions.add_parser("stop-superlink", help="stop the local SuperLink `flwr run .` started (by its port)")
    p.add_argument("--port", type=int, default=None,
                   help="its HTTP port (default: $FLWR_LOCAL_SUPERLINK_HTTP_API_PORT, else 39091, as flwr)")  # fmt: skip
    p.set_defaults(func=_stop_superlink)
