"""The project database: SQLite in WAL mode, the only module that writes it.

Durability: every write runs in one ``BEGIN IMMEDIATE`` transaction that is committed (with
``synchronous=FULL``, so the WAL is on disk) before the method returns, and the web routes answer
only after it returns: a judgement the browser was told about survives a SIGKILL at any moment.

Tables: ``meta`` (task, overlap, lease length, ...), ``items`` (a prompt and the completions to
compare: two for a pairwise item, K for a ranking), ``annotators`` (name, hash of the access
token, admin flag), ``assignments`` (an item leased to an annotator, with the display order
drawn for that annotator and item and whether the AI suggestion is shown) and ``judgements``
(one per item and annotator, keyed by the client's idempotency key).

Choices are stored in the item's own terms: ``choice`` is ``a`` (completion 0), ``b``
(completion 1), ``tie`` or ``both_bad``; ``ranking`` lists completion indices best first. The
browser speaks in display terms (left/right, shown positions); ``display`` maps one to the other.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

DB_NAME = "annotate.sqlite3"
CHOICES = ("left", "right", "tie", "both_bad")
MAX_REASON = 2000
_KEY_RE = re.compile(r"^[A-Za-z0-9_.:-]{8,128}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    prompt TEXT NOT NULL,           -- JSON: text or chat messages, as in the samples file
    completions TEXT NOT NULL,      -- JSON list: 2 for a pair, K for a ranking
    source_line INTEGER NOT NULL,   -- line of the samples file
    sample_indices TEXT NOT NULL,   -- JSON list: which of that row's completions these are
    priority REAL NOT NULL DEFAULT 0,
    suggestion REAL                 -- AI judge's P(completion 0 beats completion 1), pairs only
);
CREATE TABLE IF NOT EXISTS annotators (
    id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, token_hash TEXT UNIQUE NOT NULL,
    is_admin INTEGER NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS assignments (
    item_id INTEGER NOT NULL REFERENCES items(id),
    annotator_id INTEGER NOT NULL REFERENCES annotators(id),
    display TEXT NOT NULL,          -- JSON: completion index shown at each position, left first
    show_suggestion INTEGER NOT NULL,
    assigned_at REAL NOT NULL, leased_until REAL NOT NULL, done INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (item_id, annotator_id)
);
CREATE INDEX IF NOT EXISTS assignments_by_annotator ON assignments (annotator_id, done);
CREATE TABLE IF NOT EXISTS judgements (
    id INTEGER PRIMARY KEY,
    idem_key TEXT UNIQUE NOT NULL, payload_hash TEXT NOT NULL,
    item_id INTEGER NOT NULL REFERENCES items(id),
    annotator_id INTEGER NOT NULL REFERENCES annotators(id),
    choice TEXT, ranking TEXT, reason TEXT NOT NULL DEFAULT '',
    display TEXT NOT NULL, suggestion_shown INTEGER NOT NULL,
    assigned_at REAL NOT NULL, submitted_at REAL NOT NULL,
    UNIQUE (item_id, annotator_id)
);
"""


class StoreError(Exception):
    """A refused request: ``status`` is the HTTP status the web app answers with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Annotator:
    id: int
    name: str
    is_admin: bool


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Store:
    """One connection, serialised by a lock (the web app calls it from a thread pool)."""

    def __init__(self, project_dir: str | Path, seed: int | None = None, clock=time.time):
        path = Path(project_dir) / DB_NAME
        if not path.exists():
            raise FileNotFoundError(f"{project_dir}: no annotation project here (no {DB_NAME}); create one with `tether annotate create`")
        self.path = path
        self._conn = _connect(path)
        self._lock = threading.Lock()
        self._rng = random.Random(seed if seed is not None else secrets.randbits(64))
        self._clock = clock
        self.meta = {row[0]: json.loads(row[1]) for row in self._conn.execute("SELECT key, value FROM meta")}
        self.task: str = self.meta["task"]
        self.overlap: int = int(self.meta["overlap"])
        self.lease_seconds: float = float(self.meta["lease_seconds"])

    # ---- creation ------------------------------------------------------------------------------

    @staticmethod
    def create(project_dir: str | Path, meta: dict, items: list[dict]) -> Path:
        """A new project: ``meta`` needs ``task``, ``overlap`` and ``lease_seconds``; each item is
        ``{"prompt", "completions", "source_line", "sample_indices", "priority", "suggestion"}``."""
        for key in ("task", "overlap", "lease_seconds"):
            if key not in meta:
                raise ValueError(f"project meta needs {key!r}")
        project_dir = Path(project_dir)
        path = project_dir / DB_NAME
        if path.exists():
            raise FileExistsError(f"{path} exists: an annotation project is already there")
        project_dir.mkdir(parents=True, exist_ok=True)
        conn = _connect(path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
            conn.executemany(
                "INSERT INTO items (prompt, completions, source_line, sample_indices, priority, suggestion) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (json.dumps(it["prompt"]), json.dumps(it["completions"]), it["source_line"], json.dumps(it["sample_indices"]), float(it.get("priority", 0.0)), it.get("suggestion"))
                    for it in items
                ],
            )
            conn.execute("COMMIT")
        finally:
            conn.close()
        return path

    def add_annotator(self, name: str, admin: bool = False) -> str:
        """Registers ``name`` and returns its access token (only its hash is stored)."""
        if not name or len(name) > 100 or not name.isprintable():
            raise ValueError(f"annotator name must be 1-100 printable characters, got {name!r}")
        token = secrets.token_urlsafe(24)
        with self._tx() as conn:
            if conn.execute("SELECT 1 FROM annotators WHERE name = ?", (name,)).fetchone():
                raise ValueError(f"annotator {name!r} already exists in {self.path.parent}")
            conn.execute("INSERT INTO annotators (name, token_hash, is_admin, created) VALUES (?, ?, ?, ?)", (name, hash_token(token), int(admin), self._clock()))
        return token

    def authenticate(self, token: str | None) -> Annotator | None:
        if not token:
            return None
        with self._lock:
            row = self._conn.execute("SELECT id, name, is_admin FROM annotators WHERE token_hash = ?", (hash_token(token),)).fetchone()
        return Annotator(row[0], row[1], bool(row[2])) if row else None

    # ---- assignment ----------------------------------------------------------------------------

    def _taken(self, conn, item_id: int, now: float, excluding: int) -> int:
        """Slots of an item in use by others: their judgements plus their unexpired leases."""
        return conn.execute(
            "SELECT COUNT(*) FROM assignments WHERE item_id = ? AND annotator_id != ? AND (done = 1 OR leased_until > ?)", (item_id, excluding, now)
        ).fetchone()[0]

    def next_item(self, annotator: Annotator) -> dict | None:
        """The annotator's open item (lease renewed), else a new lease on the first item by priority
        that they have not seen and that fewer than ``overlap`` others hold; None when none is left."""
        now = self._clock()
        with self._tx() as conn:
            row = conn.execute("SELECT item_id, leased_until FROM assignments WHERE annotator_id = ? AND done = 0", (annotator.id,)).fetchone()
            if row is not None:
                item_id, leased_until = row
                if leased_until > now or self._taken(conn, item_id, now, annotator.id) < self.overlap:
                    conn.execute("UPDATE assignments SET leased_until = ? WHERE item_id = ? AND annotator_id = ?", (now + self.lease_seconds, item_id, annotator.id))
                    return self._view(conn, item_id, annotator.id)
                # the lease ran out and the slot went to someone else
                conn.execute("DELETE FROM assignments WHERE item_id = ? AND annotator_id = ?", (item_id, annotator.id))
            row = conn.execute(
                """SELECT i.id, i.completions, i.suggestion FROM items i
                   WHERE NOT EXISTS (SELECT 1 FROM assignments a WHERE a.item_id = i.id AND a.annotator_id = ?)
                     AND (SELECT COUNT(*) FROM assignments a WHERE a.item_id = i.id AND (a.done = 1 OR a.leased_until > ?)) < ?
                   ORDER BY i.priority DESC, i.id LIMIT 1""",
                (annotator.id, now, self.overlap),
            ).fetchone()
            if row is None:
                return None
            item_id, completions, suggestion = row
            display = list(range(len(json.loads(completions))))
            self._rng.shuffle(display)  # which completion is shown where: per annotator and item
            show = suggestion is not None and self._rng.random() < float(self.meta.get("suggest_fraction", 1.0))
            conn.execute(
                "INSERT INTO assignments (item_id, annotator_id, display, show_suggestion, assigned_at, leased_until) VALUES (?, ?, ?, ?, ?, ?)",
                (item_id, annotator.id, json.dumps(display), int(show), now, now + self.lease_seconds),
            )
            return self._view(conn, item_id, annotator.id)

    def _view(self, conn, item_id: int, annotator_id: int) -> dict:
        prompt, completions, suggestion = conn.execute("SELECT prompt, completions, suggestion FROM items WHERE id = ?", (item_id,)).fetchone()
        display_json, show, leased_until = conn.execute(
            "SELECT display, show_suggestion, leased_until FROM assignments WHERE item_id = ? AND annotator_id = ?", (item_id, annotator_id)
        ).fetchone()
        completions, display = json.loads(completions), json.loads(display_json)
        view = {"item": item_id, "task": self.task, "prompt": json.loads(prompt), "completions": [completions[k] for k in display], "lease_until": leased_until}
        if show:
            p_left = suggestion if display[0] == 0 else 1.0 - suggestion  # P(shown-left beats shown-right)
            side = "left" if p_left > 0.5 else "right" if p_left < 0.5 else "tie"
            view["suggestion"] = {"side": side, "p_left": p_left, "judge": self.meta.get("judge", "")}
        return view

    # ---- judgements ----------------------------------------------------------------------------

    def submit(self, annotator: Annotator, body: dict) -> tuple[int, dict]:
        """Stores one judgement; returns (HTTP status, answer). 201 when stored now; 200 when the
        same idempotency key already stored this same request (a retry: nothing stored again).
        Raises StoreError (4xx) for anything else, having changed nothing."""
        item_id, key, choice, ranking, reason = _validate(body)
        payload_hash = hashlib.sha256(json.dumps([item_id, choice, ranking, reason]).encode()).hexdigest()
        now = self._clock()
        with self._tx() as conn:
            seen = conn.execute("SELECT id, annotator_id, payload_hash FROM judgements WHERE idem_key = ?", (key,)).fetchone()
            if seen is not None:
                if seen[1] == annotator.id and seen[2] == payload_hash:
                    return 200, {"saved": True, "id": seen[0], "duplicate": True}
                raise StoreError(409, "idempotency_key was already used for a different judgement; nothing stored")
            item = conn.execute("SELECT completions FROM items WHERE id = ?", (item_id,)).fetchone()
            if item is None:
                raise StoreError(404, f"no item {item_id} in this project")
            asg = conn.execute(
                "SELECT display, show_suggestion, assigned_at, leased_until, done FROM assignments WHERE item_id = ? AND annotator_id = ?", (item_id, annotator.id)
            ).fetchone()
            if asg is None:
                raise StoreError(409, f"item {item_id} is not assigned to you; ask for the next item first")
            display_json, show, assigned_at, leased_until, done = asg
            if done:
                raise StoreError(409, f"you already judged item {item_id} (with another idempotency key); nothing stored")
            if leased_until <= now and self._taken(conn, item_id, now, annotator.id) >= self.overlap:
                raise StoreError(409, f"your lease on item {item_id} expired and it went to another annotator; nothing stored")
            display = json.loads(display_json)
            n = len(json.loads(item[0]))
            stored_choice, stored_ranking = None, None
            if self.task == "pairwise":
                if choice is None:
                    raise StoreError(422, "this is a pairwise project: send 'choice' (left, right, tie or both_bad)")
                stored_choice = {"left": "ab"[display[0]], "right": "ab"[display[1]]}.get(choice, choice)
            else:
                if ranking is None or sorted(ranking) != list(range(n)):
                    raise StoreError(422, f"this is a ranking project: send 'ranking', the {n} shown positions 0..{n - 1} best first, each once")
                stored_ranking = json.dumps([display[p] for p in ranking])
            cur = conn.execute(
                """INSERT INTO judgements (idem_key, payload_hash, item_id, annotator_id, choice, ranking, reason, display, suggestion_shown, assigned_at, submitted_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (key, payload_hash, item_id, annotator.id, stored_choice, stored_ranking, reason, display_json, show, assigned_at, now),
            )
            conn.execute("UPDATE assignments SET done = 1 WHERE item_id = ? AND annotator_id = ?", (item_id, annotator.id))
            return 201, {"saved": True, "id": cur.lastrowid, "duplicate": False}

    # ---- reading -------------------------------------------------------------------------------

    def items(self) -> list[dict]:
        with self._lock:
            rows = self._conn.execute("SELECT id, prompt, completions, source_line, sample_indices, priority, suggestion FROM items ORDER BY id").fetchall()
        keys = ("id", "prompt", "completions", "source_line", "sample_indices", "priority", "suggestion")
        out = [dict(zip(keys, r)) for r in rows]
        for it in out:
            for k in ("prompt", "completions", "sample_indices"):
                it[k] = json.loads(it[k])
        return out

    def judgements(self) -> list[dict]:
        """Every judgement, oldest first, with the annotator's name."""
        with self._lock:
            rows = self._conn.execute(
                """SELECT j.id, j.idem_key, j.item_id, a.name, j.choice, j.ranking, j.reason, j.display, j.suggestion_shown, j.assigned_at, j.submitted_at
                   FROM judgements j JOIN annotators a ON a.id = j.annotator_id ORDER BY j.id"""
            ).fetchall()
        keys = ("id", "idem_key", "item", "annotator", "choice", "ranking", "reason", "display", "suggestion_shown", "assigned_at", "submitted_at")
        out = [dict(zip(keys, r)) for r in rows]
        for j in out:
            j["ranking"] = json.loads(j["ranking"]) if j["ranking"] else None
            j["display"] = json.loads(j["display"])
            j["suggestion_shown"] = bool(j["suggestion_shown"])
        return out

    def annotators(self) -> list[Annotator]:
        with self._lock:
            rows = self._conn.execute("SELECT id, name, is_admin FROM annotators ORDER BY id").fetchall()
        return [Annotator(r[0], r[1], bool(r[2])) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _tx(self):
        return _Transaction(self._conn, self._lock)


class _Transaction:
    """``with store._tx() as conn``: the lock, BEGIN IMMEDIATE, and COMMIT (or ROLLBACK on error)."""

    def __init__(self, conn, lock):
        self.conn, self.lock = conn, lock

    def __enter__(self):
        self.lock.acquire()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        try:
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.lock.release()
        return False


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # each COMMIT is on disk before the answer goes out
    conn.execute("PRAGMA foreign_keys=ON")
    conn.executescript(SCHEMA)
    return conn


def _validate(body) -> tuple[int, str, str | None, list[int] | None, str]:
    """The fields of a submission, or StoreError(400/422) naming the field at fault."""
    if not isinstance(body, dict):
        raise StoreError(400, "the body must be a JSON object")
    unknown = set(body) - {"item", "idempotency_key", "choice", "ranking", "reason"}
    if unknown:
        raise StoreError(422, f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    item = body.get("item")
    if not isinstance(item, int) or isinstance(item, bool) or item < 1:
        raise StoreError(422, "field 'item': a positive integer is required")
    key = body.get("idempotency_key")
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise StoreError(422, "field 'idempotency_key': 8-128 characters of A-Z a-z 0-9 _ . : - are required")
    choice, ranking = body.get("choice"), body.get("ranking")
    if (choice is None) == (ranking is None):
        raise StoreError(422, "send exactly one of 'choice' (pairwise) and 'ranking' (ranking)")
    if choice is not None and choice not in CHOICES:
        raise StoreError(422, f"field 'choice': one of {', '.join(CHOICES)}")
    if ranking is not None and (not isinstance(ranking, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in ranking) or len(ranking) > 64):
        raise StoreError(422, "field 'ranking': a list of shown positions (integers), best first")
    reason = body.get("reason", "")
    if reason is None:
        reason = ""
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise StoreError(422, f"field 'reason': text of at most {MAX_REASON} characters")
    return item, key, choice, ranking, reason


__all__ = ["CHOICES", "DB_NAME", "Annotator", "Store", "StoreError", "hash_token"]
