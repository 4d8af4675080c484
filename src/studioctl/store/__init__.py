"""The store: instances, events, launch timings, tenants and keys, usage, bench results.

``Database`` (``store.db``) is the interface the repositories use; ``store.sqlite`` (a local
file, the only importer of ``sqlite3``) and ``store.postgres`` (a shared database, the only
importer of ``psycopg``) implement it, both imported inside functions so that importing
this package costs nothing until a database is opened. Repositories take a ``Database``
and return frozen dataclasses; rows are read by column name.

    db = open_database()               # <state dir>/studioctl.db, migrated
    db = open_store(settings.store)    # the configured backend, migrated
    store = Store(db)
    store.instances.insert(InstanceRow(...))
    store.events.append("state", "tiny-cpu-1 is ready", instance_id="tiny-cpu-1")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from studioctl.store import migrations
from studioctl.store.db import Database
from studioctl.store.events import Event, EventRepo
from studioctl.store.instances import (
    LAUNCH_OUTCOMES,
    LAUNCH_READY,
    InstanceRepo,
    InstanceRow,
    Launch,
    LaunchRepo,
    ProcRef,
    Transition,
)
from studioctl.store.tenants import ApiKey, KeyRepo, Tenant, TenantRepo
from studioctl.store.usage import (
    UsageRecord,
    UsageRepo,
    UsageStats,
    UsageSummary,
    UsageWriter,
)

if TYPE_CHECKING:
    from studioctl.settings.schema import StoreSettings


def open_database(path: Path | None = None, *, migrate: bool = True) -> Database:
    """Open (and by default migrate) a database: the SQLite file at ``path``; without one,
    the configured store (``store.backend``: PostgreSQL, or ``paths.database_file()``), so
    that what the CLI saves (bench runs) lands where the daemons keep the rest."""
    if path is None:
        configured = configured_store()
        if configured.backend == "postgres" and configured.url:
            return open_store(configured, migrate=migrate)
    return _open_file(path, migrate)


def _open_file(path: Path | None, migrate: bool) -> Database:
    from studioctl import paths
    from studioctl.store.sqlite import SqliteDatabase

    return _migrated(SqliteDatabase(path or paths.database_file()), migrate)


def configured_store() -> StoreSettings:
    """The ``store.*`` settings (file and environment)."""
    from studioctl.settings import load_settings

    return load_settings().store


def daemon_identity() -> str:
    """This daemon's name as the owner of its instance rows in a shared database: the
    host and the state folder, stable across restarts (so it adopts its own engines) and
    distinct for two daemons on one host."""
    import socket

    from studioctl import paths

    return f"{socket.gethostname()}:{paths.state_dir()}"[:200]


def open_store(
    settings: StoreSettings, *, migrate: bool = True, owner: str | None = None
) -> Database:
    """The configured store, migrated: the local SQLite file, or PostgreSQL at
    ``settings.url`` on behalf of ``owner`` (``daemon_identity()`` by default)."""
    if settings.backend != "postgres" or not settings.url:
        return _open_file(None, migrate)
    from studioctl.store.postgres import PostgresDatabase

    db = PostgresDatabase(settings.url, owner=owner or daemon_identity())
    return _migrated(db, migrate)


def check_connection(settings: StoreSettings) -> None:
    """For ``studioctl config validate``: with the postgres backend, connect once and run a
    query; ``ConfigError`` (key ``store.url``) naming the URL without its password when
    that fails. The SQLite backend has nothing to reach."""
    if settings.backend != "postgres" or not settings.url:
        return
    from studioctl.errors import ConfigError, StoreError
    from studioctl.store.postgres import PostgresDatabase, redact

    try:
        with PostgresDatabase(settings.url, connect_timeout_s=5) as db:
            db.query_one("SELECT 1")
    except StoreError as exc:
        raise ConfigError(
            f"store.url: cannot use {redact(settings.url)}: {exc.message}", key="store.url"
        ) from None


def _migrated(db: Database, migrate: bool) -> Database:
    if migrate:
        try:
            migrations.migrate(db)
        except BaseException:
            db.close()
            raise
    return db


@dataclass(frozen=True)
class Store:
    """Every repository over one Database."""

    db: Database

    @property
    def instances(self) -> InstanceRepo:
        return InstanceRepo(self.db)

    @property
    def launches(self) -> LaunchRepo:
        return LaunchRepo(self.db)

    @property
    def events(self) -> EventRepo:
        return EventRepo(self.db)

    @property
    def tenants(self) -> TenantRepo:
        return TenantRepo(self.db)

    @property
    def keys(self) -> KeyRepo:
        return KeyRepo(self.db)

    @property
    def usage(self) -> UsageRepo:
        return UsageRepo(self.db)


__all__ = [
    "LAUNCH_OUTCOMES",
    "LAUNCH_READY",
    "ApiKey",
    "Database",
    "Event",
    "EventRepo",
    "InstanceRepo",
    "InstanceRow",
    "KeyRepo",
    "Launch",
    "LaunchRepo",
    "ProcRef",
    "Store",
    "Tenant",
    "TenantRepo",
    "Transition",
    "UsageRecord",
    "UsageRepo",
    "UsageStats",
    "UsageSummary",
    "UsageWriter",
    "check_connection",
    "daemon_identity",
    "open_database",
    "open_store",
]
