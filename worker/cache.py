"""The result cache: deterministic completions, stored and served again without generating.

Theory of operation
-------------------
A completion whose parameters make it deterministic (greedy, ``temperature
0``; or, where the plan asks for it, a fixed ``seed``) is stored once it has
finished, under a key that hashes everything that decides its text: the
model file's content hash, the prompt's token ids (after the chat template),
every sampling parameter, the stop strings and ``max_tokens`` (``key_for``).
Changing any of them is another key. The same request later gets the stored
``Done`` back at once; the endpoint marks the answer ``llmo.cached`` and the
attempt's meter counts it as a cache hit, with zero generated tokens.

Policy (``cacheable``): ``auto`` (the default) caches greedy requests,
``seeded`` also those with a fixed seed, ``off`` none. A plan sets it with
the configuration variable ``LLM_CACHE``, which reaches the attempt as
``LLMO_VAR_LLM_CACHE`` in its ``TaskAssign.env``; a request opts out itself
with ``"cache": false`` in its body.

Storage: one SQLite database, ``<cache_dir>/results.db``, in WAL mode with a
busy timeout, so several worker processes of a rig share it safely, and it
survives restarts. It is bounded in bytes: a trigger keeps the total of the
stored values in one row, and a put that takes the total past ``max_bytes``
evicts the least recently used entries (``used``, set on every hit). A
database that SQLite cannot read is moved aside (``results.db.corrupt-<time>``)
with a log line and a fresh one started; any later SQLite error is logged and
reads as a miss, never a failed request.

The model hash: hashing a 70 GB GGUF takes minutes, so ``model_hash``
remembers each file's SHA-256 in the ``model_hashes`` table keyed by (path,
size, mtime_ns); a restart or reload of an unchanged file does not read it
again, and a changed file (new size or mtime) is hashed afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from llmo.proto.vocab import LLM_CACHE_ENV, LLM_CACHE_KEY, LLM_CACHE_POLICIES
from llmo.worker.batching import Done, Request

log = logging.getLogger("llmo.worker.cache")

POLICIES = LLM_CACHE_POLICIES
POLICY_VARIABLE = LLM_CACHE_KEY  # the batch's configuration key
POLICY_ENV = LLM_CACHE_ENV  # how it reaches the attempt (``TaskAssign.env``)
DEFAULT_MAX_MB = 256
DB_NAME = "results.db"
BUSY_TIMEOUT_MS = 10_000
KEY_VERSION = 1  # part of every key: a change of what a key covers starts afresh
HASH_CHUNK = 8 * 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    model_hash TEXT NOT NULL,
    value BLOB NOT NULL,
    bytes INTEGER NOT NULL,
    created REAL NOT NULL,
    used REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS results_used ON results (used);
CREATE TABLE IF NOT EXISTS total (id INTEGER PRIMARY KEY CHECK (id = 0), bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO total VALUES (0, 0);
CREATE TRIGGER IF NOT EXISTS results_added AFTER INSERT ON results
    BEGIN UPDATE total SET bytes = bytes + new.bytes WHERE id = 0; END;
CREATE TRIGGER IF NOT EXISTS results_removed AFTER DELETE ON results
    BEGIN UPDATE total SET bytes = bytes - old.bytes WHERE id = 0; END;
CREATE TABLE IF NOT EXISTS lookups (
    model TEXT PRIMARY KEY, hits INTEGER NOT NULL DEFAULT 0, misses INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS model_hashes (
    path TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL,
    PRIMARY KEY (path, size, mtime_ns)
);
"""


def cacheable(policy: str, request: Request) -> bool:
    """Whether ``policy`` stores and serves ``request``'s result."""
    if policy == "off":
        return False
    if request.sampling.greedy:
        return True
    return policy == "seeded" and request.sampling.seed is not None


def check_policy(value: str | None) -> str:
    """The policy a plan's ``LLM_CACHE`` value names; ValueError says what is wrong."""
    if value is None or value == "":
        return "auto"
    policy = value.strip().lower()
    if policy not in POLICIES:
        raise ValueError(
            f"the plan variable {POLICY_VARIABLE} is {value!r}; expected one of "
            + ", ".join(POLICIES)
        )
    return policy


def request_params(request: Request) -> dict[str, Any]:
    """Everything besides the prompt that decides a request's text."""
    params = asdict(request.sampling)
    params["logit_bias"] = sorted([int(t), float(b)] for t, b in request.sampling.logit_bias)
    params["stop"] = list(request.stop)
    params["max_tokens"] = request.max_tokens
    return params


def key_for(model_hash: str, prompt: Sequence[int] | str, params: Mapping[str, Any]) -> str:
    """The cache key of a completion: model content, full prompt, every sampling parameter."""
    text = json.dumps(
        {
            "v": KEY_VERSION,
            "model": model_hash,
            "prompt": prompt if isinstance(prompt, str) else [int(t) for t in prompt],
            "params": dict(params),
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(text.encode()).hexdigest()


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _encode(done: Done) -> bytes:
    return json.dumps(asdict(done), separators=(",", ":")).encode()


def _decode(value: bytes) -> Done | None:
    try:
        return Done(**json.loads(value))
    except (ValueError, TypeError):
        return None


class ResultCache:
    """Stored completions in ``<directory>/results.db``, at most ``max_bytes`` of them.

    Safe from any thread (one connection behind a lock) and from several
    processes (SQLite's WAL and busy timeout).
    """

    def __init__(
        self,
        directory: str,
        max_bytes: int = DEFAULT_MAX_MB * 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.path = os.path.join(directory, DB_NAME)
        self.max_bytes = max_bytes
        self.clock = clock
        self._lock = threading.Lock()
        os.makedirs(directory, exist_ok=True)
        self._db = self._open()

    # --- the database ------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            self._move_aside(exc)
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,  # explicit transactions
            check_same_thread=False,
        )
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            row = db.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check: {row[0] if row else 'no answer'}")
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _move_aside(self, exc: Exception) -> None:
        aside = f"{self.path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        log.warning(
            "result cache %s cannot be read (%s); moved it to %s and started a fresh one",
            self.path,
            exc,
            aside,
        )
        for suffix in ("", "-wal", "-shm"):
            try:
                os.replace(self.path + suffix, aside + suffix)
            except FileNotFoundError:
                pass

    def _recover(self, exc: sqlite3.DatabaseError, doing: str) -> None:
        """After an error on a call: corruption moves the file aside; anything else is logged."""
        if isinstance(exc, sqlite3.OperationalError):
            log.warning("result cache %s: %s failed: %s", self.path, doing, exc)
            return
        self._db.close()
        self._move_aside(exc)
        try:
            self._db = self._connect()
        except sqlite3.DatabaseError as again:
            log.error("result cache %s: cannot start a fresh one: %s", self.path, again)
            self._db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
            self._db.executescript(_SCHEMA)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (taken at once, so concurrent writers queue on the lock)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- results ---------------------------------------------------------------------------

    def get(self, key: str, model: str = "") -> Done | None:
        """The stored result for ``key`` (marking it used), or None; counts the lookup."""
        with self._lock:
            try:
                with self._transaction() as db:
                    row = db.execute("SELECT value FROM results WHERE key = ?", (key,)).fetchone()
                    done = _decode(row[0]) if row is not None else None
                    if done is not None:
                        db.execute(
                            "UPDATE results SET used = ?, hits = hits + 1 WHERE key = ?",
                            (self.clock(), key),
                        )
                    column = "hits" if done is not None else "misses"
                    db.execute(
                        f"INSERT INTO lookups (model, {column}) VALUES (?, 1) "
                        f"ON CONFLICT (model) DO UPDATE SET {column} = {column} + 1",
                        (model,),
                    )
                return done
            except sqlite3.DatabaseError as exc:
                self._recover(exc, "a lookup")
                return None

    def put(self, key: str, done: Done, *, model: str = "", model_hash: str = "") -> bool:
        """Store ``done`` under ``key``, evicting the least recently used past the bound."""
        value = _encode(done)
        size = len(value) + len(key)
        if size > self.max_bytes:
            log.info("result of %d bytes is over the cache's %d; not stored", size, self.max_bytes)
            return False
        now = self.clock()
        with self._lock:
            try:
                with self._transaction() as db:
                    db.execute("DELETE FROM results WHERE key = ?", (key,))
                    db.execute(
                        "INSERT INTO results (key, model, model_hash, value, bytes, created, used)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (key, model, model_hash, value, size, now, now),
                    )
                    self._evict(db)
                return True
            except sqlite3.DatabaseError as exc:
                self._recover(exc, "a store")
                return False

    def _evict(self, db: sqlite3.Connection) -> int:
        (total,) = db.execute("SELECT bytes FROM total WHERE id = 0").fetchone()
        excess = total - self.max_bytes
        if excess <= 0:
            return 0
        victims = []
        for key, size in db.execute("SELECT key, bytes FROM results ORDER BY used, rowid"):
            victims.append((key,))
            excess -= size
            if excess <= 0:
                break
        db.executemany("DELETE FROM results WHERE key = ?", victims)
        log.debug("result cache: evicted %d entries", len(victims))
        return len(victims)

    # --- management (``llmo cache``) ----------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Entries, bytes, hits and misses, in all and per model."""
        with self._lock:
            db = self._db
            models: dict[str, dict[str, Any]] = {}
            for model, entries, size in db.execute(
                "SELECT model, COUNT(*), COALESCE(SUM(bytes), 0) FROM results GROUP BY model"
            ):
                models[model] = {"entries": entries, "bytes": size, "hits": 0, "misses": 0}
            for model, hits, misses in db.execute("SELECT model, hits, misses FROM lookups"):
                row = models.setdefault(model, {"entries": 0, "bytes": 0, "hits": 0, "misses": 0})
                row["hits"], row["misses"] = hits, misses
            (total,) = db.execute("SELECT bytes FROM total WHERE id = 0").fetchone()
        return {
            "path": self.path,
            "entries": sum(m["entries"] for m in models.values()),
            "bytes": total,
            "max_bytes": self.max_bytes,
            "hits": sum(m["hits"] for m in models.values()),
            "misses": sum(m["misses"] for m in models.values()),
            "models": models,
        }

    def clear(self, model: str | None = None) -> int:
        """Remove every stored result (of ``model``); how many went."""
        with self._lock, self._transaction() as db:
            if model is None:
                gone = db.execute("DELETE FROM results").rowcount
                db.execute("DELETE FROM lookups")
            else:
                gone = db.execute("DELETE FROM results WHERE model = ?", (model,)).rowcount
                db.execute("DELETE FROM lookups WHERE model = ?", (model,))
        return gone

    # --- the model's content hash ------------------------------------------------------------

    def model_hash(self, path: str) -> str:
        """``sha256:<hex>`` of the file at ``path``, read once per (path, size, mtime_ns)."""
        st = os.stat(path)
        where = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
        with self._lock:
            try:
                row = self._db.execute(
                    "SELECT sha256 FROM model_hashes WHERE path = ? AND size = ? AND mtime_ns = ?",
                    where,
                ).fetchone()
            except sqlite3.DatabaseError as exc:
                self._recover(exc, "a model hash lookup")
                row = None
        if row is not None:
            return f"sha256:{row[0]}"
        started = time.monotonic()
        digest = file_sha256(path)
        log.info("hashed %s in %.1fs for the result cache", path, time.monotonic() - started)
        with self._lock:
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO model_hashes VALUES (?, ?, ?, ?)", (*where, digest)
                )
            except sqlite3.DatabaseError as exc:
                self._recover(exc, "storing a model hash")
        return f"sha256:{digest}"


def open_cache(config: Any) -> ResultCache | None:
    """The worker's result cache (``config.cache_dir``, ``config.cache_mb``), or None.

    None where no folder is configured or the bound is 0; a folder that cannot
    be used is logged and the worker serves without a cache.
    """
    if not config.cache_dir or config.cache_mb <= 0:
        return None
    try:
        return ResultCache(config.cache_dir, max_bytes=int(config.cache_mb * 1024 * 1024))
    except (OSError, sqlite3.Error) as exc:
        log.error(
            "result cache in %s cannot be used (%s); serving without one", config.cache_dir, exc
        )
        return None
