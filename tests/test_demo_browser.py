"""The demo in a real browser: Debian's Chromium, headless, driven by Playwright.

Skips (with the reason) when Playwright or /usr/bin/chromium is missing. The test takes a
screenshot of the first screen every time and checks that nothing on the page shows a folder of
this machine. With MASKIOU_WRITE_SCREENSHOT=1 it runs on the embedded default models (the
shipped ones, installed into the cache) and the gallery of the shipped add-on on the embedded
validation split, and writes the screenshot to docs/demo.png, the picture the README and the
docs show::

    MASKIOU_WRITE_SCREENSHOT=1 python -m pytest tests/test_demo_browser.py

Without it, the tiny forced models of demo/testing.py serve, and the screenshot goes to a
temporary folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
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
from maskiou.models.paths import default_model_path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]
TIMEOUT_MS = 120_000
pytestmark = pytest.mark.filterwarnings(  # pandas 3 deprecations inside gradio's queue
    "ignore:'future.no_silent_downcasting' is deprecated", "ignore:The copy keyword is deprecated")


WRITE_SCREENSHOT = os.environ.get("MASKIOU_WRITE_SCREENSHOT") == "1"
SCREENSHOT = ROOT / "docs" / "demo.png"
# what a machine's folders look like on a page: none of them may show
MACHINE_PATHS = sorted({"/work/", "/tmp/", "/root/", "/home/", str(Path.home()) + "/",
                        tempfile.gettempdir().rstrip("/") + "/"})


def shipped_results(out: Path) -> tuple[Path, Path]:
    """The embedded default models installed from the shipped files (where the cache has none
    yet), and the metrics.json and gallery.json that ``benchmarks/coco_eval.py`` writes for
    them, computed here with the same functions from the add-on on the embedded validation
    split, without training anything."""
    from maskiou.data.coco import CocoInstanceDataset
    from maskiou.evaluation import benchmark
    from maskiou.evaluation.gallery import rank_change_gallery
    from maskiou.evaluation.report import best_learned

    benchmark.default_detector(progress=False)
    benchmark.default_end_to_end(progress=False)
    benchmark.install_shipped_addon()  # unless the main job's own add-on is there already
    addon = default_model_path()  # the head the demo offers first
    dataset = CocoInstanceDataset(*benchmark.embedded_val(progress=False))
    m = benchmark.evaluate_checkpoint(addon, dataset, "cpu", progress=False)
    best = best_learned(m["segm"])
    rows = rank_change_gallery(m["detections"].image_ids, m["detections"].cls_scores,
                               m["scores"][best], m["true_ious"])
    out.mkdir(parents=True, exist_ok=True)
    metrics, gallery = out / "metrics.json", out / "gallery.json"
    metrics.write_text(json.dumps({"segm": m["segm"], "correlation": m["correlation"],
                                   "num_images": len(dataset)}))
    gallery.write_text(json.dumps({"scoring": best, "val_json": str(dataset.ann_file),
                                   "images": rows}))
    return metrics, gallery


@pytest.fixture(scope="module")
def page_url(split, checkpoints, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    if WRITE_SCREENSHOT:  # the README picture: the embedded default models and their gallery
        metrics, gallery = shipped_results(tmp_path_factory.mktemp("shipped") / "results")
        demo = build_app(threshold=0.3, metrics_path=metrics, gallery_path=gallery)
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


def machine_paths(page) -> list[str]:
    """The folders of this machine that the page shows: in its text, and in the values of its
    inputs (a dropdown shows its choice there)."""
    shown = page.inner_text("body") + "\n" + "\n".join(
        page.eval_on_selector_all("input, textarea", "els => els.map(e => e.value)"))
    return [p for p in MACHINE_PATHS if p in shown]


def first_column(page) -> list[str]:
    """The table's "class" column, top to bottom (Gradio's virtual grid: one div per cell)."""
    cells = page.locator('#table [role="gridcell"][data-col="1"]')
    rows = {int(cells.nth(i).get_attribute("data-row")): cells.nth(i).inner_text().strip()
            for i in range(cells.count())}
    return [rows[k] for k in sorted(rows)]


def test_first_screen_shows_a_rank_change_and_the_order_switches(page_url: str,
                                                                 tmp_path: Path) -> None:
    shot = SCREENSHOT if WRITE_SCREENSHOT else tmp_path / "demo.png"
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
            assert machine_paths(page) == []
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            # rank by the classification score instead: the order changes
            page.locator("#order label", has_text="classification score").click()
            for _ in range(600):  # the table is redrawn without running the model again
                if first_column(page) != by_head:
                    break
                page.wait_for_timeout(100)
            by_cls = first_column(page)
            assert by_cls != by_head
            if not WRITE_SCREENSHOT:  # the tiny models' table is drawn whole, a long one in part
                assert sorted(by_cls) == sorted(by_head)
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
