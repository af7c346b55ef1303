"""What the fleet console scripts share (``tscm_map_db``, ``tscm_map_sync``, ``tscm_merge_maps``).

URIs are libpq targets (``postgresql://user@host/db?sslmode=verify-full&sslrootcert=ca.pem``,
``service=fleet``, or ``postgresql://`` with ``PG*`` variables). Put passwords in ``~/.pgpass`` or a
service file, not in the URI: every message printed here names the target without its password.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import psycopg

from tscm_ros.cli.common import fail, one_line
from tscm_ros.fleet import schema as schema_mod
from tscm_ros.fleet.common import parse_time_ns
from tscm_ros.fleet.conninfo import build_conninfo, is_server_target, redact, scrub
from tscm_ros.fleet.errors import StoreUnavailableError
from tscm_ros.fleet.sync import Selection, TransferReport
from tscm_ros.placemap.errors import MapError

EXIT_ERROR = 1
EXIT_CONFIG = 2


def add_schema_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--schema", default=schema_mod.DEFAULT_SCHEMA, help="PostgreSQL schema of the map")


def add_selection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--robot", action="append", help="only this robot (repeatable)")
    parser.add_argument("--session", action="append", help="only this session (repeatable)")
    parser.add_argument("--since", help="only places stamped at/after this (ns or ISO 8601, UTC by default)")
    parser.add_argument("--until", help="only places stamped at/before this (ns or ISO 8601)")
    parser.add_argument("--no-blobs", action="store_true", help="leave features and thumbnails behind")


def selection(args: argparse.Namespace) -> Selection:
    return Selection(robots=args.robot, sessions=args.session, since_ns=parse_time_ns(args.since),
                     until_ns=parse_time_ns(args.until))  # fmt: skip


def connect(uri: str) -> psycopg.Connection:
    if not is_server_target(uri):
        raise SystemExit(f"error: {uri!r} is not a PostgreSQL URI or conninfo string")
    return psycopg.connect(build_conninfo(uri, application_name="tscm_map_db"), autocommit=True)


def run_fleet_command(work: Callable[[], int], uri_hint: str | None) -> int:
    """Run ``work``; server, permission and map errors become one ``error: ...`` line on stderr (passwords
    scrubbed): exit 2 for permission and configuration errors, 1 for an unreachable or failing server."""
    try:
        return work()
    except psycopg.errors.InsufficientPrivilege as exc:
        return fail(None, f"permission denied: {scrub(one_line(exc), uri_hint)}", code=EXIT_CONFIG)
    except psycopg.Error as exc:
        where = redact(uri_hint) if uri_hint and is_server_target(uri_hint) else "server"
        return fail(None, f"{where}: {scrub(one_line(exc), uri_hint)}", code=EXIT_ERROR)
    except StoreUnavailableError as exc:
        return fail(None, exc, code=EXIT_ERROR)
    except (MapError, ValueError, FileNotFoundError) as exc:
        return fail(None, scrub(str(exc), uri_hint), code=EXIT_CONFIG)


def print_report(what: str, report: TransferReport) -> None:
    print(f"{what}: {report.summary()}")
