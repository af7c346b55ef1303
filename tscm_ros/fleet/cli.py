"""Console scripts: ``tscm_map_db`` (schema), ``tscm_map_sync`` (push/pull) and ``tscm_merge_maps``.

URIs are libpq targets (``postgresql://user@host/db?sslmode=verify-full&sslrootcert=ca.pem``,
``service=fleet``, or ``postgresql://`` with ``PG*`` variables). Put passwords in ``~/.pgpass`` or a
service file, not in the URI: every message printed here names the target without its password.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

import psycopg

from ..placemap.errors import MapError
from . import schema as schema_mod
from .common import parse_time_ns
from .conninfo import build_conninfo, is_server_target, redact, scrub
from .errors import StoreUnavailableError
from .pca import PcaProjection
from .postgres import PgPlaceStore
from .sync import Selection, TransferReport, transfer

_EXIT_ERROR = 1
_EXIT_CONFIG = 2


def _add_schema(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--schema", default=schema_mod.DEFAULT_SCHEMA, help="PostgreSQL schema of the map")


def _add_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--robot", action="append", help="only this robot (repeatable)")
    parser.add_argument("--session", action="append", help="only this session (repeatable)")
    parser.add_argument("--since", help="only places stamped at/after this (ns or ISO 8601, UTC by default)")
    parser.add_argument("--until", help="only places stamped at/before this (ns or ISO 8601)")
    parser.add_argument("--no-blobs", action="store_true", help="leave features and thumbnails behind")


def _selection(args: argparse.Namespace) -> Selection:
    return Selection(robots=args.robot, sessions=args.session, since_ns=parse_time_ns(args.since),
                     until_ns=parse_time_ns(args.until))  # fmt: skip


def _connect(uri: str) -> psycopg.Connection:
    if not is_server_target(uri):
        raise SystemExit(f"error: {uri!r} is not a PostgreSQL URI or conninfo string")
    return psycopg.connect(build_conninfo(uri, application_name="tscm_map_db"), autocommit=True)


def _run(main, uri_hint: str | None) -> int:
    try:
        return main()
    except psycopg.errors.InsufficientPrivilege as exc:
        print(f"error: permission denied: {scrub(' '.join(str(exc).split()), uri_hint)}", file=sys.stderr)
        return _EXIT_CONFIG
    except psycopg.Error as exc:
        where = redact(uri_hint) if uri_hint and is_server_target(uri_hint) else "server"
        print(f"error: {where}: {scrub(' '.join(str(exc).split()), uri_hint)}", file=sys.stderr)
        return _EXIT_ERROR
    except StoreUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return _EXIT_ERROR
    except (MapError, ValueError, FileNotFoundError) as exc:
        print(f"error: {scrub(str(exc), uri_hint)}", file=sys.stderr)
        return _EXIT_CONFIG


# ---------------------------------------------------------------------------- tscm_map_db
def map_db_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tscm_map_db", description="Create, migrate and inspect a fleet map."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="create the schema (idempotent) and apply migrations")
    init.add_argument("uri")
    _add_schema(init)
    init.add_argument("--dim", type=int, help="descriptor dimension (default 2048, or --like-map's)")
    init.add_argument("--fingerprint", help="model fingerprint the map is for (describer.fingerprint)")
    init.add_argument("--like-map", help="take --dim and --fingerprint from this local place map")
    init.add_argument("--reduced-dim", type=int, help="PCA dimension (default 256 for 2048-d descriptors)")
    init.add_argument("--index", choices=("full", "reduced", "both", "none"), default="full",
                      help="HNSW index(es) to build now (default full: halfvec_ip_ops)")  # fmt: skip
    init.add_argument("--m", type=int, default=16, help="HNSW m")
    init.add_argument("--ef-construction", type=int, default=64, help="HNSW ef_construction")
    roles_help = f"create and grant roles {schema_mod.READER_ROLE} / {schema_mod.WRITER_ROLE}"
    init.add_argument("--create-roles", action="store_true", help=roles_help)
    migrate = sub.add_parser("migrate", help="apply pending migrations")
    migrate.add_argument("uri")
    _add_schema(migrate)
    status = sub.add_parser("status", help="migration version, map info, indexes and sessions")
    status.add_argument("uri")
    _add_schema(status)
    status.add_argument("--json", action="store_true")
    pca = sub.add_parser(
        "pca", help="fit the PCA projection, fill the reduced vectors, build their HNSW index"
    )
    pca.add_argument("uri")
    _add_schema(pca)
    pca.add_argument("--sample", type=int, default=20_000, help="descriptors to fit on (random sample)")
    pca.add_argument("--from-map", help="fit on this local place map's descriptors instead")
    pca.add_argument("--no-index", action="store_true", help="do not build the reduced HNSW index")
    pca.add_argument("--m", type=int, default=16)
    pca.add_argument("--ef-construction", type=int, default=64)
    index = sub.add_parser("index", help="create or drop an HNSW index")
    index.add_argument("uri")
    index.add_argument("action", choices=("create", "drop"))
    index.add_argument("which", choices=("full", "reduced"))
    _add_schema(index)
    index.add_argument("--m", type=int, default=16)
    index.add_argument("--ef-construction", type=int, default=64)
    roles = sub.add_parser(
        "roles", help=f"create/grant {schema_mod.READER_ROLE} and {schema_mod.WRITER_ROLE}"
    )
    roles.add_argument("uri")
    _add_schema(roles)
    return parser


def map_db_main(argv: Sequence[str] | None = None) -> int:
    args = map_db_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return _run(lambda: _map_db(args), args.uri)


def _map_db(args: argparse.Namespace) -> int:
    if args.command == "init":
        dim, fingerprint = args.dim, args.fingerprint
        if args.like_map:
            from .sync import _local_info

            info = _local_info(args.like_map)
            dim, fingerprint = dim or int(info["dim"]), fingerprint or info.get("model_fingerprint")
        with _connect(args.uri) as conn:
            applied = schema_mod.init(
                conn, args.schema, dim=dim or 2048, model_fingerprint=fingerprint,
                reduced_dim=args.reduced_dim, index=args.index, hnsw_m=args.m,
                ef_construction=args.ef_construction, create_roles=args.create_roles,
            )  # fmt: skip
        print(f"{redact(args.uri)} schema {args.schema}: initialised" +
              (f", applied migrations {applied}" if applied else " (already up to date)"))  # fmt: skip
        return 0
    if args.command == "migrate":
        with _connect(args.uri) as conn:
            applied = schema_mod.migrate(conn, args.schema)
        print(f"schema {args.schema}: " + (f"applied migrations {applied}" if applied else "up to date"))
        return 0
    if args.command == "status":
        with _connect(args.uri) as conn:
            status = schema_mod.status(conn, args.schema)
        _print_status(args, status)
        return 0 if status.info is not None and not status.pending else 3
    if args.command == "index":
        with _connect(args.uri) as conn:
            if args.action == "create":
                name = schema_mod.create_index(conn, args.schema, args.which, hnsw_m=args.m,
                                               ef_construction=args.ef_construction)  # fmt: skip
                print(f"built {name}")
            else:
                schema_mod.drop_index(conn, args.schema, args.which)
                print(f"dropped the {args.which} index")
        return 0
    if args.command == "roles":
        with _connect(args.uri) as conn, conn.transaction():
            schema_mod.ensure_roles(conn, args.schema)
        print(
            f"roles {schema_mod.READER_ROLE} (read) and {schema_mod.WRITER_ROLE} (read + write) "
            f"granted on {args.schema}"
        )
        return 0
    if args.command == "pca":
        return _fit_pca(args)
    raise AssertionError(args.command)


def _print_status(args: argparse.Namespace, status: schema_mod.SchemaStatus) -> None:
    info = dict(status.info or {})
    pca = None
    if info.get("pca_components") is not None:
        pca = {"explained_variance": info["pca_explained_variance"], "fitted_on": info["pca_fitted_on"]}
    summary = {
        "target": redact(args.uri), "schema": status.schema, "exists": status.exists,
        "version": status.version,
        "latest": schema_mod.latest_version(), "pending": [v for v, _ in status.pending],
        "dim": info.get("dim"), "reduced_dim": info.get("reduced_dim"),
        "model_fingerprint": info.get("model_fingerprint"), "pca": pca, "places": status.places,
        "hnsw_indexes": sorted(n for n, d in status.indexes.items() if "hnsw" in d), "roles": status.roles,
        "sessions": [{"robot_id": r, "session_id": s, "places": n, "first_stamp_ns": a, "last_stamp_ns": b}
                     for r, s, n, a, b in status.sessions],
    }  # fmt: skip
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{summary['target']} schema {status.schema}")
    if status.info is None:
        print("  no fleet map here; run: tscm_map_db init URI --dim 2048 --fingerprint FP")
        return
    print(f"  schema version {status.version} (latest {summary['latest']})"
          + (f", PENDING {summary['pending']}: run migrate" if status.pending else ""))  # fmt: skip
    fp = summary["model_fingerprint"]
    print(
        f"  dim {summary['dim']}, reduced {summary['reduced_dim']}, "
        f"model {fp[:16] + '...' if fp else '(any)'}"
    )
    print(
        "  pca: "
        + (
            f"{pca['explained_variance']:.3f} of the variance, fitted on {pca['fitted_on']}"
            if pca
            else "none"
        )
    )
    print(f"  places {status.places}, HNSW indexes: {', '.join(summary['hnsw_indexes']) or 'none'}")
    for row in summary["sessions"]:
        print(f"    {row['robot_id'] or '-':>12} {row['session_id'] or '-':>24} {row['places']:>9} places")


def _fit_pca(args: argparse.Namespace) -> int:
    with PgPlaceStore(args.uri, schema=args.schema) as store:
        if args.from_map:
            from .local import LocalPlaceStore

            with LocalPlaceStore.open(args.from_map, dim=store.dim, create=False) as local:
                ids = local.place_map.place_ids
                if len(ids) > args.sample:
                    ids = ids[:: max(1, len(ids) // args.sample)][: args.sample]
                sample = local.get_descriptors(ids)
        else:
            sample = store.sample_descriptors(args.sample)
        projection = PcaProjection.fit(sample, store.reduced_dim)
        updated = store.set_pca(projection)
        kept = projection.explained_variance
        print(f"PCA {store.dim}->{store.reduced_dim} fitted on {projection.fitted_on} descriptors "
              f"({kept:.3f} of the variance); {updated} reduced vectors")  # fmt: skip
        if not args.no_index:
            with _connect(args.uri) as conn:
                name = schema_mod.create_index(conn, args.schema, "reduced", hnsw_m=args.m,
                                               ef_construction=args.ef_construction)  # fmt: skip
            print(f"built {name}")
    return 0


# ---------------------------------------------------------------------------- tscm_map_sync
def sync_parser() -> argparse.ArgumentParser:
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
        _add_schema(p)
        _add_selection(p)
        p.add_argument("--allow-fingerprint-mismatch", action="store_true")
    return parser


def sync_main(argv: Sequence[str] | None = None) -> int:
    args = sync_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def run() -> int:
        common = dict(selection=_selection(args), schema=args.schema, with_blobs=not args.no_blobs,
                      allow_fingerprint_mismatch=args.allow_fingerprint_mismatch)  # fmt: skip
        if args.command == "push":
            label = None
            if args.label_robot is not None or args.label_session is not None:
                from pathlib import Path

                label = (args.label_robot or "", args.label_session or Path(args.local_map).resolve().name)
            report = transfer([args.local_map], args.uri, label=label, **common)
        else:
            report = transfer([args.uri], args.local_map, index_spec=args.index_spec, **common)
        _print_report(args.command, report)
        return 0

    return _run(run, args.uri)


def _print_report(what: str, report: TransferReport) -> None:
    print(f"{what}: {report.summary()}")


# ---------------------------------------------------------------------------- tscm_merge_maps
def merge_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tscm_merge_maps",
        description="Merge sessions from local maps and/or servers into one map (local folder or server).",
    )
    parser.add_argument("output", help="local map folder (created or extended) or PostgreSQL URI")
    parser.add_argument("sources", nargs="+", help="local map folders and/or PostgreSQL URIs")
    _add_schema(parser)
    _add_selection(parser)
    parser.add_argument("--index-spec", default="flat", help="index spec of a new local output map")
    parser.add_argument("--allow-fingerprint-mismatch", action="store_true")
    return parser


def merge_main(argv: Sequence[str] | None = None) -> int:
    args = merge_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    hint = next((t for t in [args.output, *args.sources] if is_server_target(t)), None)

    def run() -> int:
        report = transfer(
            list(args.sources), args.output, selection=_selection(args), schema=args.schema,
            with_blobs=not args.no_blobs, index_spec=args.index_spec,
            allow_fingerprint_mismatch=args.allow_fingerprint_mismatch,
        )  # fmt: skip
        _print_report("merge", report)
        return 0

    return _run(run, hint)
