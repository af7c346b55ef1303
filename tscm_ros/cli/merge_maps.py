"""``tscm_merge_maps OUTPUT SOURCE...``: merge sessions from local maps and/or servers into one map
(:func:`tscm_ros.fleet.sync.transfer`; URIs and passwords: :mod:`tscm_ros.cli.fleet_common`).

Exit codes: 0 merged, 1 server unreachable or failing, 2 permission or configuration error (one line on
stderr) or bad usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tscm_ros.cli.common import setup_logging
from tscm_ros.cli.fleet_common import (
    add_schema_option,
    add_selection_options,
    print_report,
    run_fleet_command,
    selection,
)
from tscm_ros.fleet.conninfo import is_server_target
from tscm_ros.fleet.sync import transfer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tscm_merge_maps",
        description="Merge sessions from local maps and/or servers into one map (local folder or server).",
    )
    parser.add_argument("output", help="local map folder (created or extended) or PostgreSQL URI")
    parser.add_argument("sources", nargs="+", help="local map folders and/or PostgreSQL URIs")
    add_schema_option(parser)
    add_selection_options(parser)
    parser.add_argument("--index-spec", default="flat", help="index spec of a new local output map")
    parser.add_argument("--allow-fingerprint-mismatch", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(fmt="%(message)s")
    hint = next((t for t in [args.output, *args.sources] if is_server_target(t)), None)

    def run() -> int:
        report = transfer(
            list(args.sources), args.output, selection=selection(args), schema=args.schema,
            with_blobs=not args.no_blobs, index_spec=args.index_spec,
            allow_fingerprint_mismatch=args.allow_fingerprint_mismatch,
        )  # fmt: skip
        print_report("merge", report)
        return 0

    return run_fleet_command(run, hint)


if __name__ == "__main__":
    sys.exit(main())
