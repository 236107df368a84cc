"""One rate limit for a fleet of processes: the admission log of ``RateLimiter`` in a database.

``RateLimiter`` holds an account's RPM/TPM/concurrency limit for one process. Workers of a fleet
(several processes on one machine, or machines) that each hold the full limit send together up
to N times the limit and collect 429s. ``DatabaseLimiter`` keeps the log in one table that
every worker reads and writes, so the account's limit holds for all of them together::

    limiter = DatabaseLimiter("limits.db", os.environ["MOONSHOT_API_KEY"], rpm=50)
    model = KimiModel(limiter=limiter)           # every worker: the same file, key and rpm

- Storage: a SQLite file (one machine; WAL, each admission one ``BEGIN IMMEDIATE``
  transaction, so admissions of all processes are serialised) or Postgres (``postgresql://``,
  many machines; each admission one transaction under ``pg_advisory_xact_lock`` of the
  account). A row per admitted request: the account (a SHA-256 of the base URL and key: the key
  is never stored), its time, its tokens, its holder and the lease of its concurrency slot.
- Admission drops the rows older than the window (whose slot is free), counts the requests and
  tokens in the window and the slots in flight, and inserts a row if every limit has room;
  otherwise it computes the wait until the oldest row that blocks leaves the window, sleeps
  (without a database call) and tries again. In a process only one waiter at a time asks the
  database (first come, first served); the others queue behind it.
- ``touch``, ``reconcile`` and ``release`` are called synchronously by the model client: they
  queue their update, which the next admission of this process applies first in its own
  transaction, or a background thread applies at once, so no database call ever runs on the
  event loop (admissions run in a worker thread).
- A concurrency slot is a lease (``lease`` seconds, renewed by the background thread while the
  request runs): a worker killed with SIGKILL frees its slots when their leases run out.
- Time is the wall clock (``time.time()``) so that machines agree (keep them NTP-synchronised:
  a skew beyond ``margin`` can let a request too many through). A ``ScaledClock`` scales the wall
  clock by its factor, for tests; any other clock (``ManualClock``) is used as it is, and
  only makes sense within one process.

Every worker should ask for the same limits: each admits against the shared log with its own
settings, so the strictest worker is held to its limit and a looser one fills up to its own.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import hashlib
import os
import socket
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from .clock import DEFAULT_CLOCK, Clock, MonotonicClock, ScaledClock
from .errors import ConfigurationError
from .limits import _check, _safe_url, current_loop, sleep_until_set

TABLE = "agentloop_rate_log"


class _Gate:
    """The loop-bound half: FIFO among this loop's waiters, and a wake-up when a request of this
    loop gives a slot or tokens back (other processes' releases are seen by polling)."""

    __slots__ = ("admission", "freed", "loop")

    def __init__(self, loop: object) -> None:
        self.loop = loop
        self.admission = anyio.Lock()
        self.freed = anyio.Event()

    def wake(self) -> None:
        self.freed.set()
        self.freed = anyio.Event()


@dataclass(slots=True, eq=False)
class DatabasePermit:
    """One admitted request (see ``AdmissionPermit``). ``at`` is its time in the log (restamped
    by ``touch``), on the limiter's time scale."""

    limiter: DatabaseLimiter = field(repr=False)
    id: int
    at: float
    tokens: int
    waited: float
    gate: _Gate = field(repr=False)
    released: bool = False

    def reconcile(self, actual_tokens: int) -> None:
        freed = actual_tokens < self.tokens
        self.tokens = actual_tokens
        self.limiter._queue(("tokens", self.id, actual_tokens))
        if freed and self.limiter.tpm is not None:
            self._wake()

    def touch(self) -> None:
        """The server counted the request when it arrived, after we admitted it: restamp it
        now, so our row never leaves the window before the server's count does."""
        self.at = self.limiter._now()
        self.limiter._queue(("touch", self.id, self.at))

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.limiter._queue(("release", self.id, 0))
            self._wake()

    def _wake(self) -> None:
        try:
            here = current_loop()
        except Exception:  # no event loop here: the waiters find out when they poll
            return
        if here is self.gate.loop:
            self.gate.wake()


@dataclass(slots=True)
class _Verdict:
    id: int | None  # the row admitted, or None
    at: float
    wait: float


class _Backend(abc.ABC):
    """One connection, used by one thread at a time (the limiter's lock): SQLite or Postgres."""

    placeholder = "?"

    @abc.abstractmethod
    def connect(self) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def transaction(self, account: str, body: Callable[[Any], Any]) -> Any: ...


class _SQLite(_Backend):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.db: sqlite3.Connection | None = None

    def connect(self) -> None:
        # autocommit mode: the transactions are ours (BEGIN IMMEDIATE takes the write lock
        # first, so two processes never both count and then both insert)
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable enough for a rate log
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {TABLE} (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                "account TEXT NOT NULL, at REAL NOT NULL, tokens INTEGER NOT NULL, "
                "holder TEXT NOT NULL, lease_until REAL)"
            )
            db.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_account ON {TABLE} (account, at)")
        except BaseException:
            db.close()
            raise
        self.db = db

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    def transaction(self, account: str, body: Callable[[Any], Any]) -> Any:
        if self.db is None:
            self.connect()
        assert self.db is not None
        cursor = self.db.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        try:
            result = body(cursor)
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        cursor.execute("COMMIT")
        return result


class _Postgres(_Backend):
    placeholder = "%s"

    def __init__(self, url: str) -> None:
        self.url = url
        self.db: Any = None

    def connect(self) -> None:
        import psycopg

        try:
            db = psycopg.connect(self.url, connect_timeout=10)
        except psycopg.OperationalError as exc:
            if "does not exist" not in str(exc):
                raise
            self._create_database()  # as DBOS does for the same --db URL
            db = psycopg.connect(self.url, connect_timeout=10)
        try:
            with db.transaction():
                # one creator at a time: concurrent CREATE ... IF NOT EXISTS can still collide
                db.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_id(TABLE),))
                db.execute(
                    f"CREATE TABLE IF NOT EXISTS {TABLE} (id BIGSERIAL PRIMARY KEY, "
                    "account TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, tokens BIGINT NOT NULL, "
                    "holder TEXT NOT NULL, lease_until DOUBLE PRECISION)"
                )
                db.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_account ON {TABLE} (account, at)")
        except BaseException:
            db.close()
            raise
        self.db = db

    def _create_database(self) -> None:
        import psycopg
        from psycopg import sql
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        name = conninfo_to_dict(self.url).get("dbname")
        if not name:
            raise ConfigurationError("the Postgres URL names no database")
        admin = make_conninfo(self.url, dbname="postgres")
        with (
            psycopg.connect(admin, connect_timeout=10, autocommit=True) as db,
            # another worker created it first (or is creating it: a unique violation)
            contextlib.suppress(psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation),
        ):
            db.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(name))))

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    def transaction(self, account: str, body: Callable[[Any], Any]) -> Any:
        import psycopg

        for attempt in (1, 2):
            if self.db is None or self.db.closed:
                self.connect()
            try:
                with self.db.transaction(), self.db.cursor() as cursor:
                    # the account's admissions, one at a time across every machine
                    cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_id(account),))
                    return body(cursor)
            except psycopg.OperationalError:
                self.close()  # the connection broke (server restarted?): one fresh try
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _lock_id(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _backend(url: str | os.PathLike[str]) -> tuple[_Backend, str]:
    """The backend for ``url`` and the URL to show (no password)."""
    text = os.fspath(url)
    if text.startswith(("postgresql://", "postgres://")):
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise ConfigurationError(
                f"the rate-limit database {_shown(text)} is Postgres, which needs psycopg: "
                "pip install 'agentloop[durable]' (or psycopg[binary])"
            ) from None
        return _Postgres(text), _shown(text)
    if "://" in text:
        if not text.startswith("sqlite:///"):
            raise ConfigurationError(
                f"rate-limit database {_shown(text)!r}: give a SQLite file path (limits.db, "
                "sqlite:////abs/path/limits.db) or a postgresql://user:password@host/db URL"
            )
        text = text.removeprefix("sqlite:///")  # sqlite:///rel.db, sqlite:////abs.db
    if not text or text == ":memory:":
        raise ConfigurationError(
            "a rate-limit database must be a file the workers share (e.g. limits.db); an "
            "in-memory SQLite database is private to one connection"
        )
    path = Path(text).expanduser().resolve()
    if path.is_dir():
        raise ConfigurationError(
            f"rate-limit database {str(path)!r} is a directory: name a file, e.g. limits.db"
        )
    return _SQLite(path), str(path)


def _shown(url: str) -> str:
    if "://" not in url:
        return url
    scheme = url.split("://", 1)[0]
    return f"{scheme}://" + _safe_url(url).split("://", 1)[-1]


def _time_source(clock: Clock) -> tuple[Callable[[], float], float | None]:
    """``now`` for the log and how many clock seconds pass per real second (None: the clock is
    not real time, so leases are never renewed in the background)."""
    if type(clock) is MonotonicClock:
        return time.time, 1.0
    if type(clock) is ScaledClock:
        factor = clock.factor
        return (lambda: time.time() * factor), factor
    return clock.now, None


_Op = tuple[str, int, float]


class DatabaseLimiter:
    """Admit requests within ``rpm``, ``tpm`` and ``max_concurrency`` (None: no limit) counted
    over every process that uses the same database ``url`` and account.

    ``key`` names the account: the API key (only its SHA-256, with ``base_url``, is stored) or
    any name the workers agree on. ``lease`` is how long a concurrency slot outlives a worker
    that died holding it; ``poll`` the longest sleep between two looks at the log while waiting
    for a slot another process may free (both in clock seconds)."""

    def __init__(
        self,
        url: str | os.PathLike[str],
        key: str,
        *,
        base_url: str | None = None,
        rpm: int | None = 50,
        tpm: int | None = None,
        max_concurrency: int | None = None,
        clock: Clock = DEFAULT_CLOCK,
        window: float = 60.0,
        margin: float = 0.5,
        lease: float = 60.0,
        poll: float = 0.5,
    ) -> None:
        _check(rpm, tpm, max_concurrency)
        if lease <= 0 or poll <= 0:
            raise ValueError("lease and poll must be positive")
        self.rpm = rpm
        self.tpm = tpm
        self.max_concurrency = max_concurrency or None
        self.clock = clock
        self.window = window + margin  # see RateLimiter: the server stamps a little later
        self.lease = lease
        self.poll = poll
        self.account = hashlib.sha256(f"{(base_url or '').rstrip('/')}\n{key}".encode()).hexdigest()
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._now, self._rate = _time_source(clock)
        self._backend, self.where = _backend(url)
        self._db_lock = threading.Lock()  # the connection: one thread at a time
        self._ops_lock = threading.Lock()
        self._ops: list[_Op] = []
        self._held = 0  # slots this process holds (their leases are renewed)
        self._renewed = 0.0  # time.monotonic() of the last renewal
        self._kick = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._local = threading.local()
        self.admitted = 0
        self.total_wait = 0.0
        self.transactions = 0  # admission transactions (tries)
        self.db_seconds = 0.0  # real time spent in them, the wait for the lock included
        try:
            self._backend.connect()
        except Exception as exc:
            raise ConfigurationError(self._unreachable(exc)) from None
        _open.add(self)

    def __repr__(self) -> str:
        return (
            f"DatabaseLimiter({self.where!r}, rpm={self.rpm}, tpm={self.tpm}, "
            f"max_concurrency={self.max_concurrency})"
        )

    def _fix(self) -> str:
        if isinstance(self._backend, _Postgres):
            return (
                "check that the server is running and reachable, and the URL's host, port, "
                "user, password and database name"
            )
        return "check that its directory exists and every worker may write there"

    def _unreachable(self, exc: BaseException) -> str:
        return (
            f"cannot open the rate-limit database {self.where}: {_first_line(exc)}; {self._fix()}"
        )

    # -- admission -----------------------------------------------------------------------------
    async def acquire(self, tokens: int = 0) -> DatabasePermit:
        """Wait until the request may be sent; ``tokens`` is its estimated total (in + out)."""
        if self._closed:
            raise ConfigurationError(f"{self!r} is closed")
        gate = self._gate()
        start = self.clock.now()
        async with gate.admission:  # one waiter per loop asks the database
            while True:
                reserve = tokens if self.tpm is None else min(tokens, self.tpm)
                verdict = await anyio.to_thread.run_sync(self._try, reserve)
                if verdict.id is not None:
                    break
                await self._sleep(verdict.wait, gate)
        waited = self.clock.now() - start
        self.admitted += 1
        self.total_wait += waited
        self._start_background()
        assert verdict.id is not None
        return DatabasePermit(self, verdict.id, verdict.at, reserve, waited, gate)

    def _gate(self) -> _Gate:
        loop = current_loop()
        gate: _Gate | None = getattr(self._local, "gate", None)
        if gate is None or gate.loop is not loop:
            gate = _Gate(loop)
            self._local.gate = gate
        return gate

    async def _sleep(self, wait: float, gate: _Gate) -> None:
        """Sleep ``wait``, or less if a request of this loop gives a slot or tokens back."""
        await sleep_until_set(self.clock, wait, gate.freed)

    def _try(self, tokens: int) -> _Verdict:
        """One admission transaction (in a worker thread)."""
        started = time.perf_counter()
        try:
            with self._db_lock:
                ops = self._take_ops()
                try:
                    verdict: _Verdict = self._backend.transaction(
                        self.account, lambda cursor: self._admit(cursor, ops, tokens)
                    )
                except BaseException:
                    self._requeue(ops)
                    raise
        except Exception as exc:
            if isinstance(exc, ConfigurationError):
                raise
            raise ConfigurationError(
                f"the rate-limit database {self.where} failed: {_first_line(exc)}; {self._fix()}"
            ) from exc
        finally:
            self.transactions += 1
            self.db_seconds += time.perf_counter() - started
        if verdict.id is not None:
            with self._ops_lock:
                self._held += 1
        return verdict

    def _sql(self, statement: str) -> str:
        return statement.replace("?", self._backend.placeholder)

    def _admit(self, cursor: Any, ops: Sequence[_Op], tokens: int) -> _Verdict:
        sql = self._sql
        now = self._now()  # read under the lock, so the log's order is the admissions' order
        self._apply(cursor, ops, now)
        horizon = now - self.window
        cursor.execute(
            sql(
                f"DELETE FROM {TABLE} WHERE account = ? AND at <= ? "
                "AND (lease_until IS NULL OR lease_until <= ?)"
            ),
            (self.account, horizon, now),
        )
        cursor.execute(
            sql(
                "SELECT COALESCE(SUM(CASE WHEN at > ? THEN 1 ELSE 0 END), 0), "
                "COALESCE(SUM(CASE WHEN at > ? THEN tokens ELSE 0 END), 0), "
                "COALESCE(SUM(CASE WHEN lease_until > ? THEN 1 ELSE 0 END), 0) "
                f"FROM {TABLE} WHERE account = ?"
            ),
            (horizon, horizon, now, self.account),
        )
        requests, used, in_flight = (int(v) for v in cursor.fetchone())
        wait = 0.0
        if self.rpm is not None and requests >= self.rpm:
            # the request that must leave the window first: the rpm-th newest
            cursor.execute(
                sql(
                    f"SELECT at FROM {TABLE} WHERE account = ? AND at > ? "
                    "ORDER BY at DESC LIMIT 1 OFFSET ?"
                ),
                (self.account, horizon, self.rpm - 1),
            )
            row = cursor.fetchone()
            wait = float(row[0]) + self.window - now if row else 0.0
        if self.tpm is not None and used + tokens > self.tpm:
            excess = used + tokens - self.tpm
            cursor.execute(
                sql(f"SELECT at, tokens FROM {TABLE} WHERE account = ? AND at > ? ORDER BY at"),
                (self.account, horizon),
            )
            for at, charged in cursor.fetchall():
                excess -= int(charged)
                if excess <= 0:
                    wait = max(wait, float(at) + self.window - now)
                    break
        full = (
            (self.rpm is not None and requests >= self.rpm)
            or (self.tpm is not None and used + tokens > self.tpm)
            or (self.max_concurrency is not None and in_flight >= self.max_concurrency)
        )
        if full:
            if self.max_concurrency is not None and in_flight >= self.max_concurrency:
                wait = max(wait, self.poll)  # freed by a release we cannot see coming
            elif self.tpm is not None and used + tokens > self.tpm:
                wait = min(wait, self.poll)  # another worker's reconcile may give tokens back
            return _Verdict(None, now, max(wait, 1e-3))  # never spin
        cursor.execute(
            sql(
                f"INSERT INTO {TABLE} (account, at, tokens, holder, lease_until) "
                "VALUES (?, ?, ?, ?, ?) RETURNING id"
            ),
            (self.account, now, tokens, self.holder, now + self.lease),
        )
        return _Verdict(int(cursor.fetchone()[0]), now, 0.0)

    # -- updates from permits ------------------------------------------------------------------
    def _queue(self, op: _Op) -> None:
        with self._ops_lock:
            self._ops.append(op)
            if op[0] == "release":
                self._held -= 1
        self._kick.set()

    def _take_ops(self) -> list[_Op]:
        with self._ops_lock:
            ops, self._ops = self._ops, []
        return ops

    def _requeue(self, ops: list[_Op]) -> None:
        with self._ops_lock:
            self._ops[:0] = ops

    def _apply(self, cursor: Any, ops: Sequence[_Op], now: float) -> None:
        sql = self._sql
        for kind, row, value in ops:
            if kind == "touch":
                cursor.execute(sql(f"UPDATE {TABLE} SET at = ? WHERE id = ?"), (value, row))
            elif kind == "tokens":
                cursor.execute(sql(f"UPDATE {TABLE} SET tokens = ? WHERE id = ?"), (value, row))
            else:
                cursor.execute(sql(f"UPDATE {TABLE} SET lease_until = NULL WHERE id = ?"), (row,))
        if self._rate is not None and self._held > 0:
            renew_every = self.lease / 3 / self._rate
            if time.monotonic() - self._renewed >= renew_every:
                cursor.execute(
                    sql(
                        f"UPDATE {TABLE} SET lease_until = ? "
                        "WHERE holder = ? AND lease_until IS NOT NULL"
                    ),
                    (now + self.lease, self.holder),
                )
                self._renewed = time.monotonic()

    def flush(self) -> None:
        """Write the queued updates (and renew the leases when due) now, in this thread."""
        with self._db_lock:
            ops = self._take_ops()
            if not ops and not (self._rate is not None and self._held > 0):
                return
            try:
                self._backend.transaction(
                    self.account, lambda cursor: self._apply(cursor, ops, self._now())
                )
            except BaseException:
                self._requeue(ops)
                raise

    def _start_background(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=_background,
                args=(weakref.ref(self),),
                daemon=True,
                name="agentloop-limiter",
            )
            self._thread.start()

    def close(self) -> None:
        """Write what is queued and close the connection (slots still held are freed when
        their leases run out). The limiter cannot be used afterwards."""
        if self._closed:
            return
        self._closed = True
        self._kick.set()
        with contextlib.suppress(Exception):  # the leases and the window clean up after us
            self.flush()
        with self._db_lock:
            self._backend.close()
        _open.discard(self)

    def __enter__(self) -> DatabaseLimiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _background(ref: weakref.ref[DatabaseLimiter]) -> None:
    """Apply queued updates as they come, and renew leases while slots are held."""
    while True:
        limiter = ref()
        if limiter is None or limiter._closed:
            return
        kick, rate, lease = limiter._kick, limiter._rate, limiter.lease
        del limiter  # hold no reference while waiting
        kick.wait(lease / 3 / rate / 2 if rate else 1.0)
        kick.clear()
        limiter = ref()
        if limiter is None or limiter._closed:
            return
        try:
            limiter.flush()
        except Exception:  # the next admission or flush tries again
            time.sleep(0.05)
        del limiter


_open: weakref.WeakSet[DatabaseLimiter] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for limiter in list(_open):
        limiter.close()


__all__ = ["DatabaseLimiter", "DatabasePermit"]
