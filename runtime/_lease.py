"""Ownership of a state file: one engine writes it at a time, under a lease with a fencing token.

The lease is one row in the state file itself: the holder (an id per sopflow
cluster: a coordinator that Ray restarts keeps it), its host and pid, since when
it holds the file, its last heartbeat, its TTL and a token bumped on every
takeover. The holder renews the heartbeat in the same transaction as each of its
commits, matching on its token: a holder whose lease was taken over commits
nothing more (the update matches no row, the transaction is rolled back).

Another engine may take the file over only when the lease is free (released by a
clean shutdown), expired (no heartbeat for the holder's TTL: it crashed or
stalled) or its holder's process is gone (same host, pid no longer running).
"""

from __future__ import annotations

import datetime
import os
import socket
import sqlite3
import time
from dataclasses import dataclass

from runtime.errors import StateStoreInUseError, StateStoreLostError

_TABLE = """CREATE TABLE IF NOT EXISTS lease (id INTEGER PRIMARY KEY CHECK (id = 1), holder TEXT NOT NULL,
    host TEXT NOT NULL, pid INTEGER NOT NULL, since REAL NOT NULL, heartbeat REAL NOT NULL,
    ttl REAL NOT NULL, token INTEGER NOT NULL)"""


@dataclass(frozen=True, slots=True)
class Lease:
    """The lease row of a state file.

    Attributes:
        holder: The owning engine's id (stable across restarts of its coordinator).
        host: The holder's host name.
        pid: The holder's process id.
        since: When it took the file (seconds since the epoch).
        heartbeat: Its last renewal; 0 once released.
        ttl: Seconds without a heartbeat after which the lease may be taken over.
        token: The fencing token, bumped on every takeover.
    """

    holder: str
    host: str
    pid: int
    since: float
    heartbeat: float
    ttl: float
    token: int

    def describe(self) -> str:
        return f"host {self.host} pid {self.pid} since {_clock(self.since)}"

    def free(self, holder: str, now: float) -> bool:
        """Whether ``holder`` may take the file: its own lease, released, expired, or a dead local holder."""
        if self.holder == holder or self.heartbeat <= 0 or now - self.heartbeat > self.ttl:
            return True
        return self.host == socket.gethostname() and not _alive(self.pid)


def read(conn: sqlite3.Connection) -> Lease | None:
    """The lease row, or ``None`` if the file was never owned."""
    try:
        row = conn.execute("SELECT holder, host, pid, since, heartbeat, ttl, token FROM lease").fetchone()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return None
        raise
    return Lease(*row) if row else None


def acquire(conn: sqlite3.Connection, path: str, holder: str, ttl: float) -> int:
    """Take the lease inside the caller's write transaction; returns the new fencing token.

    Raises:
        StateStoreInUseError: another live engine holds the file.
    """
    conn.execute(_TABLE)
    now = time.time()
    current = read(conn)
    if current is not None and not current.free(holder, now):
        raise StateStoreInUseError(
            f"the state file {path} is in use by another sopflow engine ({current.describe()}, last "
            f"heartbeat {now - current.heartbeat:.1f} s ago); only one engine may run on a state file. "
            f"Stop that engine, or wait until its lease expires ({current.ttl:g} s without a heartbeat: "
            "it crashed), or use another state file (SOPFLOW_STATE / Engine.local(state=...))")
    token = (current.token if current else 0) + 1
    conn.execute("INSERT OR REPLACE INTO lease VALUES (1, ?, ?, ?, ?, ?, ?, ?)",
                 (holder, socket.gethostname(), os.getpid(), now, now, ttl, token))
    return token


def renew(conn: sqlite3.Connection, path: str, token: int) -> None:
    """Renew the heartbeat inside the caller's write transaction, if the lease is still ours.

    Raises:
        StateStoreLostError: another engine took the file over; nothing may be committed.
    """
    if conn.execute("UPDATE lease SET heartbeat = ? WHERE id = 1 AND token = ?", (time.time(), token)).rowcount:
        return
    current = read(conn)
    taker = current.describe() if current else "nobody (the lease row is gone)"
    raise StateStoreLostError(f"lost ownership of the state file {path} to {taker}; this engine stops "
                              "writing and runs no further steps (its executions continue there)")


def release(conn: sqlite3.Connection, token: int) -> None:
    """Free the lease (heartbeat 0) so the next engine takes the file at once."""
    conn.execute("UPDATE lease SET heartbeat = 0 WHERE id = 1 AND token = ?", (token,))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def _clock(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
