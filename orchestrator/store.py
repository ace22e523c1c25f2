"""Records: VMs the orchestrator made, every migration with its samples, and events.

SQLite from the standard library, one file under the state directory, schema versioned
(`PRAGMA user_version`). Every migration — completed, failed or aborted — is a row here:
the records are both the audit trail and the predictor's calibration data set.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import OrchestratorError

SCHEMA_VERSION = 5

SCHEMA = """
CREATE TABLE IF NOT EXISTS vms (
    name TEXT PRIMARY KEY,
    uuid TEXT NOT NULL,
    node TEXT NOT NULL,
    memory_mib INTEGER NOT NULL,
    vcpus INTEGER NOT NULL,
    address TEXT,
    mac TEXT NOT NULL,
    role TEXT NOT NULL DEFAULT 'proxy',
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS migrations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    vm TEXT NOT NULL,
    source TEXT NOT NULL,
    destination TEXT NOT NULL,
    status TEXT NOT NULL,               -- running | completed | failed | aborted
    started_at REAL NOT NULL,
    finished_at REAL,
    pid INTEGER,
    params TEXT NOT NULL,               -- JSON: what was asked for
    prediction TEXT,                    -- JSON: what the predictor said beforehand
    result TEXT,                        -- JSON: final job stats and derived figures
    error TEXT
);
CREATE TABLE IF NOT EXISTS samples (
    migration_id INTEGER NOT NULL REFERENCES migrations(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    data TEXT NOT NULL,                 -- JSON: one job-stats sample
    PRIMARY KEY (migration_id, seq)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    data TEXT NOT NULL
);
-- v2 (issue 3): users, their devices, applications and the models they installed.
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    proxy_vm TEXT,                      -- shared by users who trust each other
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,                -- EPC URN, EPC-96 hex or IPv6
    user TEXT NOT NULL REFERENCES users(name),
    type TEXT NOT NULL,
    mobility TEXT NOT NULL,             -- static | mobile
    role TEXT NOT NULL,                 -- sensor | actuator
    bs TEXT,                            -- base station (fog node) it attaches to
    grp TEXT,                           -- devices mounted together (one car)
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS applications (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,                 -- parknet | traffic | facefind
    deployment TEXT NOT NULL,           -- local | remote | addon
    types TEXT NOT NULL,                -- JSON: data types granted
    params TEXT NOT NULL,               -- JSON: model parameters
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS app_vms (
    app TEXT NOT NULL REFERENCES applications(name) ON DELETE CASCADE,
    vm TEXT NOT NULL,
    node TEXT NOT NULL,
    offloaded INTEGER NOT NULL DEFAULT 0,  -- placed in the cloud for lack of fog capacity
    PRIMARY KEY (app, vm)
);
CREATE TABLE IF NOT EXISTS app_models (
    app TEXT NOT NULL REFERENCES applications(name) ON DELETE CASCADE,
    proxy_vm TEXT NOT NULL,
    sink_vm TEXT NOT NULL,
    PRIMARY KEY (app, proxy_vm)
);
-- v3 (issue 5): base stations and the fog nodes serving them, location history.
CREATE TABLE IF NOT EXISTS base_stations (
    bs_id TEXT PRIMARY KEY,
    node TEXT NOT NULL,                 -- primary fog node
    alternates TEXT NOT NULL DEFAULT '[]',  -- JSON: co-located nodes, same core cost
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS locations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    device TEXT NOT NULL,
    bs_id TEXT NOT NULL,
    reporter TEXT                       -- cluster head that reported it, if not the device
);
CREATE INDEX IF NOT EXISTS locations_device ON locations(device, at);
-- v4 (issue 13): secret keys, apart from the rows they belong to so that no listing
-- (SELECT * of vms or devices) can carry one; read one subject at a time.
CREATE TABLE IF NOT EXISTS vm_keys (
    vm TEXT PRIMARY KEY,                -- the guest agent's control key (kernel command line)
    key TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS device_keys (
    device TEXT PRIMARY KEY,            -- the device's credential for hello on the proxy
    key TEXT NOT NULL
);
-- v5 (issue 13): who owns what across processes. A process is (pid, its start time), so a
-- reused pid is no owner. Leases: a migration in flight (reconcile leaves its VM alone).
-- Allocations: a VM address handed out but not yet in `vms` (UNIQUE: never twice).
CREATE TABLE IF NOT EXISTS leases (
    vm TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    pid_started REAL NOT NULL,
    source TEXT,
    destination TEXT,
    acquired_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS allocations (
    vm TEXT PRIMARY KEY,
    address TEXT UNIQUE,
    pid INTEGER NOT NULL,
    pid_started REAL NOT NULL,
    created_at REAL NOT NULL
);
"""


def keep_private(path: Path) -> None:
    """The records hold keys (v4): the file is the owner's only, from its creation on
    (SQLite gives its -wal and -shm files the database file's mode)."""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
    except OSError:
        pass  # not ours to change (read-only state, another owner): SQLite says what is wrong


@dataclass(frozen=True)
class VmRecord:
    name: str
    uuid: str
    node: str
    memory_mib: int
    vcpus: int
    address: str | None
    mac: str
    role: str = "proxy"
    created_at: float = 0.0


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        keep_private(path)
        try:
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
        except sqlite3.Error as exc:
            raise OrchestratorError(f"cannot open records {path}: {exc}") from exc
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self._migrate_schema()

    def _migrate_schema(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise OrchestratorError(f"records {self.path} have schema {version}, newer than "
                                    f"this orchestrator ({SCHEMA_VERSION})")
        self.db.executescript(SCHEMA)
        self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- VMs -------------------------------------------------------------------------

    def add_vm(self, vm: VmRecord, key: str | None = None) -> None:
        """Record a VM and, in the same transaction, its control key (if it has one)."""
        with self.transaction() as db:
            db.execute("INSERT INTO vms VALUES (?,?,?,?,?,?,?,?,?)",
                       (vm.name, vm.uuid, vm.node, vm.memory_mib, vm.vcpus, vm.address,
                        vm.mac, vm.role, vm.created_at or time.time()))
            db.execute("DELETE FROM vm_keys WHERE vm=?", (vm.name,))
            if key is not None:
                db.execute("INSERT INTO vm_keys VALUES (?,?)", (vm.name, key))

    def vm_key(self, name: str) -> str | None:
        """The VM's control key; None for a VM recorded before keys existed."""
        row = self.db.execute("SELECT key FROM vm_keys WHERE vm=?", (name,)).fetchone()
        return str(row[0]) if row else None

    def vm(self, name: str) -> VmRecord | None:
        row = self.db.execute("SELECT * FROM vms WHERE name=?", (name,)).fetchone()
        return VmRecord(**dict(row)) if row else None

    def vms(self) -> list[VmRecord]:
        return [VmRecord(**dict(r)) for r in self.db.execute("SELECT * FROM vms ORDER BY name")]

    def set_vm_node(self, name: str, node: str) -> None:
        self.db.execute("UPDATE vms SET node=? WHERE name=?", (node, name))

    def remove_vm(self, name: str) -> None:
        self.db.execute("DELETE FROM vms WHERE name=?", (name,))
        self.db.execute("DELETE FROM vm_keys WHERE vm=?", (name,))  # a reused name gets a new one

    def used_addresses(self) -> set[str]:
        """Addresses of recorded VMs and of allocations still being created (v5)."""
        return {r[0] for r in self.db.execute(
            "SELECT address FROM vms WHERE address IS NOT NULL UNION "
            "SELECT address FROM allocations WHERE address IS NOT NULL")}

    # --- migrations ------------------------------------------------------------------

    def start_migration(self, vm: str, source: str, destination: str,
                        params: dict[str, Any], prediction: dict[str, Any] | None,
                        pid: int) -> int:
        cur = self.db.execute(
            "INSERT INTO migrations (vm, source, destination, status, started_at, pid, params,"
            " prediction) VALUES (?,?,?,?,?,?,?,?)",
            (vm, source, destination, "running", time.time(), pid, json.dumps(params),
             json.dumps(prediction) if prediction is not None else None))
        return int(cur.lastrowid or 0)

    def add_sample(self, migration_id: int, seq: int, sample: dict[str, Any]) -> None:
        """One live job-stats sample, written as it arrives (the exporter shows it)."""
        self.db.execute("INSERT OR REPLACE INTO samples VALUES (?,?,?)",
                        (migration_id, seq, json.dumps(sample)))

    def finish_migration(self, migration_id: int, status: str, result: dict[str, Any],
                         samples: Iterable[dict[str, Any]], error: str | None = None) -> None:
        with self.transaction() as db:
            db.execute("UPDATE migrations SET status=?, finished_at=?, result=?, error=? "
                       "WHERE id=?", (status, time.time(), json.dumps(result), error,
                                      migration_id))
            db.executemany("INSERT OR REPLACE INTO samples VALUES (?,?,?)",
                           [(migration_id, i, json.dumps(s)) for i, s in enumerate(samples)])

    def migrations(self, vm: str | None = None, status: str | None = None,
                   limit: int | None = None) -> list[dict[str, Any]]:
        query, args = "SELECT * FROM migrations WHERE 1=1", []
        if vm:
            query, args = query + " AND vm=?", [*args, vm]
        if status:
            query, args = query + " AND status=?", [*args, status]
        query += " ORDER BY id DESC" + (f" LIMIT {int(limit)}" if limit else "")
        return [self._migration_row(r) for r in self.db.execute(query, args)]

    def migration(self, migration_id: int, with_samples: bool = True) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM migrations WHERE id=?", (migration_id,)).fetchone()
        if row is None:
            return None
        record = self._migration_row(row)
        if with_samples:
            record["samples"] = self.samples(migration_id)
        return record

    def samples(self, migration_id: int) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT data FROM samples WHERE migration_id=? ORDER BY seq",
                               (migration_id,))
        return [json.loads(r[0]) for r in rows]

    @staticmethod
    def _migration_row(row: sqlite3.Row) -> dict[str, Any]:
        record = dict(row)
        for key in ("params", "prediction", "result"):
            record[key] = json.loads(record[key]) if record[key] else None
        return record

    # --- events ----------------------------------------------------------------------

    def add_event(self, kind: str, subject: str, data: dict[str, Any]) -> None:
        self.db.execute("INSERT INTO events (at, kind, subject, data) VALUES (?,?,?,?)",
                        (time.time(), kind, subject, json.dumps(data)))

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT * FROM events" + (" WHERE kind=?" if kind else "") + " ORDER BY id"
        rows = self.db.execute(query, (kind,) if kind else ())
        return [{**dict(r), "data": json.loads(r["data"])} for r in rows]


    # --- users, devices, applications (v2) ----------------------------------------------

    def add_user(self, name: str, proxy_vm: str | None) -> None:
        self.db.execute("INSERT INTO users VALUES (?,?,?)", (name, proxy_vm, time.time()))

    def users(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute("SELECT * FROM users ORDER BY name")]

    def user(self, name: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM users WHERE name=?", (name,)).fetchone()
        return dict(row) if row else None

    def set_user_proxy(self, name: str, proxy_vm: str | None) -> None:
        self.db.execute("UPDATE users SET proxy_vm=? WHERE name=?", (proxy_vm, name))

    def add_device(self, device: dict[str, Any], key: str | None = None) -> None:
        """Record a device and, in the same transaction, its credential (if given)."""
        with self.transaction() as db:
            db.execute("INSERT INTO devices VALUES (?,?,?,?,?,?,?,?)",
                       (device["id"], device["user"], device["type"], device["mobility"],
                        device["role"], device.get("bs"), device.get("grp"), time.time()))
            if key is not None:
                db.execute("INSERT OR REPLACE INTO device_keys VALUES (?,?)",
                           (device["id"], key))

    def set_device_key(self, device_id: str, key: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO device_keys VALUES (?,?)", (device_id, key))

    def device_keys(self, ids: Iterable[str]) -> dict[str, str]:
        """device → credential, for those of `ids` that have one."""
        wanted = sorted(set(ids))
        out: dict[str, str] = {}
        for i in range(0, len(wanted), 500):  # SQLite's bound-parameter limit
            chunk = wanted[i:i + 500]
            marks = ",".join("?" * len(chunk))
            out.update((str(r[0]), str(r[1])) for r in self.db.execute(
                f"SELECT device, key FROM device_keys WHERE device IN ({marks})", chunk))
        return out

    def devices(self, user: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT * FROM devices" + (" WHERE user=?" if user else "") + " ORDER BY id"
        return [dict(r) for r in self.db.execute(query, (user,) if user else ())]

    def add_application(self, name: str, kind: str, deployment: str, types: list[str],
                        params: dict[str, Any]) -> None:
        self.db.execute("INSERT INTO applications VALUES (?,?,?,?,?,?)",
                        (name, kind, deployment, json.dumps(types), json.dumps(params),
                         time.time()))

    def applications(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM applications ORDER BY name")
        return [self._app_row(r) for r in rows]

    def application(self, name: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM applications WHERE name=?", (name,)).fetchone()
        return self._app_row(row) if row else None

    def _app_row(self, row: sqlite3.Row) -> dict[str, Any]:
        app = dict(row)
        app["types"], app["params"] = json.loads(app["types"]), json.loads(app["params"])
        app["vms"] = [dict(r) for r in self.db.execute(
            "SELECT vm, node, offloaded FROM app_vms WHERE app=? ORDER BY vm", (app["name"],))]
        app["models"] = [dict(r) for r in self.db.execute(
            "SELECT proxy_vm, sink_vm FROM app_models WHERE app=? ORDER BY proxy_vm",
            (app["name"],))]
        return app

    def add_app_vm(self, app: str, vm: str, node: str, offloaded: bool) -> None:
        self.db.execute("INSERT INTO app_vms VALUES (?,?,?,?)", (app, vm, node, int(offloaded)))

    def add_app_model(self, app: str, proxy_vm: str, sink_vm: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO app_models VALUES (?,?,?)",
                        (app, proxy_vm, sink_vm))

    def remove_app_models(self, proxy_vm: str) -> None:
        """Forget the models installed on a proxy VM (it is gone)."""
        self.db.execute("DELETE FROM app_models WHERE proxy_vm=?", (proxy_vm,))

    def remove_application(self, name: str) -> None:
        self.db.execute("DELETE FROM applications WHERE name=?", (name,))

    # --- base stations and locations (issue 5) ------------------------------------------

    def add_base_station(self, bs_id: str, node: str, alternates: Iterable[str] = ()) -> None:
        self.db.execute("INSERT OR REPLACE INTO base_stations VALUES (?,?,?,?)",
                        (bs_id, node, json.dumps(list(alternates)), time.time()))

    def base_stations(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM base_stations ORDER BY bs_id")
        return [{**dict(r), "alternates": json.loads(r["alternates"])} for r in rows]

    def add_location(self, device: str, bs_id: str, at: float,
                     reporter: str | None = None) -> None:
        self.db.execute("INSERT INTO locations (at, device, bs_id, reporter) VALUES (?,?,?,?)",
                        (at, device, bs_id, reporter))

    def locations(self, device: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT * FROM locations" + (" WHERE device=?" if device else "")
        rows = self.db.execute(query + " ORDER BY at, id", (device,) if device else ())
        return [dict(r) for r in rows]

    # --- leases and allocations (v5, issue 13) --------------------------------------------

    def take_lease(self, vm: str, owner: tuple[int, float], source: str | None = None,
                   destination: str | None = None) -> None:
        """Record that process `owner` (pid, start time) migrates `vm` now."""
        self.db.execute("INSERT OR REPLACE INTO leases VALUES (?,?,?,?,?,?)",
                        (vm, owner[0], owner[1], source, destination, time.time()))

    def release_lease(self, vm: str, owner: tuple[int, float]) -> None:
        self.db.execute("DELETE FROM leases WHERE vm=? AND pid=? AND pid_started=?",
                        (vm, owner[0], owner[1]))

    def leases(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute("SELECT * FROM leases ORDER BY vm")]

    def allocate_address(self, vm: str, candidates: Iterable[str], owner: tuple[int, float],
                         alive: Callable[[int, float], bool]) -> str:
        """The first candidate no VM and no live allocation holds, taken for `vm` in one
        IMMEDIATE transaction: two processes never get the same one. Allocations of dead
        processes are dropped on the way."""
        with self.transaction() as db:
            for row in db.execute("SELECT vm, pid, pid_started FROM allocations").fetchall():
                if not alive(row["pid"], row["pid_started"]):
                    db.execute("DELETE FROM allocations WHERE vm=?", (row["vm"],))
            if db.execute("SELECT 1 FROM allocations WHERE vm=?", (vm,)).fetchone():
                raise OrchestratorError(f"VM {vm!r} is being created by another process")
            used = self.used_addresses()
            address = next((a for a in candidates if a not in used), None)
            if address is None:
                raise OrchestratorError("no free VM address left")
            db.execute("INSERT INTO allocations VALUES (?,?,?,?,?)",
                       (vm, address, owner[0], owner[1], time.time()))
        return address

    def release_allocation(self, vm: str) -> None:
        self.db.execute("DELETE FROM allocations WHERE vm=?", (vm,))


def open_store(state_dir: Path) -> Store:
    return Store(state_dir / "records.sqlite")
