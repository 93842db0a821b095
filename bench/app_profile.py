"""Where the server's time goes in one app request and one attention-slider move (in process, Streamlit AppTest).

    python -m bench.app_profile --checkpoint workdirs/flickr8k_lite0 [--data_dir /path/to/Flickr8k] [--photos 10]

Runs the app script as Streamlit does (AppTest: the same script runner, no browser), after the model has
loaded, and times: an upload of 1 photo; an upload of `--photos` photos; and a move of the first photo's
attention slider on that page (AppTest reruns the whole script for it; in a browser the app reruns only
that photo's fragment). Each step is run unprofiled for the wall time (median of `--repeats`, on fresh
pages and fresh photos so no cache helps) and once under cProfile, whose cumulative times are grouped by what
they are: model (Captioner calls, or waiting on the batching worker), image decode, resize, attention overlay,
display encoding (image bytes for the page), beams table, the rest (Streamlit). `--app` points at another
version of serve_app.py (e.g. one from `git show`) for a before/after. Prints one JSON object.
"""
import argparse
import cProfile
import json
import os
import pstats
import statistics
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (group, file name ending, function name): cumulative time of these, outermost call only.
GROUPS = [
    ("model", "inference.py", "caption_pixels"), ("model", "_base.py", "result"),
    ("model", "serving.py", "submit"),
    ("decode", "images.py", "read_image"),
    ("resize", "images.py", "resize"),
    ("overlay", "serve_app.py", "heat_overlay"),
    ("display_encoding", "image_utils.py", "image_to_url"), ("display_encoding", "serve_app.py", "jpeg"),
    ("table", "arrow.py", "dataframe"), ("table", "table.py", "table"),
]


def grouped(profile: cProfile.Profile, total_s: float) -> dict:
  st = pstats.Stats(profile).stats
  out = {g: 0.0 for g, _, _ in GROUPS}
  keys = {(f, n): g for g, f, n in GROUPS}
  for (path, _, name), (_, _, _, cum, callers) in st.items():
    g = next((g for (f, n), g in keys.items() if path.endswith(f) and name == n), None)
    if g is None:
      continue
    # Outermost calls only: drop the share called from another function of the same group.
    nested = sum(c[3] for (cp, _, cn), c in callers.items()
                 if any(cp.endswith(f) and cn == n and gg == g for (f, n), gg in keys.items()))
    out[g] += max(cum - nested, 0.0)
  out = {k: round(v, 4) for k, v in out.items()}
  out["streamlit_and_rest"] = round(max(total_s - sum(out.values()), 0.0), 4)
  out["total_profiled"] = round(total_s, 4)
  return out


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--checkpoint", required=True)
  p.add_argument("--data_dir", default=os.environ.get("JAXCAP_FLICKR8K_DIR"),
                 help="the Flickr8k folder, for test-split photos (default: $JAXCAP_FLICKR8K_DIR)")
  p.add_argument("--app", default=os.path.join(ROOT, "serve_app.py"))
  p.add_argument("--photos", type=int, default=10)
  p.add_argument("--repeats", type=int, default=3)
  a = p.parse_args()
  if not a.data_dir:
    p.error("the Flickr8k folder: give --data_dir or set JAXCAP_FLICKR8K_DIR")
  os.environ["JAXCAP_CHECKPOINT"] = a.checkpoint
  from streamlit.runtime.scriptrunner import script_runner
  from streamlit.testing.v1 import AppTest

  from jaxcap.data import flickr8k

  src = flickr8k.scan(a.data_dir, check_images=False)
  names = src.splits["test"]
  photos = iter([(n, open(os.path.join(src.images_dir, n), "rb").read()) for n in names])
  profiles = []
  orig = script_runner.ScriptRunner._run_script

  def run_script(self, *args, **kwargs):  # cProfile of the script thread, when one is asked for
    if not profiles or profiles[-1] is None:
      return orig(self, *args, **kwargs)
    pr = profiles[-1]
    pr.enable()
    try:
      return orig(self, *args, **kwargs)
    finally:
      pr.disable()

  script_runner.ScriptRunner._run_script = run_script

  def page():
    at = AppTest.from_file(a.app, default_timeout=600)
    at.run()  # the first one loads and compiles the model
    assert not at.exception, at.exception
    return at

  def upload(at, n):
    files = [(name, data, "image/jpeg") for name, data in (next(photos) for _ in range(n))]
    at.file_uploader[0].set_value(files)
    t = time.perf_counter()
    at.run()
    dt = time.perf_counter() - t
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    return dt

  def move_slider(at):
    s = at.select_slider[0]
    s.set_value(min(2, len(s.options) - 1))   # the value is the word's index
    t = time.perf_counter()
    at.run()
    return time.perf_counter() - t

  t0 = time.perf_counter()
  page()
  load_s = time.perf_counter() - t0
  result = {"bench": "app_profile", "app": a.app, "checkpoint": a.checkpoint, "load_and_compile_s": round(load_s, 1)}
  for label, n in (("upload_1", 1), (f"upload_{a.photos}", a.photos)):
    walls, slider_walls = [], []
    for _ in range(a.repeats):
      at = page()
      profiles.append(None)
      walls.append(upload(at, n))
      slider_walls.append(move_slider(at))
    at = page()
    profiles.append(cProfile.Profile())
    t = time.perf_counter()
    upload(at, n)
    prof_upload = grouped(profiles[-1], time.perf_counter() - t)
    profiles.append(cProfile.Profile())
    t = time.perf_counter()
    move_slider(at)
    prof_slider = grouped(profiles[-1], time.perf_counter() - t)
    profiles.append(None)
    result[label] = {"wall_s": round(statistics.median(walls), 4), "walls_s": [round(w, 4) for w in walls],
                     "profile_s": prof_upload}
    result[f"slider_move_{label}"] = {"wall_s": round(statistics.median(slider_walls), 4),
                                      "walls_s": [round(w, 4) for w in slider_walls], "profile_s": prof_slider}
  print(json.dumps(result))


if __name__ == "__main__":
  main()
