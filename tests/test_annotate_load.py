"""Load on loopback: 25 annotator clients at once against a real `tether annotate serve`.

Run 1: 2,000 judgements (100 items × overlap 20), every tenth one sent twice; each must be stored
exactly once, no item beyond its overlap, no annotator twice on one item.
Run 2: the server is SIGKILLed while the clients are submitting; after a restart every
judgement the server had acknowledged is there, the clients resume (resending the request that
was in flight when it died, which may or may not have been stored) and finish with each
judgement stored exactly once.

Prints throughput and latency percentiles (pytest -s shows them).
"""

import http.client
import json
import random
import signal
import threading
import time
import uuid
from collections import Counter

import numpy as np
from annotate_server import free_port, start_server

from tether.feedback.annotate.store import Store

CLIENTS, ITEMS, OVERLAP = 25, 100, 20  # 2,000 judgements per run
RETRY_EVERY = 10


def make_project(path):
    items = [{"prompt": f"prompt {i}", "completions": [f"first {i}", f"second {i}"], "source_line": i + 1, "sample_indices": [0, 1]} for i in range(ITEMS)]
    Store.create(path, {"task": "pairwise", "overlap": OVERLAP, "lease_seconds": 600.0}, items)
    store = Store(path)
    tokens = [store.add_annotator(f"client{c:02d}") for c in range(CLIENTS)]
    store.close()
    return tokens


class Client(threading.Thread):
    """One annotator: ask for the next item, judge it, repeat until none is left."""

    def __init__(self, port, token, seed):
        super().__init__(daemon=True)
        self.port, self.token, self.rng = port, token, random.Random(seed)
        self.acked: dict[str, int] = {}  # idempotency key -> judgement id the server answered
        self.latencies: list[float] = []
        self.pending: dict | None = None  # a submission sent but not answered
        self.error: str | None = None
        self.died = False

    def request(self, method, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:  # a fresh connection per request: what a browser does after an error, and no stale sockets after the kill
            payload = None if body is None else json.dumps(body)
            conn.request(method, path, body=payload, headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    def submit(self, body, expect):
        t0 = time.perf_counter()
        status, answer = self.request("POST", "/api/judgements", body)
        self.latencies.append(time.perf_counter() - t0)
        if status not in expect:
            raise AssertionError(f"{body}: {status} {answer}")
        self.acked[body["idempotency_key"]] = answer["id"]
        return status, answer

    def run(self):
        try:
            if self.pending is not None:  # resent after a restart: stored before the kill (200) or not (201)
                self.submit(self.pending, (200, 201))
                self.pending = None
            n = 0
            while True:
                status, view = self.request("POST", "/api/next")
                assert status == 200, view
                if view["item"] is None:
                    return
                body = {"item": view["item"], "idempotency_key": uuid.uuid4().hex, "choice": self.rng.choice(["left", "right", "tie", "both_bad"])}
                self.pending = body
                _, answer = self.submit(body, (201,))
                self.pending = None
                n += 1
                if n % RETRY_EVERY == 0:  # the same request again, as a browser retrying would
                    _, again = self.submit(body, (200,))
                    assert again["duplicate"] and again["id"] == answer["id"]
        except (ConnectionError, http.client.HTTPException, TimeoutError, OSError):
            self.died = True  # the server went away
        except Exception as e:  # noqa: BLE001  (reported by the test)
            self.error = repr(e)


def run_clients(clients, kill_after=None, server=None):
    t0 = time.perf_counter()
    for c in clients:
        c.start()
    if kill_after is not None:
        while sum(len(c.acked) for c in clients) < kill_after:
            time.sleep(0.005)
        server.send_signal(signal.SIGKILL)
        server.wait()
    for c in clients:
        c.join(120)
    return time.perf_counter() - t0


def check_stored_once(project, acked: dict[str, int]):
    store = Store(project)
    js = store.judgements()
    store.close()
    by_key = {j["idem_key"]: j for j in js}
    assert len(by_key) == len(js)
    missing = [k for k in acked if k not in by_key]
    assert not missing, f"{len(missing)} acknowledged judgements lost"
    assert all(by_key[k]["id"] == i for k, i in acked.items())
    assert len({(j["item"], j["annotator"]) for j in js}) == len(js)  # never one annotator twice on an item
    assert max(Counter(j["item"] for j in js).values()) <= OVERLAP
    return js


def summary(name, n, seconds, latencies):
    lat = np.array(latencies) * 1000
    print(f"\n{name}: {n} judgements in {seconds:.2f} s = {n / seconds:.0f}/s; submit latency p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms, max {lat.max():.1f} ms ({len(lat)} requests)")


def test_load_retries_and_sigkill(tmp_path):
    # ---- run 1: full load with retries -----------------------------------------------------------
    project = tmp_path / "run1"
    tokens = make_project(project)
    port = free_port()
    server = start_server(project, port)
    try:
        clients = [Client(port, t, seed=i) for i, t in enumerate(tokens)]
        seconds = run_clients(clients)
    finally:
        server.kill()
        server.wait()
    assert not [c.error for c in clients if c.error], [c.error for c in clients if c.error]
    assert not any(c.died for c in clients)
    acked = {k: v for c in clients for k, v in c.acked.items()}
    js = check_stored_once(project, acked)
    assert len(js) == len(acked) == ITEMS * OVERLAP
    retried = sum(len(c.latencies) for c in clients) - len(js)
    assert retried >= ITEMS * OVERLAP // RETRY_EVERY - CLIENTS
    summary(f"run 1 ({CLIENTS} clients, {retried} retries)", len(js), seconds, [x for c in clients for x in c.latencies])

    # ---- run 2: SIGKILL in the middle, restart, resume -------------------------------------------
    project = tmp_path / "run2"
    tokens = make_project(project)
    port = free_port()
    server = start_server(project, port)
    clients = [Client(port, t, seed=100 + i) for i, t in enumerate(tokens)]
    try:
        run_clients(clients, kill_after=ITEMS * OVERLAP // 3, server=server)
    finally:
        server.kill()
        server.wait()
    assert not [c.error for c in clients if c.error]
    acked_before = {k: v for c in clients for k, v in c.acked.items()}
    stored = check_stored_once(project, acked_before)  # every acknowledged judgement survived
    in_flight = sum(c.pending is not None for c in clients)
    print(f"\nrun 2: killed after {len(acked_before)} acknowledged; {len(stored)} stored; {in_flight} requests in flight")
    assert ITEMS * OVERLAP // 3 <= len(acked_before) < ITEMS * OVERLAP

    server = start_server(project, port)
    try:
        resumed = []
        for c in clients:
            r = Client(port, c.token, seed=hash(c.token) % 1000)
            r.pending = c.pending
            resumed.append(r)
        run_clients(resumed)
    finally:
        server.kill()
        server.wait()
    assert not [c.error for c in resumed if c.error] and not any(c.died for c in resumed)
    acked_all = {**acked_before, **{k: v for c in resumed for k, v in c.acked.items()}}
    js = check_stored_once(project, acked_all)
    assert len(js) == len(acked_all) == ITEMS * OVERLAP  # restarted where it was: no loss, nothing twice
