"""Which targets are PostgreSQL servers, and how to name them without leaking credentials.

A target is a PostgreSQL server when it is a ``postgresql://`` / ``postgres://`` URI or a libpq
key=value conninfo string made only of libpq keywords (``service=fleet``, ``host=db dbname=maps``).
Anything else is a local map path. Credentials are expected to come from libpq itself (``~/.pgpass`` or
``PGPASSFILE``, the service file ``~/.pg_service.conf`` / ``PGSERVICEFILE``, ``PG*`` environment
variables); a password written into the URI still works but is never shown: every log line,
diagnostic value and exception message uses :func:`redact`.
"""

from __future__ import annotations

import os
import re

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

_SCHEMES = ("postgresql://", "postgres://")
_SECRET_KEYS = ("password", "sslpassword", "oauth_client_secret", "scram_client_key", "scram_server_key")
_SHOWN_KEYS = ("service", "host", "hostaddr", "port", "dbname", "user", "sslmode", "target_session_attrs")
_URI_PASSWORD = re.compile(r"(://[^:/@?#\s]*:)[^@/?#\s]*@")
_QUERY_SECRET = re.compile(r"((?:" + "|".join(_SECRET_KEYS) + r")=)[^&\s]*", re.IGNORECASE)
_LIBPQ_KEYWORDS: frozenset[str] | None = None


def _keywords() -> frozenset[str]:
    global _LIBPQ_KEYWORDS
    if _LIBPQ_KEYWORDS is None:
        _LIBPQ_KEYWORDS = frozenset(d.keyword.decode() for d in psycopg.pq.Conninfo.get_defaults())
    return _LIBPQ_KEYWORDS


def is_server_target(target: str | os.PathLike) -> bool:
    """True for PostgreSQL URIs and libpq conninfo strings; False for local map paths."""
    if not isinstance(target, str):
        return False
    text = target.strip()
    if text.lower().startswith(_SCHEMES):
        return True
    if "=" not in text:
        return False
    try:
        params = conninfo_to_dict(text)
    except psycopg.ProgrammingError:
        return False
    return bool(params) and set(params) <= _keywords()


def build_conninfo(target: str, **options: str | int | None) -> str:
    """``target`` with extra libpq options (``sslmode``, ``sslrootcert``, ``connect_timeout``...) merged in.

    Options given as ``None`` are left out; options already in ``target`` win over defaults passed here
    only when ``options`` does not name them.
    """
    return make_conninfo(target.strip(), **{k: str(v) for k, v in options.items() if v is not None})


def redact(target: str) -> str:
    """A password-free description of ``target`` for logs, diagnostics and error messages."""
    try:
        params = conninfo_to_dict(target.strip())
    except psycopg.ProgrammingError:
        return scrub(target)
    shown = [f"{key}={params[key]}" for key in _SHOWN_KEYS if params.get(key)]
    if any(params.get(key) for key in _SECRET_KEYS):
        shown.append("password=***")
    return " ".join(shown) or "(libpq defaults / PG* environment)"


def scrub(text: str, target: str | None = None) -> str:
    """``text`` with URI passwords, ``password=...`` options and the secrets of ``target`` masked."""
    text = _QUERY_SECRET.sub(r"\1***", _URI_PASSWORD.sub(r"\1***@", str(text)))
    if target:
        try:
            params = conninfo_to_dict(target.strip())
        except psycopg.ProgrammingError:
            params = {}
        for key in _SECRET_KEYS:
            secret = params.get(key)
            if secret and len(secret) >= 3:
                text = text.replace(secret, "***")
    return text
