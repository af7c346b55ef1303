"""``tscm_map_sync push LOCAL_MAP URI | pull URI LOCAL_MAP``: copy places between a local map and the server
(:func:`tscm_ros.fleet.sync.transfer`; URIs and passwords: :mod:`tscm_ros.cli.fleet_common`).

Exit codes: 0 copied, 1 server unreachable or failing, 2 permission or configuration error (one line on
stderr) or bad usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tscm_ros.cli.common import setup_logging
from tscm_ros.cli.fleet_common import (
    add_schema_option,
    add_selection_options,
    print_report,
    run_fleet_command,
    selection,
)
from tscm_ros.fleet.sync import transfer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tscm_map_sync", description="Copy places between a local map and the server."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    push = sub.add_parser("push", help="local map -> server (idempotent upsert)")
    push.add_argument("local_map")
    push.add_argument("uri")
    push.add_argument("--label-robot", help="robot id for the map's unlabelled places (default '')")
    push.add_argument(
        "--label-session", help="session id for the map's unlabelled places (default: folder name)"
    )
    pull = sub.add_parser("pull", help="server -> local map (created if missing), for offline localisation")
    pull.add_argument("uri")
    pull.add_argument("local_map")
    pull.add_argument("--index-spec", default="flat", help="index spec of a new local map")
    for p in (push, pull):
        add_schema_option(p)
        add_selection_options(p)
        p.add_argument("--allow-fingerprint-mismatch", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(fmt="%(message)s")

    def run() -> int:
        common = dict(selection=selection(args), schema=args.schema, with_blobs=not args.no_blobs,
                      allow_fingerprint_mismatch=args.allow_fingerprint_mismatch)  # fmt: skip
        if args.command == "push":
            label = None
            if args.label_robot is not None or args.label_session is not None:
                label = (args.label_robot or "", args.label_session or Path(args.local_map).resolve().name)
            report = transfer([args.local_map], args.uri, label=label, **common)
        else:
            report = transfer([args.uri], args.local_map, index_spec=args.index_spec, **common)
        print_report(args.command, report)
        return 0

    return run_fleet_command(run, args.uri)


if __name__ == "__main__":
    sys.exit(main())
