"""The batching caption service: batched across threads, same captions as the Captioner, no compile after
start-up, errors kept per request, a bounded queue."""
import concurrent.futures
import threading

import numpy as np
import pytest

from jaxcap.inference import Captioner
from jaxcap.serving import LRU, Busy, CaptionService, Request


@pytest.fixture(scope="module")
def captioner(trained):
  return Captioner.load(trained[0])


def _photos(cap, n, seed=0):
  s = cap.preprocessing.size
  return np.random.default_rng(seed).integers(0, 256, (n, s, s, 3), dtype=np.uint8)


@pytest.mark.slow
def test_concurrent_requests_are_batched_and_match_the_captioner(captioner):
  service = CaptionService(captioner, buckets=(1, 2, 4, 8), window_s=0.05, warm=(Request(3, 12, 1.0),))
  try:
    pixels = _photos(captioner, 6)
    # The compiled shapes after warm-up: no request below may add one.
    jitted = [captioner._encode, *_decoders()]
    compiled = [f._cache_size() for f in jitted]
    barrier = threading.Barrier(6)

    def one(i):
      barrier.wait()
      return service.caption(pixels[i], Request(3, 12, 1.0), timeout=60)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
      got = list(pool.map(one, range(6)))
    assert [f._cache_size() for f in jitted] == compiled
    stats = service.snapshot()
    assert stats["requests"] == 6 and stats["batches"] < 6   # six sessions, fewer batches
    assert max(c.batch for c in got) > 1
    want_greedy = captioner.caption_pixels(pixels, 1, 12)
    want_beam = captioner.caption_pixels(pixels, 3, 12, 1.0)
    for c, g, b in zip(got, want_greedy, want_beam):
      assert c.greedy.caption == g.caption
      assert [x.caption for x in c.beam.beams] == [x.caption for x in b.beams]
      np.testing.assert_allclose([x.score for x in c.beam.beams], [x.score for x in b.beams], atol=1e-4)
      np.testing.assert_allclose(c.beam.attention, b.attention, atol=1e-5)
  finally:
    service.close()


def _decoders():
  from jaxcap import decode
  return [decode.greedy, decode.beam_search]


def test_a_failing_request_keeps_its_error_and_the_others_get_captions(captioner, monkeypatch):
  service = CaptionService(captioner, buckets=(1, 4), window_s=0.05, warm=(Request(1, 12),))
  try:
    with pytest.raises(ValueError, match="expected uint8 pixels"):
      service.submit(np.zeros((5, 5, 3), np.uint8))
    real = Captioner.encode_pixels

    def encode(self, pixels, batch_size=None):   # the "bad image": all 255
      if (pixels.reshape(len(pixels), -1) == 255).all(1).any():
        raise RuntimeError("poisoned batch")
      return real(self, pixels, batch_size)

    monkeypatch.setattr(Captioner, "encode_pixels", encode)
    pixels = _photos(captioner, 3)
    pixels[1] = 255
    futures = [service.submit(p, Request(1, 12)) for p in pixels]
    assert futures[0].result(60).greedy.caption and futures[2].result(60).greedy.caption
    with pytest.raises(RuntimeError, match="poisoned"):
      futures[1].result(60)
  finally:
    service.close()


def test_a_full_queue_says_busy_at_once(captioner, monkeypatch):
  service = CaptionService(captioner, buckets=(1,), max_queue=2, warm=(Request(1, 12),))
  try:
    release, started = threading.Event(), threading.Event()
    real = Captioner.encode_pixels

    def slow(self, pixels, batch_size=None):
      started.set()
      release.wait(60)
      return real(self, pixels, batch_size)

    monkeypatch.setattr(Captioner, "encode_pixels", slow)
    pixels = _photos(captioner, 4)
    first = service.submit(pixels[0], Request(1, 12))
    assert started.wait(60)                       # the worker holds the first; two more fill the queue
    queued = [service.submit(p, Request(1, 12)) for p in pixels[1:3]]
    with pytest.raises(Busy, match="busy"):
      service.submit(pixels[3], Request(1, 12))
    release.set()
    assert all(f.result(60).greedy.caption for f in [first, *queued])
    assert service.snapshot()["rejected"] == 1
  finally:
    release.set()
    service.close()


def test_lru_keeps_the_most_recent():
  c = LRU(2)
  c.put("a", 1)
  c.put("b", 2)
  assert c.get("a") == 1          # a is now the most recent
  c.put("c", 3)
  assert c.get("b") is None and c.get("a") == 1 and c.get("c") == 3 and len(c) == 2
