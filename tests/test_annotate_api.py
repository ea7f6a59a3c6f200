"""The web API through Starlette's test client: the happy path and every refused request."""

import json

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from starlette.testclient import TestClient

from tether.cli import main
from tether.feedback.annotate.app import MAX_BODY, create_app
from tether.feedback.annotate.store import Store


@pytest.fixture
def setup(tmp_path):
    samples = tmp_path / "samples.jsonl"
    with open(samples, "w") as f:
        f.writelines(json.dumps({"prompt": f"Review {i}", "completions": [f"good {i}", f"bad {i}"], "sampling": {}, "model_fingerprint": "x"}) + "\n" for i in range(3))
    project = tmp_path / "p"
    assert main(["annotate", "create", "--samples", str(samples), "--project", str(project), "--overlap", "2"]) == 0
    store = Store(project)
    tokens = {"ann": store.add_annotator("ann"), "boss": store.add_annotator("boss", admin=True)}
    client = TestClient(create_app(store))
    return client, store, tokens


def auth(token):
    return {"Authorization": f"Bearer {token}"}


def post(client, token, body, **kw):
    return client.post("/api/judgements", content=json.dumps(body), headers={**auth(token), "Content-Type": "application/json", **kw.pop("headers", {})}, **kw)


def test_happy_path_and_retry(setup):
    client, store, tok = setup
    page = client.get("/")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/annotate.js").status_code == 200
    assert client.get("/api/me", headers=auth(tok["ann"])).json()["name"] == "ann"
    view = client.post("/api/next", headers=auth(tok["ann"])).json()
    body = {"item": view["item"], "idempotency_key": "0123456789abcdef", "choice": "tie", "reason": "same"}
    first = post(client, tok["ann"], body)
    assert first.status_code == 201
    retry = post(client, tok["ann"], body)
    assert retry.status_code == 200 and retry.json()["duplicate"] and retry.json()["id"] == first.json()["id"]
    assert len(store.judgements()) == 1
    report = client.get("/api/admin/report", headers=auth(tok["boss"])).json()
    assert report["progress"]["judgements"] == 1


def test_bad_requests_are_refused_and_change_nothing(setup):
    client, store, tok = setup
    view = client.post("/api/next", headers=auth(tok["ann"])).json()
    good = {"item": view["item"], "idempotency_key": "0123456789abcdef", "choice": "left"}
    assert post(client, tok["ann"], good).status_code == 201
    before = store.judgements()
    assert len(before) == 1
    cases = {
        "wrong token": (post(client, "not-a-token", {**good, "idempotency_key": "fresh-key-001"}), 401),
        "no token": (client.post("/api/judgements", json=good), 401),
        "admin page as annotator": (client.get("/api/admin/report", headers=auth(tok["ann"])), 403),
        "unknown item": (post(client, tok["ann"], {**good, "item": 999, "idempotency_key": "fresh-key-002"}), 404),
        "malformed JSON": (client.post("/api/judgements", content=b"{item: 1,", headers={**auth(tok["ann"]), "Content-Type": "application/json"}), 400),
        "oversized": (post(client, tok["ann"], {**good, "idempotency_key": "fresh-key-003", "reason": "x" * (MAX_BODY + 1)}), 413),
        "oversized, chunked (no length)": (client.post("/api/judgements", content=iter([b"{" + b" " * 4096] * 5), headers={**auth(tok["ann"]), "Content-Type": "application/json"}), 413),
        "not JSON content type": (client.post("/api/judgements", content=json.dumps(good), headers={**auth(tok["ann"]), "Content-Type": "text/plain"}), 415),
        "replay, other answer": (post(client, tok["ann"], {**good, "choice": "right"}), 409),
        "again, new key": (post(client, tok["ann"], {**good, "idempotency_key": "fresh-key-004"}), 409),
        "missing field": (post(client, tok["ann"], {"item": view["item"], "choice": "left"}), 422),
        "wrong method": (client.get("/api/judgements", headers=auth(tok["ann"])), 405),
    }
    for name, (resp, status) in cases.items():
        assert resp.status_code == status, (name, resp.status_code, resp.text)
        if status != 405:
            assert "error" in resp.json(), name
    assert store.judgements() == before  # nothing changed


def test_serve_warns_off_loopback(monkeypatch, tmp_path, capsys, setup):
    import uvicorn

    from tether.feedback.annotate import app as app_module

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    app_module.serve(setup[1].path.parent, host="0.0.0.0", port=1)
    assert "WARNING" in capsys.readouterr().out
    app_module.serve(setup[1].path.parent, host="127.0.0.1", port=1)
    assert "WARNING" not in capsys.readouterr().out
