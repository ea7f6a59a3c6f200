"""End to end in a real headless Chromium: an annotator judges pairs and ranks a set with the
keyboard, the admin page shows them, the export holds them, and markup in model text shows as text.

Screenshots go to $TETHER_ANNOTATE_SCREENSHOTS when set (else the test's tmp dir)."""

import json
import os
import shutil
import urllib.request
from pathlib import Path

import pytest

from tether.cli import main
from tether.feedback.annotate.store import Store

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM}: the browser test needs Debian's chromium package", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs Playwright for Python")
expect = sync_api.expect

from annotate_server import free_port, start_server

XSS = '<script>window.__pwned = 1</script><b id="bold">not bold</b><img src=x onerror="window.__pwned = 2">'


def api(port, token, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method="POST" if path != "/api/me" else "GET",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture
def projects(tmp_path):
    samples = tmp_path / "samples.jsonl"
    rows = [
        {"prompt": "Write a one-line film review. " + XSS, "completions": ["A warm, funny film.", "Dull. " + XSS, "Fine."]},
        {"prompt": "Describe the weather.", "completions": ["Sunny and mild.", "Rain all day.", "Grey."]},
    ]
    samples.write_text("".join(json.dumps({**r, "sampling": {"temperature": 1.0}, "model_fingerprint": "test"}) + "\n" for r in rows))
    out = {}
    for task in ("pairwise", "ranking"):
        project = tmp_path / task
        args = ["annotate", "create", "--samples", str(samples), "--project", str(project), "--task", task, "--overlap", "2"]
        if task == "pairwise":  # seed 3 draws completions 0 and 1 of the first row: the markup is in the pair
            args += ["--judge", "vader", "--seed", "3"]
        assert main(args) == 0
        store = Store(project)
        out[task] = (project, store.add_annotator("ann"), store.add_annotator("bob"), store.add_annotator("boss", admin=True))
        store.close()
    return out


def shot(page, name, tmp_path):
    folder = Path(os.environ.get("TETHER_ANNOTATE_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def test_annotate_in_chromium(projects, tmp_path):
    ports, servers = {}, []
    try:
        for task, (project, *_tokens) in projects.items():
            ports[task] = free_port()
            servers.append(start_server(project, ports[task]))
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))

            # --- pairwise: two items, all by keyboard -------------------------------------------
            project, ann, bob, boss = projects["pairwise"]
            port = ports["pairwise"]
            page.goto(f"http://127.0.0.1:{port}/#token={ann}")
            page.wait_for_selector("#pair:not([hidden])")
            chosen_texts = []
            shown_before = None
            for step in range(2):
                expect(page.locator("#left .text")).not_to_be_empty()
                if shown_before is not None:  # the save is acknowledged before the next item is drawn: wait for it
                    page.wait_for_function(
                        "prev => document.querySelector('#left .text').textContent + '|' + document.querySelector('#right .text').textContent !== prev",
                        arg=shown_before,
                    )
                left, right = page.inner_text("#left .text"), page.inner_text("#right .text")
                shown_before = page.evaluate("() => document.querySelector('#left .text').textContent + '|' + document.querySelector('#right .text').textContent")
                prompt = page.inner_text("#prompt")
                if "film" in prompt:
                    assert XSS in (left + right) and XSS in prompt  # shown as text, character for character
                    assert page.locator("#bold").count() == 0 and page.locator("main img").count() == 0
                    assert page.evaluate("() => window.__pwned") is None
                    assert page.is_visible("#suggestion")  # --suggest-fraction 1: always shown
                    shot(page, "pairwise", tmp_path)
                if step == 0:
                    page.keyboard.press("ArrowRight")  # B, the right-hand reply
                    page.keyboard.press("r")
                    page.keyboard.type("more specific")
                    page.keyboard.press("Escape")
                    chosen_texts.append((right, left, "more specific"))
                else:
                    page.keyboard.press("1")
                    chosen_texts.append((left, right, ""))
                assert page.locator("#save-pair").is_enabled()
                page.keyboard.press("Enter")
                expect(page.locator("#count")).to_have_text(f"{step + 1} saved")
            page.wait_for_selector("#done:not([hidden])")
            # bob judges both items through the API: against ann on the film prompt, with her on the other
            for _ in range(2):
                view = api(port, bob, "/api/next")
                want = next(c if XSS not in c + r else r for c, r, _ in chosen_texts if c in view["completions"])
                side = "left" if view["completions"][0] == want else "right"
                api(port, bob, "/api/judgements", {"item": view["item"], "idempotency_key": f"bob-{view['item']}-key", "choice": side})

            page.goto(f"http://127.0.0.1:{port}/admin#token={boss}")
            expect(page.locator("#annotators tr")).to_have_count(4)
            page.wait_for_selector("#ai-box:not([hidden])")
            rows = page.inner_text("#annotators")
            assert "ann\t2" in rows and "bob\t2" in rows
            assert "4 of 4 judgements" in page.inner_text("#progress")
            assert "Fleiss" in page.inner_text("#agreement") and "ann & bob" in page.inner_text("#agreement")
            disputed = page.inner_text("#disputed")
            assert "more specific" in disputed and XSS in disputed and "weather" not in disputed  # only the split item
            assert page.locator("#bold").count() == 0 and page.evaluate("() => window.__pwned") is None
            shot(page, "admin", tmp_path)

            # --- ranking: press the numbers best first ------------------------------------------
            _project_r, ann_r, _bob_r, boss_r = projects["ranking"]
            port_r = ports["ranking"]
            page.goto(f"http://127.0.0.1:{port_r}/#token={ann_r}")
            page.wait_for_selector("#ranking:not([hidden])")
            expect(page.locator("#candidates .card")).to_have_count(3)
            shown = [t.split("\n", 1)[1] for t in page.locator("#candidates .card").all_inner_texts()]
            page.keyboard.press("3")
            page.keyboard.press("2")
            page.keyboard.press("2")  # repeated: ignored
            page.keyboard.press("Backspace")  # undoes the 2
            page.keyboard.press("1")
            page.keyboard.press("2")
            assert page.locator("#candidates .card.chosen").count() == 3
            shot(page, "ranking", tmp_path)
            page.keyboard.press("Enter")
            expect(page.locator("#count")).to_have_text("1 saved")
            ranked_first = [shown[2], shown[0], shown[1]]
            # bob ranks the same item through the API, the other way round; the admin page shows tau
            view = api(port_r, _bob_r, "/api/next")
            assert view["item"] == 1
            api(port_r, _bob_r, "/api/judgements", {"item": 1, "idempotency_key": "bob-rank-0001", "ranking": [view["completions"].index(t) for t in reversed(ranked_first)]})
            page.goto(f"http://127.0.0.1:{port_r}/admin#token={boss_r}")
            expect(page.locator("#agreement")).to_contain_text("Kendall's tau")
            assert "-1.000" in page.inner_text("#agreement")  # exactly reversed
            shot(page, "admin-ranking", tmp_path)
            assert not errors, errors
            browser.close()
    finally:
        for s in servers:
            s.kill()
            s.wait()

    # --- the export holds what was typed and pressed -----------------------------------------------
    out = tmp_path / "pairs.jsonl"
    assert main(["annotate", "export", "--project", str(projects["pairwise"][0]), "--output", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    mine = [(r["chosen"], r["rejected"], r["reason"]) for r in rows if r["annotator"] == "ann"]
    assert sorted(mine) == sorted(chosen_texts)
    assert all(r["judged_at"] and r["item"] for r in rows) and len(rows) == 4
    out_r = tmp_path / "rankings.jsonl"
    assert main(["annotate", "export", "--project", str(projects["ranking"][0]), "--output", str(out_r)]) == 0
    by_annotator = {r["annotator"]: r["completions"] for r in map(json.loads, out_r.read_text().splitlines())}
    assert by_annotator == {"ann": ranked_first, "bob": ranked_first[::-1]}
