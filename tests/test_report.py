import math
import re
import shutil

import pytest

from tether.evaluate.report import render_report


def _data():
    kls = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    return {
        "title": "sentiment <experiment>",
        "meta": {"model": "tiny", "prompts": 32},
        "curves": {"grpo": {"reward": [[i, 0.1 * i] for i in range(10)], "kl": [[i, 0.3 * i] for i in range(10)]},
                   "ppo": {"reward": [[i, 0.05 * i] for i in range(10)]}},
        "frontier": [{"method": "grpo", "kl": 1.0, "gold": 0.3, "gold_stderr": 0.05, "label": "beta=0.1"},
                     {"method": "grpo", "kl": 3.0, "gold": 0.5, "gold_stderr": 0.05, "label": "beta=0.02"},
                     {"method": "dpo", "kl": 0.5, "gold": 0.25}],
        "winrates": [{"method": "grpo", "judge": "vader", "win_rate": 0.71, "ci": [0.62, 0.8], "lc_win_rate": 0.66, "lc_ci": [0.55, 0.77], "n": 32}],
        "reward_model": {"accuracy": 0.64, "ece": 0.07, "length_baseline": 0.48, "n": 320,
                         "bins": [{"confidence": 0.55, "accuracy": 0.56, "count": 120}, {"confidence": 0.75, "accuracy": 0.7, "count": 40}]},
        "overoptimisation": {"ppo": {"step": list(range(1, len(kls) + 1)), "kl": kls, "proxy": [0.1 * k for k in kls], "gold": [0.2 * k - 0.05 * k * k for k in kls],
                                     "warnings": [{"kl": 4.0, "step": 5, "kind": "proxy_gold_divergence", "message": "proxy rising while gold falls"}]}},
        "samples": [{"prompt": "Review <b>Up</b>", "before": "It was fine.", "after": {"grpo": "<script>alert(1)</script> wonderful!"}}],
        "stages": [{"stage": "sample", "seconds": 91.2, "reused": False}, {"stage": "rm", "seconds": 120.0, "reused": True}],
    }


def test_report_has_every_section_and_escapes_text():
    page = render_report(_data())
    assert page.count("<svg") == 2 + 1 + 1 + 2  # two curve panels, frontier, reliability, over-optimisation against KL and step
    for anchor in ("winrates", "frontier", "overoptimisation", "curves", "reward-model", "samples", "stages"):
        assert f'id="{anchor}"' in page
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "sentiment &lt;experiment&gt;" in page
    assert "[0.620, 0.800]" in page and "proxy_gold_divergence" in page
    assert not re.search(r"(src|href)=[\"']?https?:", page)  # nothing to fetch (XML namespaces are names, not loads)


def test_missing_sections_are_left_out_and_unknown_ones_refused():
    page = render_report({"title": "t", "winrates": _data()["winrates"]})
    assert "<svg" not in page and 'id="winrates"' in page
    with pytest.raises(ValueError, match="unknown sections"):
        render_report({"winrate": []})


def test_report_renders_in_headless_chromium(tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium); the browser check needs it")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    path = tmp_path / "report.html"
    path.write_text(render_report(_data()))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(path.as_uri())
        assert page.locator("svg").count() == 6
        assert page.locator("#winrates + table tr").count() == 2
        # the escaped script stayed text: no alert dialog, the cell shows the markup literally
        assert "<script>alert(1)</script>" in page.locator("tr.sample").inner_text()
        box = page.locator("#frontier + .plot svg").bounding_box()
        assert box and box["width"] > 200 and box["height"] > 150
        shot = page.screenshot(full_page=True)
        browser.close()
    assert [u for u in requests if not u.startswith("file://")] == []
    (tmp_path / "report.png").write_bytes(shot)
    # not blank: the PNG of a page with plots compresses far worse than an empty one
    assert len(shot) > 50_000, len(shot)
    assert math.isfinite(len(shot))
