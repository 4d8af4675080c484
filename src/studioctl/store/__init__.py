"""The SQLite store: instances, events, launch timings, tenants and keys, usage.

The only package that imports ``sqlite3`` (and only inside functions, so importing it
costs nothing until a database is opened). Repositories take a ``Database`` and return
frozen dataclasses; rows are read by column name.

    db = open_database()               # <state dir>/studioctl.db, migrated
    store = Store(db)
    store.instances.insert(InstanceRow(...))
    store.events.append("state", "tiny-cpu-1 is ready", instance_id="tiny-cpu-1")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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


def open_database(path: Path | None = None, *, migrate: bool = True) -> Database:
    """Open (and by default migrate) the database, ``paths.database_file()`` by default."""
    from studioctl import paths

    db = Database(path or paths.database_file())
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
    "open_database",
]
