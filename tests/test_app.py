"""The Streamlit app: AppTest (in process) and a real headless Chromium driving a real server."""
import contextlib
import json
import os
import shutil

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from bench import common


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_attention_slider_move_does_not_call_the_model(trained, monkeypatch):
  """Captions are cached by the upload's content and settings, so a rerun that changes only the view (here a
  full AppTest rerun; in a browser only the photo's fragment reruns) makes no model call."""
  from jaxcap.inference import Captioner
  workdir, cfg = trained
  at = _app(workdir, monkeypatch)
  calls = []
  for method in ("encode_pixels", "decode"):
    real = getattr(Captioner, method)
    monkeypatch.setattr(Captioner, method, lambda self, *a, _real=real, _m=method, **k: (calls.append(_m),
                                                                                          _real(self, *a, **k))[1])
  images = os.path.join(cfg.data.synthetic_dir, "Images")
  files = [(f"p{i}.jpg", open(os.path.join(images, f"synth_0001{i}.jpg"), "rb").read(), "image/jpeg")
           for i in range(2)]   # photos no other test uploads, so not cached yet
  at.slider[0].set_value(1)     # beam width 1: the tiny model's greedy captions have several words
  at.file_uploader[0].set_value(files).run()
  assert not at.exception and not at.error
  assert 1 <= calls.count("encode_pixels") <= 2 and calls.count("decode") == calls.count("encode_pixels")
  captions = [m.value for m in at.markdown if m.value.startswith("**")]
  assert len(captions) == 2

  def overlay():
    return [(im.caption, im.url) for e in at.image for im in e.proto.imgs if im.caption.startswith("where")]

  assert len(at.select_slider[0].options) > 1
  [(caption, url), _] = overlay()
  assert caption.startswith("where word 1,")
  n = len(calls)
  at.select_slider[0].set_value(1).run()
  assert not at.exception and len(calls) == n   # no model call
  assert [m.value for m in at.markdown if m.value.startswith("**")] == captions
  [(caption2, url2), _] = overlay()
  assert caption2.startswith("where word 2,") and url2 != url   # the second word's heat map


@pytest.mark.slow
def test_a_full_queue_gives_a_busy_message_and_retry_works(trained, monkeypatch):
  from jaxcap import serving
  workdir, cfg = trained
  at = _app(workdir, monkeypatch)
  real = serving.CaptionService.submit

  def busy(self, *a, **k):
    raise serving.Busy("the server is busy (64 images waiting); retry in a moment")

  monkeypatch.setattr(serving.CaptionService, "submit", busy)
  good = open(os.path.join(cfg.data.synthetic_dir, "Images", "synth_00030.jpg"), "rb").read()
  at.file_uploader[0].set_value([("later.jpg", good, "image/jpeg")]).run()
  assert not at.exception
  assert any("later.jpg" in w.value and "busy" in w.value and "retry" in w.value for w in at.warning)
  assert not [m for m in at.markdown if m.value.startswith("**")]
  monkeypatch.setattr(serving.CaptionService, "submit", real)
  at.button(key=at.button[0].key).click().run()   # "Retry"
  assert not at.exception and not at.warning
  assert len([m for m in at.markdown if m.value.startswith("**")]) == 1


needs_chromium = pytest.mark.skipif(not shutil.which("chromium"),
                                    reason="Debian chromium not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def app_server(trained, tmp_path_factory):
  """(url, stats file) of a real `streamlit run serve_app.py` on the tiny model, shared by the browser tests;
  the caption service writes its counters (model calls) to the stats file."""
  workdir, _ = trained
  stats = str(tmp_path_factory.mktemp("app_server") / "serving_stats.json")
  with common.streamlit_app(APP, workdir, timeout=120, env={"JAXCAP_SERVING_STATS": stats}) as (url, _):
    yield url, stats


@contextlib.contextmanager
def _app_page(url):
  """A page of the app in headless Chromium, once its uploader is there."""
  from playwright.sync_api import sync_playwright
  with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=common.CHROMIUM_ARGS)
    try:
      page = browser.new_page(viewport={"width": 1200, "height": 900})
      page.goto(url, timeout=60_000)
      page.wait_for_selector("input[type=file]", state="attached", timeout=180_000)
      yield page
    finally:
      browser.close()


@pytest.mark.slow
@needs_chromium
def test_browser_upload_shows_caption(trained, app_server, tmp_path):
  workdir, cfg = trained
  url, _ = app_server
  image = tmp_path / "upload.png"
  Image.open(os.path.join(cfg.data.synthetic_dir, "Images", "synth_00004.jpg")).save(image)
  with _app_page(url) as page:
    page.set_input_files("input[type=file]", str(image))
    caption = page.wait_for_selector("strong", timeout=120_000).inner_text()
    page.wait_for_function("[...document.images].every(i => i.complete)", timeout=30_000)
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, "browser_upload.png"), full_page=True)
  from jaxcap.inference import Captioner
  [want] = Captioner.load(workdir).caption([str(image)], beam_size=3, alpha=1.0)  # the app's defaults
  assert caption == want.caption


@pytest.mark.slow
@needs_chromium
def test_browser_attention_slider_reruns_only_its_view(trained, app_server):
  """In the browser, moving a photo's attention slider reruns only that photo's fragment: the heat map
  changes, the server makes no model call (its counters), and the caption stays."""
  _, cfg = trained
  url, stats = app_server
  photo = os.path.join(cfg.data.synthetic_dir, "Images", "synth_00020.jpg")
  model_calls = lambda: json.load(open(stats))["model_calls"]  # noqa: E731
  overlay_js = ("() => [...document.querySelectorAll('[data-testid=\"stImageCaption\"]')]"
                ".map(e => e.innerText).find(t => t.startsWith('where')) || ''")
  with _app_page(url) as page:
    beam = page.locator("[data-testid=stSidebar] [data-testid=stSlider] input[type=range]").first
    beam.focus()
    page.keyboard.press("Home")   # beam width 1: the tiny model's greedy captions have several words
    page.wait_for_function("() => document.querySelector('[data-testid=stSidebar] [data-testid=stSlider] "
                           "input[type=range]').value === '1'", timeout=30_000)
    page.wait_for_timeout(500)   # the rerun the beam slider started is over
    page.set_input_files("input[type=file]", photo)
    page.wait_for_selector("[data-testid=stDownloadButton]", timeout=120_000)
    page.wait_for_function(f"() => ({overlay_js})().startsWith('where word 1,')", timeout=30_000)
    caption = page.locator("strong").first.inner_text()
    before = model_calls()
    page.locator("[data-testid=stMain] [data-testid=stSlider] input[type=range]").first.focus()
    page.keyboard.press("ArrowRight")
    page.wait_for_function(f"() => ({overlay_js})().startsWith('where word 2,')", timeout=30_000)
    page.wait_for_timeout(500)
    assert model_calls() == before
    assert page.locator("strong").first.inner_text() == caption
