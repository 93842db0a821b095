"""The Streamlit app under many users: real Chromium sessions against a real `streamlit run`.

    python -m bench.app_load --checkpoint workdirs/flickr8k_lite0 --data_dir /path/to/Flickr8k \
        [--sessions 1,8,32] [--single_repeats 5] [--slider_photos 10] [--memory_uploads 200] [--app serve_app.py]

Starts `streamlit run serve_app.py` on a free 127.0.0.1 port (PYTHONPATH = this repository, so the server
imports this checkout's jaxcap), opens one page first (the model loads and compiles; not timed), then:

- sessions: for each N in --sessions, N fresh pages (each its own browser context, so its own Streamlit
  session) upload a different test-split photo at the same moment. Times run from a page's upload to its
  finished page: captions shown, the CSV button on the page, every image loaded, no element left stale by a
  running script (checked in the page on every DOM change and image load). Prints each session's seconds, the
  time until every page was finished, the errors (error or warning boxes, exceptions) and timeouts. N = 1 is repeated --single_repeats times.
- slider: one page uploads --slider_photos photos, then the first photo's attention slider is moved one word
  at a time (--slider_moves times); each move is timed until the new word's heat map is on the page and
  loaded. The server's model calls before and after come from the file the app writes when
  JAXCAP_SERVING_STATS is set (null for an app that has no such file).
- memory: the server's resident memory (RSS, /proc) before and after --memory_uploads uploads of distinct
  photos (8 pages at a time, a fresh session per upload), and halfway.

Each phase also reports the CPU seconds the server process used and the whole machine used (server, Chromium
and anything else running), beside its wall time: on a quiet 2-core machine the difference is the browsers'.
The sessions phases report the same for the upload window alone (upload_cpu: first upload to last finished
page, page opening excluded).

All traffic goes to 127.0.0.1; every wait is bounded (--timeout); the server and the browser are stopped in
`finally`. Prints one JSON object. Needs Debian's chromium and playwright (requirements.txt).
"""
import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time

from bench import common

ROOT = common.ROOT

# Installed in every page: window.__done is set (Date.now()) once the page is finished after an upload, and
# window.__errors counts error boxes, warnings and exceptions.
FINISHED_JS = """
() => {
  window.__done = null; window.__errors = 0;
  const check = () => {
    if (window.__done) return;
    const main = document.querySelector('[data-testid="stMain"]') || document.body;
    const errors = main.querySelectorAll('[data-testid="stAlertContentError"], [data-testid="stAlertContentWarning"], [data-testid="stException"]').length;
    const dl = main.querySelector('[data-testid="stDownloadButton"]');
    const imgs = [...main.querySelectorAll('img')];
    const stale = main.querySelector('[data-stale="true"]');   // elements a running script has not redrawn yet
    if (dl && !stale && (main.querySelector('strong') || errors) && imgs.every(i => i.complete && i.naturalWidth > 0)) {
      window.__done = Date.now(); window.__errors = errors;
    }
  };
  new MutationObserver(check).observe(document.body, {childList: true, subtree: true, attributes: true});
  document.addEventListener('load', check, true);
  window.__check = setInterval(check, 25);
}
"""

# Many pages in one browser: none of them may be throttled as a background tab.
CHROMIUM_ARGS = common.CHROMIUM_ARGS + ["--disable-background-timer-throttling", "--disable-renderer-backgrounding",
                                        "--disable-backgrounding-occluded-windows"]


def rss_mb(pid: int) -> float:
  """Resident memory of a process in MB (the streamlit server is one process)."""
  with open(f"/proc/{pid}/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return round(int(line.split()[1]) / 1024, 1)
  return float("nan")


def cpu_s(pid: int) -> float:
  """User + system CPU seconds of a process (all its threads) so far."""
  with open(f"/proc/{pid}/stat") as f:
    fields = f.read().rsplit(")", 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_s() -> float:
  """Busy CPU seconds of the whole machine so far (all cores; /proc/stat minus idle and iowait)."""
  with open("/proc/stat") as f:
    ticks = [int(x) for x in f.readline().split()[1:]]
  return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
  """CPU seconds the server and the whole machine (server, browser, anything else) used in a phase."""

  def __init__(self, pid: int):
    self.pid, self.server, self.machine, self.wall = pid, cpu_s(pid), machine_cpu_s(), time.perf_counter()

  def read(self) -> dict:
    return {"wall_s": round(time.perf_counter() - self.wall, 2),
            "server_cpu_s": round(cpu_s(self.pid) - self.server, 2),
            "machine_cpu_s": round(machine_cpu_s() - self.machine, 2)}


def read_stats(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


async def load(page, url: str, timeout_ms: int, tries: int = 3) -> None:
  """(Re)loads the app in `page`: a new Streamlit session, its first run over, the finished-page detector
  installed. A page that does not come up (a lost websocket under load) is loaded again, up to `tries` times."""
  for attempt in range(tries):
    try:
      await page.goto(url, timeout=timeout_ms)
      await page.wait_for_selector("input[type=file]", state="attached", timeout=timeout_ms // tries)
      await page.wait_for_selector("text=model:", timeout=timeout_ms // tries)   # the first run is over
      break
    except Exception:  # noqa: BLE001  (playwright's TimeoutError)
      if attempt == tries - 1:
        raise
  await page.evaluate(FINISHED_JS)


async def open_pages(context, url: str, n: int, timeout_ms: int, at_once: int = 4) -> list:
  """n pages, each its own Streamlit session (one websocket each), opened `at_once` at a time (untimed)."""
  pages = []
  for i in range(0, n, at_once):
    batch = [await context.new_page() for _ in range(min(at_once, n - i))]
    pages += batch
    await asyncio.gather(*[load(p, url, timeout_ms) for p in batch])
  return pages


async def upload_and_wait(page, photos, timeout_ms: int) -> dict:
  t0 = time.time()
  await page.set_input_files("input[type=file]", photos)
  try:
    await page.wait_for_function("() => window.__done !== null", timeout=timeout_ms, polling=50)
  except Exception:  # noqa: BLE001  (playwright's TimeoutError)
    return {"seconds": None, "timeout": True, "errors": 0, "t0": t0, "done": None}
  done, errors = await page.evaluate("() => [window.__done, window.__errors]")
  return {"seconds": round(done / 1000 - t0, 3), "timeout": False, "errors": errors, "t0": t0, "done": done / 1000}


async def concurrent_sessions(context, url, photos, timeout_ms, pages=None, pid=None):
  """Every page uploads its photo at the same moment; times until each and all pages are finished. With the
  server's pid, also the CPU seconds the server and the whole machine used from the uploads until the last
  page was finished (page opening excluded)."""
  own = pages is None
  pages = pages or await open_pages(context, url, len(photos), timeout_ms)
  try:
    meter = CpuMeter(pid) if pid else None
    runs = await asyncio.gather(*[upload_and_wait(page, photo, timeout_ms) for page, photo in zip(pages, photos)])
    upload_cpu = meter.read() if meter else None
  finally:
    if own:
      await asyncio.gather(*[p.close() for p in pages])
  done = [r["done"] for r in runs if r["done"] is not None]
  return {"sessions": len(photos),
          "all_finished_s": round(max(done) - min(r["t0"] for r in runs), 3) if len(done) == len(runs) else None,
          "session_s": [r["seconds"] for r in runs], "errors": sum(r["errors"] for r in runs),
          "timeouts": sum(r["timeout"] for r in runs), **({"upload_cpu": upload_cpu} if upload_cpu else {})}


# The attention view: [its caption, its image's src, loaded?] ('' when the page has none yet).
OVERLAY_JS = """() => {
  const c = [...document.querySelectorAll('[data-testid="stImageCaption"]')].find(e => e.innerText.startsWith('where'));
  const img = c && c.closest('[data-testid="stImage"]') && c.closest('[data-testid="stImage"]').querySelector('img');
  return c && img ? [c.innerText, img.src, img.complete && img.naturalWidth > 0] : ['', '', false];
}"""


async def slider(context, url, photos, moves, stats_path, timeout_ms):
  [page] = await open_pages(context, url, 1, timeout_ms)
  try:
    upload = await upload_and_wait(page, photos, timeout_ms)
    calls_before = (read_stats(stats_path) or {}).get("model_calls")
    thumb = page.locator("[data-testid=stMain] [data-testid=stSlider] input[type=range]").first
    times = []
    for _ in range(moves):
      old = await page.evaluate(OVERLAY_JS)
      await thumb.focus()
      t0 = time.perf_counter()
      await page.keyboard.press("ArrowRight")
      # Finished: the heat map's image is a new one (caption or src changed) and loaded, and no element is
      # stale (a whole-page rerun has redrawn every photo).
      await page.wait_for_function(f"(old) => {{ const o = ({OVERLAY_JS})(); "
                                   "return o[2] && (o[0] !== old[0] || o[1] !== old[1]) && "
                                   "!document.querySelector('[data-stale=true]'); }",
                                   arg=old, timeout=timeout_ms, polling=10)
      times.append(round(time.perf_counter() - t0, 3))
    await page.wait_for_timeout(500)   # a late model call would show up in the counters
    calls_after = (read_stats(stats_path) or {}).get("model_calls")
  finally:
    await page.close()
  return {"photos": len(photos), "upload_s": upload["seconds"], "upload_errors": upload["errors"],
          "moves": len(times), "median_s": statistics.median(times), "max_s": max(times), "times_s": times,
          "model_calls_during_moves": None if calls_before is None else calls_after - calls_before}


async def memory(context, url, photos, pid, timeout_ms, parallel=8):
  """Uploads every photo in a fresh session, `parallel` pages at a time (each page reloaded per upload)."""
  before, half, times, errors, timeouts, meter = rss_mb(pid), None, [], 0, 0, CpuMeter(pid)
  pages = await open_pages(context, url, parallel, timeout_ms)
  try:
    for i in range(0, len(photos), parallel):
      if i:
        await asyncio.gather(*[load(p, url, timeout_ms) for p in pages])   # new sessions
      chunk = photos[i:i + parallel]
      r = await concurrent_sessions(context, url, chunk, timeout_ms, pages=pages[:len(chunk)])
      times += [s for s in r["session_s"] if s is not None]
      errors, timeouts = errors + r["errors"], timeouts + r["timeouts"]
      if half is None and i + parallel >= len(photos) // 2:
        half = rss_mb(pid)
  finally:
    await asyncio.gather(*[p.close() for p in pages])
  return {"uploads": len(photos), "rss_before_mb": before, "rss_halfway_mb": half, "rss_after_mb": rss_mb(pid),
          "upload_median_s": statistics.median(times) if times else None, "errors": errors, "timeouts": timeouts,
          "cpu": meter.read()}


async def run(a, url, photos, pid, stats_path, out: dict):
  """The phases in order; each result goes into `out` as soon as it is there (a failure keeps the others)."""
  from playwright.async_api import async_playwright
  timeout_ms = int(a.timeout * 1000)
  async with async_playwright() as pw:
    browser = await pw.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
    try:
      # One context: its HTTP cache spares every new page the frontend's download; each page is still its
      # own Streamlit session.
      context = await browser.new_context(viewport={"width": 1300, "height": 1000})
      t = time.perf_counter()
      page = await context.new_page()
      await load(page, url, timeout_ms, tries=1)   # the first session loads and compiles the model
      out["first_page_s"] = round(time.perf_counter() - t, 1)
      warm = await upload_and_wait(page, next(photos), timeout_ms)
      out["warm_upload_s"] = warm["seconds"]
      await page.close()
      out["warm_up_stats"] = read_stats(stats_path)
      for n in a.sessions:
        reps = a.single_repeats if n == 1 else 1
        meter = CpuMeter(pid)
        runs = [await concurrent_sessions(context, url, [next(photos) for _ in range(n)], timeout_ms, pid=pid)
                for _ in range(reps)]
        key = f"sessions_{n}"
        if reps == 1:
          out[key] = {**runs[0], "cpu": meter.read()}
        else:
          finished = [r["all_finished_s"] for r in runs]
          out[key] = {"sessions": 1, "median_s": statistics.median([f for f in finished if f is not None]),
                      "runs_s": finished, "errors": sum(r["errors"] for r in runs),
                      "timeouts": sum(r["timeouts"] for r in runs), "upload_cpu": [r["upload_cpu"] for r in runs],
                      "cpu": meter.read()}
      if a.slider_photos:
        out["slider"] = await slider(context, url, [next(photos) for _ in range(a.slider_photos)], a.slider_moves,
                                     stats_path, timeout_ms)
      if a.memory_uploads:
        out["memory"] = await memory(context, url, [next(photos) for _ in range(a.memory_uploads)], pid,
                                     timeout_ms)
    except Exception as e:  # noqa: BLE001  (print what was measured, and why the rest is missing)
      out["failed"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    finally:
      await browser.close()


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--checkpoint", required=True)
  p.add_argument("--data_dir", default=os.environ.get("JAXCAP_FLICKR8K_DIR"),
                 help="the Flickr8k folder, for test-split photos (default: $JAXCAP_FLICKR8K_DIR)")
  p.add_argument("--app", default=os.path.join(ROOT, "serve_app.py"))
  p.add_argument("--sessions", default="1,8,32")
  p.add_argument("--single_repeats", type=int, default=5)
  p.add_argument("--slider_photos", type=int, default=10)
  p.add_argument("--slider_moves", type=int, default=5)
  p.add_argument("--memory_uploads", type=int, default=200)
  p.add_argument("--timeout", type=float, default=180.0, help="seconds any one wait may take")
  a = p.parse_args()
  if not a.data_dir:
    p.error("the Flickr8k folder: give --data_dir or set JAXCAP_FLICKR8K_DIR")
  a.sessions = [int(n) for n in a.sessions.split(",") if n]
  from jaxcap.data import flickr8k

  src = flickr8k.scan(a.data_dir, check_images=False)
  names = src.splits["test"]
  need = 1 + a.single_repeats + sum(n for n in a.sessions if n > 1) + a.slider_photos + a.memory_uploads
  if need > len(names):
    raise SystemExit(f"{need} photos needed, the test split has {len(names)}")
  photos = iter(os.path.join(src.images_dir, n) for n in names)   # each photo once: no cache helps

  out: dict = {}
  load_start = [round(x, 2) for x in os.getloadavg()]   # 1/5/15-minute: the machine is shared
  tmp = tempfile.mkdtemp(prefix="jaxcap_app_load_")
  stats_path = os.path.join(tmp, "serving_stats.json")
  log = open(os.path.join(tmp, "server.log"), "w")
  try:
    with common.streamlit_app(a.app, a.checkpoint, a.timeout, {"JAXCAP_SERVING_STATS": stats_path}, log) as (
        url, server):
      signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # a kill still stops the server and browser
      asyncio.run(run(a, url, photos, server.pid, stats_path, out))
      out["final_stats"] = read_stats(stats_path)
  finally:
    log.close()
    common.emit({"bench": "app_load", "app": a.app, "checkpoint": a.checkpoint, "server_log": log.name,
                 "machine": common.machine(), "load_average_start": load_start,
                 "load_average_end": [round(x, 2) for x in os.getloadavg()], **out})


if __name__ == "__main__":
  main()
