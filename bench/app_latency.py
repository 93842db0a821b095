"""Time from upload to caption of the Streamlit app in headless Chromium, and a screenshot.

    python -m bench.app_latency --checkpoint workdirs/flickr8k_lite0 --data_dir /path/to/Flickr8k \
        [--checkpoint workdirs/seed1 ...] [--uploads 5] [--screenshot docs/app_screenshot.png]

Starts `streamlit run serve_app.py` on a free localhost port, waits for the model to load, then uploads
test-split photos one at a time and measures, in the browser, the seconds from the upload until the caption is
on the page (greedy + beam 3 + attention view rendered), one photo per fresh page. Prints one JSON object with
the median and the captions; keeps a screenshot of the first photo. Needs Debian's chromium and playwright (requirements.txt).
"""
import argparse
import json
import os
import shutil
import statistics
import time

from bench import common

ROOT = common.ROOT  # the repository: serve_app.py, docs/


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--checkpoint", required=True, action="append", help="repeat for an ensemble")
  p.add_argument("--data_dir", default=os.environ.get("JAXCAP_FLICKR8K_DIR"),
                 help="the Flickr8k folder, for test-split photos (default: $JAXCAP_FLICKR8K_DIR)")
  p.add_argument("--uploads", type=int, default=5)
  p.add_argument("--screenshot", default=os.path.join(ROOT, "docs", "app_screenshot.png"))
  a = p.parse_args()
  if not a.data_dir:
    p.error("the Flickr8k folder: give --data_dir or set JAXCAP_FLICKR8K_DIR")
  from playwright.sync_api import sync_playwright

  from jaxcap.data import flickr8k

  src = flickr8k.scan(a.data_dir, check_images=False)
  photos = [os.path.join(src.images_dir, n) for n in src.splits["test"][: a.uploads]]
  times, captions = [], []
  with common.streamlit_app(os.path.join(ROOT, "serve_app.py"), a.checkpoint, timeout=300) as (url, _):
    with sync_playwright() as pw:
      browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=common.CHROMIUM_ARGS)
      page = browser.new_page(viewport={"width": 1300, "height": 1000})
      for i, photo in enumerate(photos):
        # A fresh session per photo (the model stays loaded: st.cache_resource), so each time is one photo's.
        page.goto(url, timeout=60_000)
        page.wait_for_selector("input[type=file]", state="attached", timeout=300_000)
        t0 = time.perf_counter()
        page.set_input_files("input[type=file]", photo)
        page.wait_for_function(
            "() => document.querySelectorAll('strong').length >= 1 && [...document.images].every(i => i.complete)",
            timeout=120_000)
        page.wait_for_timeout(200)
        times.append(time.perf_counter() - t0)
        captions.append({"photo": os.path.basename(photo),
                         "caption": page.query_selector("strong").inner_text()})
        if i == 0:  # the screenshot, once the photo and the heat map have loaded
          page.wait_for_function("document.querySelectorAll('img').length >= 2 && "
                                 "[...document.images].every(i => i.complete && i.naturalWidth > 0)", timeout=60_000)
          page.wait_for_timeout(500)
          os.makedirs(os.path.dirname(os.path.abspath(a.screenshot)), exist_ok=True)
          page.screenshot(path=a.screenshot, full_page=True)
      browser.close()
  print(json.dumps({"bench": "app_upload_to_caption", "uploads": len(times),
                    "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
                    "times_s": times, "captions": captions, "screenshot": a.screenshot}))


if __name__ == "__main__":
  main()
