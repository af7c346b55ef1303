"""``tscm_map_db init|migrate|status|pca|index|roles URI``: create, migrate and inspect a fleet map
(:mod:`tscm_ros.fleet.schema`; URIs and passwords: :mod:`tscm_ros.cli.fleet_common`).

Exit codes: 0 done, 1 server unreachable or failing, 2 permission or configuration error (one line on stderr)
or bad usage, 3 ``status`` of a missing or not migrated map.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from tscm_ros.cli.common import setup_logging
from tscm_ros.cli.fleet_common import add_schema_option, connect, run_fleet_command
from tscm_ros.fleet import schema as schema_mod
from tscm_ros.fleet.conninfo import redact
from tscm_ros.fleet.pca import PcaProjection
from tscm_ros.fleet.postgres import PgPlaceStore


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tscm_map_db", description="Create, migrate and inspect a fleet map."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="create the schema (idempotent) and apply migrations")
    init.add_argument("uri")
    add_schema_option(init)
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
    add_schema_option(migrate)
    status = sub.add_parser("status", help="migration version, map info, indexes and sessions")
    status.add_argument("uri")
    add_schema_option(status)
    status.add_argument("--json", action="store_true")
    pca = sub.add_parser(
        "pca", help="fit the PCA projection, fill the reduced vectors, build their HNSW index"
    )
    pca.add_argument("uri")
    add_schema_option(pca)
    pca.add_argument("--sample", type=int, default=20_000, help="descriptors to fit on (random sample)")
    pca.add_argument("--from-map", help="fit on this local place map's descriptors instead")
    pca.add_argument("--no-index", action="store_true", help="do not build the reduced HNSW index")
    pca.add_argument("--m", type=int, default=16)
    pca.add_argument("--ef-construction", type=int, default=64)
    index = sub.add_parser("index", help="create or drop an HNSW index")
    index.add_argument("uri")
    index.add_argument("action", choices=("create", "drop"))
    index.add_argument("which", choices=("full", "reduced"))
    add_schema_option(index)
    index.add_argument("--m", type=int, default=16)
    index.add_argument("--ef-construction", type=int, default=64)
    roles = sub.add_parser(
        "roles", help=f"create/grant {schema_mod.READER_ROLE} and {schema_mod.WRITER_ROLE}"
    )
    roles.add_argument("uri")
    add_schema_option(roles)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(fmt="%(message)s")
    return run_fleet_command(lambda: _map_db(args), args.uri)


def _map_db(args: argparse.Namespace) -> int:
    if args.command == "init":
        dim, fingerprint = args.dim, args.fingerprint
        if args.like_map:
            from tscm_ros.fleet.sync import _local_info

            info = _local_info(args.like_map)
            dim, fingerprint = dim or int(info["dim"]), fingerprint or info.get("model_fingerprint")
        with connect(args.uri) as conn:
            applied = schema_mod.init(
                conn, args.schema, dim=dim or 2048, model_fingerprint=fingerprint,
                reduced_dim=args.reduced_dim, index=args.index, hnsw_m=args.m,
                ef_construction=args.ef_construction, create_roles=args.create_roles,
            )  # fmt: skip
        print(f"{redact(args.uri)} schema {args.schema}: initialised" +
              (f", applied migrations {applied}" if applied else " (already up to date)"))  # fmt: skip
        return 0
    if args.command == "migrate":
        with connect(args.uri) as conn:
            applied = schema_mod.migrate(conn, args.schema)
        print(f"schema {args.schema}: " + (f"applied migrations {applied}" if applied else "up to date"))
        return 0
    if args.command == "status":
        with connect(args.uri) as conn:
            status = schema_mod.status(conn, args.schema)
        _print_status(args, status)
        return 0 if status.info is not None and not status.pending else 3
    if args.command == "index":
        with connect(args.uri) as conn:
            if args.action == "create":
                name = schema_mod.create_index(conn, args.schema, args.which, hnsw_m=args.m,
                                               ef_construction=args.ef_construction)  # fmt: skip
                print(f"built {name}")
            else:
                schema_mod.drop_index(conn, args.schema, args.which)
                print(f"dropped the {args.which} index")
        return 0
    if args.command == "roles":
        with connect(args.uri) as conn, conn.transaction():
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
            from tscm_ros.fleet.local import LocalPlaceStore

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
            with connect(args.uri) as conn:
                name = schema_mod.create_index(conn, args.schema, "reduced", hnsw_m=args.m,
                                               ef_construction=args.ef_construction)  # fmt: skip
            print(f"built {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
