"""Numbered schema migrations, recorded by name in ``schema_migrations``.

Each ``@migration def mNNN_what(db)`` runs once, in its own transaction together with the
row that records it, so a crash mid-migration leaves the database at the previous step.
A migration, once released, is never edited: change the schema with a new one.
The same migrations run on SQLite and PostgreSQL: they are written in SQLite's spelling and
the PostgreSQL backend rewrites the types (``studioctl.store.postgres.translate``). A database
that records a migration this code does not know was written by a newer studioctl and is
refused (``SchemaTooNew``) rather than half understood.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from studioctl.errors import SchemaTooNew
from studioctl.store.db import Database


@dataclass(frozen=True)
class Migration:
    number: int
    name: str
    fn: Callable[[Database], None]


MIGRATIONS: list[Migration] = []

_NAME = re.compile(r"^m(\d{3})_[a-z0-9_]+$")


def migration(fn: Callable[[Database], None]) -> Callable[[Database], None]:
    """Register ``fn`` (named ``mNNN_description``) as the next migration."""
    m = _NAME.match(fn.__name__)
    if not m:
        raise ValueError(f"migration {fn.__name__!r}: name it mNNN_description")
    number = int(m.group(1))
    if MIGRATIONS and number != MIGRATIONS[-1].number + 1:
        raise ValueError(
            f"migration {fn.__name__!r}: expected number {MIGRATIONS[-1].number + 1:03d}"
        )
    MIGRATIONS.append(Migration(number, fn.__name__, fn))
    return fn


def _run(db: Database, *statements: str) -> None:
    # One execute() per statement: executescript() would COMMIT the open transaction.
    for sql in statements:
        db.execute(sql)


def _ensure_table(db: Database) -> None:
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
    )


def applied(db: Database) -> list[str]:
    """Names of the migrations recorded in the database, oldest first."""
    with db.transaction():
        db.lock_schema()
        _ensure_table(db)
    rows = db.query("SELECT name FROM schema_migrations ORDER BY name")
    return [r["name"] for r in rows]


def latest() -> str:
    return MIGRATIONS[-1].name


def migrate(db: Database, *, target: str | None = None) -> list[str]:
    """Apply every pending migration in order (stop after ``target``); return their names.

    Safe to run from two processes at once: each step re-checks, under the write lock,
    whether the other one applied it first.
    """
    names = [m.name for m in MIGRATIONS]
    if target is not None and target not in names:
        raise ValueError(f"unknown migration {target!r} (known: {', '.join(names)})")
    done = set(applied(db))
    unknown = sorted(done - set(names))
    if unknown:
        raise SchemaTooNew(
            f"database {db.where} was written by a newer studioctl: it has migration(s) "
            f"{', '.join(unknown)} that this version does not know (it knows up to "
            f"{latest()})",
            hint="upgrade studioctl, or set STUDIOCTL_HOME to use another database",
        )
    ran: list[str] = []
    for m in MIGRATIONS:
        with db.transaction():
            db.lock_schema()
            if db.query_one("SELECT 1 FROM schema_migrations WHERE name = ?", (m.name,)):
                pass  # applied before, or by a concurrent process while we waited
            else:
                m.fn(db)
                db.execute(
                    "INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)",
                    (m.name, time.time()),
                )
                db.schema_step(m.number)
                ran.append(m.name)
        if m.name == target:
            break
    return ran


# --------------------------------------------------------------------------------------
# The migrations. Never edit one that has been released; add the next number instead.
# --------------------------------------------------------------------------------------


@migration
def m001_initial(db: Database) -> None:
    """Instances (with their state history and id counters), events, launch timings."""
    _run(
        db,
        """CREATE TABLE instances (
            id              TEXT PRIMARY KEY,
            recipe_id       TEXT NOT NULL,
            backend         TEXT NOT NULL,
            model           TEXT NOT NULL,
            served_name     TEXT NOT NULL,
            host            TEXT NOT NULL,
            port            INTEGER NOT NULL,
            pid             INTEGER,
            create_time     REAL,           -- psutil create_time: pid + this = identity
            pgid            INTEGER,
            recipe_hash     TEXT NOT NULL DEFAULT '',
            recipe_json     TEXT NOT NULL DEFAULT '{}',
            log_path        TEXT NOT NULL DEFAULT '',
            gpus            TEXT NOT NULL DEFAULT '[]',          -- JSON list of ints
            state           TEXT NOT NULL,
            state_reason    TEXT NOT NULL DEFAULT '',
            restarts        INTEGER NOT NULL DEFAULT 0,
            crash_times     TEXT NOT NULL DEFAULT '[]',          -- JSON list of floats
            desired         TEXT NOT NULL DEFAULT 'running'
                            CHECK (desired IN ('running', 'stopped')),
            process_tree    TEXT NOT NULL DEFAULT '[]',  -- JSON [{pid, create_time}]
            created_at      REAL NOT NULL,
            updated_at      REAL NOT NULL,
            started_at      REAL,
            ready_at        REAL,
            stopped_at      REAL,
            next_restart_at REAL
        )""",
        "CREATE INDEX instances_recipe ON instances (recipe_id)",
        "CREATE INDEX instances_state ON instances (state)",
        """CREATE TABLE instance_transitions (
            seq         INTEGER PRIMARY KEY AUTOINCREMENT,
            instance_id TEXT NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
            from_state  TEXT,               -- NULL for the first state
            to_state    TEXT NOT NULL,
            reason      TEXT NOT NULL DEFAULT '',
            ts          REAL NOT NULL
        )""",
        "CREATE INDEX instance_transitions_instance ON instance_transitions (instance_id, seq)",
        # The last number handed out per recipe: ids are never reused, even after deletes.
        """CREATE TABLE instance_ids (
            recipe_id TEXT PRIMARY KEY,
            last      INTEGER NOT NULL
        )""",
        # AUTOINCREMENT: ids keep growing after prune(), so `since(after_id)` cursors held
        # by event streams never see an id twice.
        """CREATE TABLE events (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            ts          REAL NOT NULL,
            kind        TEXT NOT NULL,
            message     TEXT NOT NULL,
            instance_id TEXT,
            recipe_id   TEXT,
            data        TEXT                -- JSON object or NULL
        )""",
        "CREATE INDEX events_ts ON events (ts)",
        "CREATE INDEX events_instance ON events (instance_id, id)",
        """CREATE TABLE launches (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            recipe_id   TEXT NOT NULL,
            instance_id TEXT NOT NULL,
            started_at  REAL NOT NULL,
            outcome     TEXT NOT NULL,
            total_s     REAL NOT NULL,
            stages      TEXT NOT NULL       -- JSON {stage: seconds from start}
        )""",
        "CREATE INDEX launches_recipe ON launches (recipe_id, outcome, started_at)",
    )


@migration
def m002_tenants(db: Database) -> None:
    """Gateway tenants and their API keys (stored as SHA-256 only)."""
    _run(
        db,
        """CREATE TABLE tenants (
            id             TEXT PRIMARY KEY,            -- t_<hex>
            name           TEXT NOT NULL UNIQUE COLLATE NOCASE,
            enabled        INTEGER NOT NULL DEFAULT 1,
            profile        TEXT NOT NULL,
            limits         TEXT NOT NULL DEFAULT '{}',  -- JSON overrides of the profile
            allowed_models TEXT,                        -- JSON list, NULL = all
            created_at     REAL NOT NULL,
            updated_at     REAL NOT NULL
        )""",
        """CREATE TABLE api_keys (
            id           TEXT PRIMARY KEY,              -- k_<hex>
            tenant_id    TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            key_hash     TEXT NOT NULL,                 -- hex SHA-256 of the key
            prefix       TEXT NOT NULL,                 -- shown in lists and usage
            created_at   REAL NOT NULL,
            expires_at   REAL,
            revoked_at   REAL,
            last_used_at REAL
        )""",
        # The gateway looks a key up by hash on every request: one index probe, no scan.
        "CREATE UNIQUE INDEX api_keys_hash ON api_keys (key_hash)",
        "CREATE INDEX api_keys_tenant ON api_keys (tenant_id)",
        "CREATE INDEX api_keys_prefix ON api_keys (prefix)",
    )


# Histogram layout of the usage rollup (bucket count per histogram). Fixed here because a
# released migration never changes; store/usage.py checks that its bounds match.
USAGE_HIST_BUCKETS = 49


@migration
def m003_usage(db: Database) -> None:
    """Per-request usage rows and their rollup by minute, 10 minutes, hour and day."""
    hist = ",\n".join(
        f"            {p}{i} INTEGER NOT NULL DEFAULT 0"
        for p in ("lat_b", "ttft_b")
        for i in range(USAGE_HIST_BUCKETS)
    )
    _run(
        db,
        """CREATE TABLE usage (
            id                INTEGER PRIMARY KEY,
            ts                REAL NOT NULL,    -- the request's time (picks its minute)
            tenant_id         TEXT,
            key_prefix        TEXT,
            model             TEXT,
            instance_id       TEXT,
            status            INTEGER NOT NULL,
            prompt_tokens     INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            ttft_ms           REAL,
            duration_ms       REAL NOT NULL,
            streamed          INTEGER NOT NULL DEFAULT 0,
            disconnected      INTEGER NOT NULL DEFAULT 0,
            error_code        TEXT
        )""",
        "CREATE INDEX usage_ts ON usage (ts)",
        # res = 60 | 600 | 3600 | 86400 seconds; period = floor(ts / res).
        # scope: 0 = per (tenant, model), 1 = per tenant (model ''), 2 = per model
        # (tenant ''), 3 = everything (both ''): an unfiltered summary reads tenants +
        # models + 1 rows per period instead of tenants x models.
        # tenant_id and model are '' rather than NULL: NULLs never conflict, and the
        # upsert relies on conflicts.
        f"""CREATE TABLE usage_rollup (
            res               INTEGER NOT NULL,
            scope             INTEGER NOT NULL,
            period            INTEGER NOT NULL,
            tenant_id         TEXT NOT NULL,
            model             TEXT NOT NULL,
            requests          INTEGER NOT NULL DEFAULT 0,
            errors            INTEGER NOT NULL DEFAULT 0,
            disconnected      INTEGER NOT NULL DEFAULT 0,
            streamed          INTEGER NOT NULL DEFAULT 0,
            prompt_tokens     INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            lat_count         INTEGER NOT NULL DEFAULT 0,
            lat_sum_ms        REAL NOT NULL DEFAULT 0,
            lat_max_ms        REAL NOT NULL DEFAULT 0,
            ttft_count        INTEGER NOT NULL DEFAULT 0,
            ttft_sum_ms       REAL NOT NULL DEFAULT 0,
            ttft_max_ms       REAL NOT NULL DEFAULT 0,
{hist},
            PRIMARY KEY (res, scope, period, tenant_id, model)
        ) WITHOUT ROWID""",
    )


@migration
def m004_recipe_stats(db: Database) -> None:
    """Lifetime totals and peak figures per recipe (telemetry: tokens, energy, uptime).

    A peak is its value, when it was seen and on which instance; ``ttft_best_s`` is the
    lowest time to first token (a minimum), every other peak a maximum.
    """
    _run(
        db,
        """CREATE TABLE recipe_stats (
            recipe_id            TEXT PRIMARY KEY,
            prompt_tokens        REAL NOT NULL DEFAULT 0,
            generation_tokens    REAL NOT NULL DEFAULT 0,
            requests             REAL NOT NULL DEFAULT 0,
            energy_j             REAL NOT NULL DEFAULT 0,
            uptime_s             REAL NOT NULL DEFAULT 0,
            first_seen           REAL NOT NULL,
            updated_at           REAL NOT NULL,
            prefill_tps          REAL,
            prefill_tps_at       REAL,
            prefill_tps_instance TEXT,
            generation_tps          REAL,
            generation_tps_at       REAL,
            generation_tps_instance TEXT,
            ttft_best_s          REAL,
            ttft_best_s_at       REAL,
            ttft_best_s_instance TEXT,
            concurrent           REAL,
            concurrent_at        REAL,
            concurrent_instance  TEXT,
            kv_cache             REAL,
            kv_cache_at          REAL,
            kv_cache_instance    TEXT,
            power_w              REAL,
            power_w_at           REAL,
            power_w_instance     TEXT
        )""",
    )


@migration
def m005_instance_api_key(db: Database) -> None:
    """Each engine's own API key, generated at launch: a restarted or adopted engine keeps
    answering to the key the gateway, probes and scrapes send. NULL: started before keys."""
    _run(db, "ALTER TABLE instances ADD COLUMN api_key TEXT")


@migration
def m006_recipe_vram(db: Database) -> None:
    """The most GPU memory a recipe's processes held during its last run (NVML), and the
    recipe's hash then: placement's learned memory need, valid while the recipe is unchanged."""
    _run(
        db,
        """CREATE TABLE recipe_vram (
            recipe_id    TEXT PRIMARY KEY,
            recipe_hash  TEXT NOT NULL,
            instance_id  TEXT NOT NULL,
            vram_bytes   INTEGER NOT NULL,
            at           REAL NOT NULL
        )""",
    )


@migration
def m007_usage_queue_ms(db: Database) -> None:
    """Milliseconds each request waited in a gateway queue (for a loading model, or for a
    slot with gateway.queue_when_busy); 0 for the rows written before."""
    _run(db, "ALTER TABLE usage ADD COLUMN queue_ms REAL NOT NULL DEFAULT 0")


@migration
def m008_bench_runs(db: Database) -> None:
    """Saved benchmark runs (``studioctl bench --save``): the whole versioned document, the
    columns ``bench history`` filters and shows, and one row per flat metric with its spread
    over repeated runs (``--repeat``), which ``bench compare`` reads."""
    _run(
        db,
        """CREATE TABLE bench_runs (
            id             TEXT PRIMARY KEY,   -- short, printed: what history and compare take
            created_at     REAL NOT NULL,
            kind           TEXT NOT NULL,      -- serving | cold-start | switch | evict | ...
            schema         TEXT NOT NULL,      -- the document's version (studioctl.bench/1)
            recipe_id      TEXT,
            recipe_hash    TEXT,
            engine         TEXT,
            engine_version TEXT,
            gpu_names      TEXT,               -- JSON list; NULL: no GPU reading
            gpu_driver     TEXT,
            target_kind    TEXT,
            target_url     TEXT,
            model          TEXT,
            workload       TEXT NOT NULL DEFAULT '{}',  -- JSON summary of the workload
            repeat         INTEGER NOT NULL DEFAULT 1,
            passed         INTEGER,            -- 1/0 with --fail-if, NULL without the field
            document       TEXT NOT NULL       -- the whole JSON document
        )""",
        "CREATE INDEX bench_runs_recipe ON bench_runs (recipe_id, created_at)",
        "CREATE INDEX bench_runs_created ON bench_runs (created_at)",
        """CREATE TABLE bench_metrics (
            run_id  TEXT NOT NULL REFERENCES bench_runs (id) ON DELETE CASCADE,
            name    TEXT NOT NULL,
            value   REAL,                      -- NULL: not measured
            min     REAL,                      -- min, max, std: over --repeat runs, else NULL
            max     REAL,
            std     REAL,
            PRIMARY KEY (run_id, name)
        ) WITHOUT ROWID""",
    )


@migration
def m009_request_log(db: Database) -> None:
    """The request log: each usage row's request id (the ``X-Request-Id`` the gateway
    answered with; NULL for the rows written before), and the bodies of the requests of a
    recipe or tenant with ``log_bodies`` on (each capped at ``usage.body_max_bytes``, pruned
    after ``usage.body_retention_days``)."""
    _run(
        db,
        "ALTER TABLE usage ADD COLUMN request_id TEXT",
        "CREATE INDEX usage_request_id ON usage (request_id)",
        """CREATE TABLE request_bodies (
            request_id  TEXT NOT NULL,
            ts          REAL NOT NULL,     -- the request's time (pruning)
            request     TEXT,              -- the request body, as sent (capped)
            response    TEXT,              -- the JSON answer or a stream's assembled text
            truncated   INTEGER NOT NULL DEFAULT 0  -- 1: a body was cut at the cap
        )""",
        "CREATE INDEX request_bodies_id ON request_bodies (request_id)",
        "CREATE INDEX request_bodies_ts ON request_bodies (ts)",
    )


@migration
def m010_instance_owner(db: Database) -> None:
    """The daemon that runs each instance, when several share one database (PostgreSQL):
    a daemon lists, adopts and evicts only its own. '' for the rows written before, and
    for every row of a local SQLite file, which one daemon owns whole."""
    _run(
        db,
        "ALTER TABLE instances ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
        "CREATE INDEX instances_owner ON instances (owner, state)",
    )


@migration
def m011_mailbox(db: Database) -> None:
    """The mailbox (issue 15): the kept results of requests whose client went away, keyed by
    request id and readable by their tenant only; the webhook outbox (one delivery per
    record, which survives a restart) and the log of every delivery attempt. Portable SQL:
    times are computed by the daemon, ids are the request ids."""
    _run(
        db,
        """CREATE TABLE mailbox (
            request_id  TEXT PRIMARY KEY,
            tenant_id   TEXT NOT NULL,
            model       TEXT,
            created     REAL NOT NULL,     -- time.time() when the request arrived
            status      TEXT NOT NULL,     -- completed | failed | incomplete
            response    TEXT NOT NULL,     -- the JSON answer (a stream: assembled)
            expires_at  REAL NOT NULL      -- pruned after mailbox.retention_secs
        )""",
        "CREATE INDEX mailbox_tenant ON mailbox (tenant_id, created)",
        "CREATE INDEX mailbox_expires ON mailbox (expires_at)",
        """CREATE TABLE webhook_outbox (
            request_id  TEXT PRIMARY KEY,
            url         TEXT NOT NULL,
            headers     TEXT NOT NULL DEFAULT '{}',  -- JSON: the request's own (bearer)
            payload     TEXT NOT NULL,     -- the exact bytes every try sends (and signs)
            state       TEXT NOT NULL,     -- pending | delivered | failed
            attempts    INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL,
            next_at     REAL NOT NULL,     -- when the next try is due
            updated_at  REAL NOT NULL
        )""",
        "CREATE INDEX webhook_outbox_due ON webhook_outbox (state, next_at)",
        """CREATE TABLE webhook_attempts (
            request_id  TEXT NOT NULL,
            attempt     INTEGER NOT NULL,
            at          REAL NOT NULL,
            url         TEXT NOT NULL,     -- scheme, host and path only (no query: secrets)
            status_code INTEGER,           -- NULL: no answer (refused, timeout)
            error       TEXT,              -- bounded, never a header or the body
            duration_ms REAL NOT NULL,
            PRIMARY KEY (request_id, attempt)
        )""",
    )
