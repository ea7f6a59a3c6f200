"""The annotation store: assignment rules, leases, idempotency, the display mapping, the export."""

import json

import pytest

from tether.data import load_records
from tether.feedback.annotate.commands import build_items, read_samples
from tether.feedback.annotate.export import export_judgements
from tether.feedback.annotate.report import build_report
from tether.feedback.annotate.store import Store, StoreError


def make_project(tmp_path, n_items=2, overlap=2, task="pairwise", k=2, lease=60.0, suggestions=None):
    items = [
        {"prompt": f"prompt {i}", "completions": [f"reply {i}.{c}" for c in range(k)], "source_line": i + 1, "sample_indices": list(range(k)), "priority": 0.0,
         "suggestion": None if suggestions is None else suggestions[i]}
        for i in range(n_items)
    ]  # fmt: skip
    Store.create(tmp_path / "p", {"task": task, "overlap": overlap, "lease_seconds": lease}, items)
    clock = [1000.0]
    store = Store(tmp_path / "p", seed=0, clock=lambda: clock[0])
    people = {name: store.authenticate(store.add_annotator(name)) for name in ("ann", "bob", "cat")}
    return store, people, clock


def judge(store, who, view, choice="left", key=None, **extra):
    body = {"item": view["item"], "idempotency_key": key or f"key-{who.name}-{view['item']}", **extra}
    body["choice" if store.task == "pairwise" else "ranking"] = choice
    return store.submit(who, body)


def test_overlap_and_never_twice(tmp_path):
    store, p, _ = make_project(tmp_path, n_items=2, overlap=2)
    a1, b1 = store.next_item(p["ann"]), store.next_item(p["bob"])
    assert a1["item"] == b1["item"] == 1
    c1 = store.next_item(p["cat"])
    assert c1["item"] == 2  # item 1 already has its 2 annotators (leases count while they run)
    assert store.next_item(p["ann"])["item"] == 1  # asking again gives the open item back, not a new one
    judge(store, p["ann"], a1)
    assert store.next_item(p["ann"])["item"] == 2  # never item 1 again
    judge(store, p["bob"], b1)
    assert store.next_item(p["bob"]) is None  # item 2 is held by cat and ann: full
    assert len(store.judgements()) == 2


def test_expired_lease_goes_to_someone_else(tmp_path):
    store, p, clock = make_project(tmp_path, n_items=2, overlap=1, lease=60.0)
    view = store.next_item(p["ann"])
    assert store.next_item(p["bob"])["item"] == 2  # item 1 leased to ann
    clock[0] += 61
    judge(store, p["bob"], store.next_item(p["bob"]))  # bob finishes item 2 ...
    assert store.next_item(p["bob"])["item"] == 1  # ... and gets item 1, whose lease ran out
    with pytest.raises(StoreError) as e:
        judge(store, p["ann"], view)
    assert e.value.status == 409 and "expired" in e.value.message
    assert store.next_item(p["ann"]) is None  # both items are now held by bob
    # an expired lease that nobody else took is still honoured
    store2, p2, clock2 = make_project(tmp_path / "two", n_items=1, overlap=1)
    view2 = store2.next_item(p2["ann"])
    clock2[0] += 3600
    assert judge(store2, p2["ann"], view2)[0] == 201


def test_idempotency_and_replays(tmp_path):
    store, p, _ = make_project(tmp_path)
    view = store.next_item(p["ann"])
    status, first = judge(store, p["ann"], view, key="abcdefgh-1")
    assert status == 201 and not first["duplicate"]
    status, again = judge(store, p["ann"], view, key="abcdefgh-1")  # a retry: same key, same request
    assert status == 200 and again == {**first, "duplicate": True}
    for kwargs, code in [({"key": "abcdefgh-1", "choice": "right"}, 409), ({"key": "abcdefgh-2"}, 409)]:
        with pytest.raises(StoreError) as e:
            judge(store, p["ann"], view, **kwargs)
        assert e.value.status == code
    bob_view = store.next_item(p["bob"])
    with pytest.raises(StoreError) as e:  # another annotator reusing the key stores nothing
        judge(store, p["bob"], bob_view, key="abcdefgh-1")
    assert e.value.status == 409
    assert len(store.judgements()) == 1


@pytest.mark.parametrize(
    "body, status",
    [
        ({"item": 99, "idempotency_key": "k" * 10, "choice": "left"}, 404),
        ({"item": 2, "idempotency_key": "k" * 10, "choice": "left"}, 409),  # not assigned
        ({"item": 1, "idempotency_key": "short", "choice": "left"}, 422),
        ({"item": 1, "idempotency_key": "k" * 10, "choice": "up"}, 422),
        ({"item": 1, "idempotency_key": "k" * 10}, 422),
        ({"item": 1, "idempotency_key": "k" * 10, "choice": "left", "ranking": [0, 1]}, 422),
        ({"item": 1, "idempotency_key": "k" * 10, "choice": "left", "extra": 1}, 422),
        ({"item": "1", "idempotency_key": "k" * 10, "choice": "left"}, 422),
        ({"item": 1, "idempotency_key": "k" * 10, "choice": "left", "reason": "x" * 2001}, 422),
        ([1, 2], 400),
    ],
)
def test_bad_submissions_change_nothing(tmp_path, body, status):
    store, p, _ = make_project(tmp_path)
    store.next_item(p["ann"])
    with pytest.raises(StoreError) as e:
        store.submit(p["ann"], body)
    assert e.value.status == status
    assert store.judgements() == []


def test_display_is_mapped_back_to_the_item(tmp_path):
    """The browser answers 'left'; what is stored is the completion that was shown on the left."""
    store, p, _ = make_project(tmp_path, n_items=40, overlap=1)
    flips = set()
    for _ in range(40):
        view = store.next_item(p["ann"])
        judge(store, p["ann"], view, choice="left")
        flips.add(view["completions"][0].endswith(".1"))
    assert flips == {True, False}  # both sides were drawn
    items = {it["id"]: it for it in store.items()}
    for j in store.judgements():
        left_completion = items[j["item"]]["completions"][j["display"][0]]
        assert items[j["item"]]["completions"]["ab".index(j["choice"])] == left_completion
    report = build_report(store, n_boot=50)
    ann = next(a for a in report["annotators"] if a["name"] == "ann")
    assert ann["first_shown_wins"]["value"] == 1.0 and ann["judgements"] == 40  # always-left: full position bias


def test_ranking_roundtrip_and_export(tmp_path):
    """Three annotators rank item 1's three replies (shown positions mapped back to completions).
    Rankings (completion ids, best first): ann 0>1>2, bob 0>2>1, cat 1>0>2. Mean positions:
    c0 (0+0+1)/3 = 1/3, c1 (1+2+0)/3 = 1, c2 (2+1+2)/3 = 5/3 -> aggregate 0>1>2."""
    store, p, _ = make_project(tmp_path, n_items=1, overlap=3, task="ranking", k=3)
    wanted = {"ann": [0, 1, 2], "bob": [0, 2, 1], "cat": [1, 0, 2]}
    for name, ranking in wanted.items():
        view = store.next_item(p[name])
        shown = [int(c.rsplit(".", 1)[1]) for c in view["completions"]]  # completion id at each position
        judge(store, p[name], view, choice=[shown.index(c) for c in ranking])
    assert {j["annotator"]: j["ranking"] for j in store.judgements()} == wanted
    out = export_judgements(store, tmp_path / "agg.jsonl", "aggregate")
    row = json.loads((tmp_path / "agg.jsonl").read_text())
    assert out["rows"] == 1 and row["completions"] == ["reply 0.0", "reply 0.1", "reply 0.2"]
    assert row["mean_position"] == pytest.approx([1 / 3, 1, 5 / 3])
    export_judgements(store, tmp_path / "all.jsonl", "all")
    loaded = load_records(str(tmp_path / "all.jsonl"))
    assert loaded.kind == "ranking" and len(loaded.records) == 3
    report = build_report(store, n_boot=50)
    # position bias: did the ranking put first the reply shown first? ann/bob/cat each once
    firsts = [j["ranking"][0] == j["display"][0] for j in store.judgements()]
    assert [a["first_shown_wins"]["value"] for a in report["annotators"]] == pytest.approx([float(f) for f in firsts])
    # taus: ann-bob 1/3, ann-cat 1/3, bob-cat -1/3 -> mean 1/9
    assert report["agreement"]["kendall_tau"]["value"] == pytest.approx(1 / 9, abs=1e-4)


def test_pair_export_all_and_aggregate(tmp_path):
    """Item 1: ann and bob pick completion 0, cat says tie -> all: 2 pairs (the tie left out), plus
    item 2's two;
    aggregate: chosen = completion 0 with votes a 2, tie 1. Item 2: ann picks 1, bob picks 0 ->
    split, left out of the aggregate."""
    store, p, _ = make_project(tmp_path, n_items=2, overlap=3)
    for name, picks in {"ann": {1: "a", 2: "b"}, "bob": {1: "a", 2: "a"}, "cat": {1: "tie"}}.items():
        for _ in picks:
            view = store.next_item(p[name])
            want = picks[view["item"]]
            shown = [int(c.rsplit(".", 1)[1]) for c in view["completions"]]
            choice = want if want == "tie" else ("left" if shown[0] == "ab".index(want) else "right")
            judge(store, p[name], view, choice=choice)
    out = export_judgements(store, tmp_path / "all.jsonl", "all")
    assert out["rows"] == 4 and out["skipped"] == {"tie": 1}
    rows = [json.loads(x) for x in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert {(r["item"], r["annotator"], r["chosen"]) for r in rows} == {(1, "ann", "reply 0.0"), (1, "bob", "reply 0.0"), (2, "ann", "reply 1.1"), (2, "bob", "reply 1.0")}
    assert all(r["judged_at"].endswith("Z") for r in rows)
    loaded = load_records(str(tmp_path / "all.jsonl"))
    assert loaded.kind == "preference" and len(loaded.records) == 4
    out = export_judgements(store, tmp_path / "agg.jsonl", "aggregate")
    agg = [json.loads(x) for x in (tmp_path / "agg.jsonl").read_text().splitlines()]
    assert out["skipped"] == {"split or no decisive vote": 1}
    assert agg == [{**agg[0], "item": 1, "chosen": "reply 0.0", "rejected": "reply 0.1", "votes": {"a": 2, "b": 0, "tie": 1, "both_bad": 0}}]


def test_ai_follow_rate(tmp_path):
    """Suggestion P(c0 ≻ c1) = 1 on every item; ann always picks c0, so she agrees with the AI
    whether it was shown or not: both rates 1 where both cases occur."""
    store, p, _ = make_project(tmp_path, n_items=30, overlap=1, suggestions=[1.0] * 30)
    store.meta["suggest_fraction"] = 0.5
    shown = 0
    for _ in range(30):
        view = store.next_item(p["ann"])
        shown += "suggestion" in view
        if "suggestion" in view:
            assert view["suggestion"]["side"] == ("left" if view["completions"][0].endswith(".0") else "right")
        judge(store, p["ann"], view, choice="left" if view["completions"][0].endswith(".0") else "right")
    ai = build_report(store, n_boot=50)["ai"]
    assert 0 < shown < 30 and ai["agree_when_shown"]["n"] == shown and ai["agree_when_hidden"]["n"] == 30 - shown
    assert ai["agree_when_shown"]["value"] == 1.0 and ai["agree_when_hidden"]["value"] == 1.0


def test_read_samples_and_build_items(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"prompt": "p", "completions": ["a", "b", "c"]}) + "\n" + json.dumps({"prompt": "q", "completions": ["x"]}) + "\n")
    with pytest.raises(ValueError, match=r"s.jsonl:2: field 'completions'"):
        read_samples(path)
    rows = [{"prompt": "p", "completions": ["a", "b", "c"], "source_line": 1}]
    assert len(build_items(rows, "pairwise", 2, seed=0)) == 2
    assert len(build_items(rows, "pairwise", 10, seed=0)) == 3  # at most every pair
    import torch

    scores = torch.tensor([[[0.0, 0.0, 5.0]], [[0.0, 0.0, -5.0]]])  # members disagree on everything with c2
    items = build_items(rows, "pairwise", 2, seed=0, member_scores=scores)
    assert sorted(tuple(it["sample_indices"]) for it in items) == [(0, 2), (1, 2)]
    assert build_items(rows, "ranking", 1, seed=0)[0]["completions"] == ["a", "b", "c"]
