"""The Streamlit app: AppTest (in process) and a real headless Chromium driving a real server."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP = os.path.join(ROOT, "serve_app.py")
ARTIFACTS = os.environ.get("JAXCAP_TEST_ARTIFACTS", os.path.join(ROOT, "artifacts"))


def _app(checkpoint, monkeypatch):
  monkeypatch.setenv("JAXCAP_CHECKPOINT", checkpoint)  # what `-- --checkpoint` sets, for every rerun
  at = AppTest.from_file(APP, default_timeout=180)
  at.run()
  return at


def test_page_without_checkpoint_says_how_to_make_one():
  at = AppTest.from_file(APP, default_timeout=60)
  at.run()
  assert not at.exception
  assert "python train.py" in at.info[0].value


def test_upload_gets_captions_and_a_bad_file_gets_its_message(trained, monkeypatch):
  workdir, cfg = trained
  at = _app(workdir, monkeypatch)
  assert not at.exception
  good = open(os.path.join(cfg.data.synthetic_dir, "Images", "synth_00003.jpg"), "rb").read()
  at.file_uploader[0].set_value([("shapes.jpg", good, "image/jpeg"), ("broken.png", b"\x89PNG garbage", "image/png"),
                                 ("empty.jpg", b"", "image/jpeg")]).run()
  assert not at.exception
  errors = [e.value for e in at.error]
  assert any("broken.png" in e and "not an image" in e for e in errors)
  assert any("empty.jpg" in e and "empty file" in e for e in errors)
  captions = [m.value for m in at.markdown if m.value.startswith("**")]
  assert len(captions) == 1 and len(captions[0]) > 4  # the good image got a caption; the page carried on
  assert at.get("download_button")


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian chromium not installed (.ci/run installs it)")
def test_browser_upload_shows_caption(trained, tmp_path):
  from playwright.sync_api import sync_playwright
  workdir, cfg = trained
  port = _free_port()
  server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", APP, "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true", "--",
                             "--checkpoint", workdir], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 120
    while time.time() < deadline:
      try:
        if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok":
          break
      except OSError:
        time.sleep(0.5)
    image = tmp_path / "upload.png"
    Image.open(os.path.join(cfg.data.synthetic_dir, "Images", "synth_00004.jpg")).save(image)
    with sync_playwright() as p:
      browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=[
          "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
          "--disable-component-update", "--no-first-run"])  # playwright: a fresh temporary profile
      page = browser.new_page(viewport={"width": 1200, "height": 900})
      page.goto(f"http://127.0.0.1:{port}/", timeout=60_000)
      page.wait_for_selector("input[type=file]", state="attached", timeout=180_000)
      page.set_input_files("input[type=file]", str(image))
      caption = page.wait_for_selector("strong", timeout=120_000).inner_text()
      page.wait_for_function("[...document.images].every(i => i.complete)", timeout=30_000)
      os.makedirs(ARTIFACTS, exist_ok=True)
      page.screenshot(path=os.path.join(ARTIFACTS, "browser_upload.png"), full_page=True)
      browser.close()
    from jaxcap.inference import Captioner
    [want] = Captioner.load(workdir).caption([str(image)], beam_size=3, alpha=1.0)  # the app's defaults
    assert caption == want.caption
  finally:
    server.terminate()
    server.wait(timeout=30)
