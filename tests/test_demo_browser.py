"""The demo in a real browser: Debian's Chromium, headless, driven by Playwright.

Skips (with the reason) when Playwright or /usr/bin/chromium is missing. With
MASKIOU_SCREENSHOT=1 the screenshot goes to docs/demo.png, made with the embedded default
models and the benchmark's gallery when they are there (else with the tiny forced models of
demo/testing.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="the demo needs gradio: pip install -e '.[demo]'")
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="browser test needs playwright: pip install playwright")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip("browser test needs Debian's chromium: apt-get install -y chromium",
                allow_module_level=True)

from test_demo import checkpoints, free_port, split  # noqa: E402, F401 - fixtures

from demo.app import build_app  # noqa: E402
from demo.sources import DEFAULT_GALLERY  # noqa: E402
from maskiou.models.paths import default_model_path, model_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]
TIMEOUT_MS = 120_000
pytestmark = pytest.mark.filterwarnings(  # pandas 3 deprecations inside gradio's queue
    "ignore:'future.no_silent_downcasting' is deprecated", "ignore:The copy keyword is deprecated")


@pytest.fixture(scope="module")
def page_url(split, checkpoints, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    real = (os.environ.get("MASKIOU_SCREENSHOT") == "1" and default_model_path().is_file()
            and (model_dir("torchvision_plain") / "model_final.pt").is_file()
            and DEFAULT_GALLERY.is_file())
    if real:  # the README picture: the embedded default models and the benchmark's gallery
        demo = build_app(threshold=0.3)
    else:
        ids = split.dataset.image_ids
        gallery = tmp_path_factory.mktemp("results") / "gallery.json"
        gallery.write_text(json.dumps({"val_json": str(split.dataset.ann_file),
                                       "images": [{"image_id": int(i)} for i in ids[:3]]}))
        # 0.25 lies between the tiny model's rescored scores 0.12 and 0.27: both kinds show
        demo = build_app([str(checkpoints["plain"])], [str(checkpoints["head"])], split=split,
                         metrics_path=gallery.with_name("metrics.json"), gallery_path=gallery,
                         threshold=0.25)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(),
                            prevent_thread_lock=True, quiet=True)
    yield url
    demo.close()


def first_column(page) -> list[str]:
    """The table's "class" column, top to bottom (Gradio's virtual grid: one div per cell)."""
    cells = page.locator('#table [role="gridcell"][data-col="1"]')
    rows = {int(cells.nth(i).get_attribute("data-row")): cells.nth(i).inner_text().strip()
            for i in range(cells.count())}
    return [rows[k] for k in sorted(rows)]


def test_first_screen_shows_a_rank_change_and_the_order_switches(page_url: str,
                                                                 tmp_path: Path) -> None:
    shot = ROOT / "docs" / "demo.png" if os.environ.get("MASKIOU_SCREENSHOT") == "1" \
        else tmp_path / "demo.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1150})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(page_url)
            status = page.locator("#status")
            # the first screen: the first gallery image, with ground truth, some ranks changed
            sync_api.expect(status).to_contain_text(
                "the final score the model returns changes the rank of", timeout=TIMEOUT_MS)
            moved = int(re.search(r"changes the rank of (\d+)", status.inner_text()).group(1))
            assert moved >= 1
            sync_api.expect(status).to_contain_text("with ground truth")
            for name in ("cls", "maskness", "rescored", "final", "oracle"):
                page.locator(f"#panel-{name} img").first.wait_for(state="visible")
            page.locator("#plot img").first.wait_for(state="visible")
            sync_api.expect(page.locator("#table")).to_contain_text("rank: final")
            sync_api.expect(page.locator("#table")).to_contain_text("final score")
            page.wait_for_timeout(500)
            by_head = first_column(page)
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            # rank by the classification score instead: the order changes
            page.locator("#order label", has_text="classification score").click()
            for _ in range(600):  # the table is redrawn without running the model again
                if first_column(page) != by_head:
                    break
                page.wait_for_timeout(100)
            by_cls = first_column(page)
            assert sorted(by_cls) == sorted(by_head) and by_cls != by_head
            # an upload that is not an image: one clear line, and the app keeps serving
            bad = tmp_path / "notes.txt"
            bad.write_text("not an image")
            page.locator("#upload input[type=file]").set_input_files(str(bad))
            sync_api.expect(status).to_contain_text("notes.txt: not an image file")
            page.locator("#examples img").nth(1).click()
            sync_api.expect(status).to_contain_text(
                "the final score the model returns changes the rank of")
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
