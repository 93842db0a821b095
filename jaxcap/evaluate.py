"""Evaluate a checkpoint on a split: BLEU-1..4 (nltk), METEOR, ROUGE-L, CIDEr-D (pycocoevalcap).

    python -m jaxcap.evaluate --checkpoint workdirs/flickr8k_lite0 --split test --beam 3
    python -m jaxcap.evaluate --checkpoint workdirs/flickr8k_lite0 --split dev --beam 3 --alphas 0 0.4 0.8 1.2

Images go through the same pipeline as training (decode, resize) and the checkpoint's encoder. Writes a JSONL
of per-image predictions (caption, beams, references, per-image BLEU-4) and prints a table; the last line of
stdout is one JSON object with the metrics. Without --data_dir the dataset named in the checkpoint's config
is used. With several --alphas, each length penalty is evaluated on the same encoded images (tune on dev,
report on test).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from tqdm import tqdm


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m jaxcap.evaluate", description=__doc__.split("\n")[0])
  p.add_argument("--checkpoint", required=True, help="workdir (its best checkpoint) or a step directory")
  p.add_argument("--data_dir", default=None, help="dataset folder (default: the one in the checkpoint's config)")
  p.add_argument("--split", default="test", choices=("train", "dev", "test"))
  p.add_argument("--beam", type=int, default=3, help="beam size; 1 = greedy")
  p.add_argument("--alphas", type=float, nargs="+", default=[1.0], help="length penalty exponent(s); 1.0 was best on Flickr8k dev")
  p.add_argument("--max_len", type=int, default=20)
  p.add_argument("--batch_size", type=int, default=50)
  p.add_argument("--limit", type=int, default=0, help="evaluate the first N images only")
  p.add_argument("--out", default=None, help="per-image JSONL (default: <checkpoint>/eval_<split>_beam<k>.jsonl)")
  p.add_argument("--no_meteor", action="store_true", help="skip METEOR (the slowest metric; needs Java)")
  a = p.parse_args(argv)

  import jax.numpy as jnp

  import jaxcap.data as data_lib
  from jaxcap import decode, metrics
  from jaxcap.data import batching, flickr8k, pipeline
  from jaxcap.data.images import ImageError
  from jaxcap.inference import Captioner, CheckpointError

  try:
    cap = Captioner.load(a.checkpoint)
    data_dir = a.data_dir or data_lib.resolve_data_dir(cap.config.data)
    builder = flickr8k.prepare(data_dir, (cap.config.data.tfds_dir or None) if not a.data_dir else None)
  except (CheckpointError, flickr8k.DataError, ImageError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  log = lambda *x: print(*x, file=sys.stderr)  # noqa: E731
  n = builder.info.splits[a.split].num_examples
  n = min(n, a.limit) if a.limit else n
  log(f"{cap.source}: {a.split} split of {data_dir}, {n} images, beam {a.beam}")

  t0 = time.time()
  grids, names, refs = [], [], []
  for batch in tqdm(pipeline.eval_batches(builder, split=a.split, batch_size=a.batch_size,
                                          preprocessing=cap.preprocessing), total=-(-n // a.batch_size),
                    desc="encode", unit="batch"):
    k = int(batch["valid"].sum())
    grids.append(np.asarray(cap.encode(batch["image"]))[:k])
    names += [f.decode() for f in batch["filename"][:k]]
    refs += pipeline.references(batch)
    if len(names) >= n:
      break
  grids, names, refs = np.concatenate(grids)[:n], names[:n], refs[:n]
  encode_s = time.time() - t0

  dparams = cap.variables["params"]["decoder"]
  results = []
  for alpha in a.alphas:
    t1 = time.time()
    hyps, beams = [], []
    for i in tqdm(range(0, n, a.batch_size), desc=f"decode alpha={alpha:g}", unit="batch"):
      g = grids[i:i + a.batch_size]
      k = len(g)
      g = batching.pad_rows(g, a.batch_size)
      if a.beam <= 1:
        toks, _ = decode.greedy(cap.model.decoder, dparams, jnp.asarray(g), a.max_len)
        toks = np.asarray(toks)[:k, None]
        scores = np.zeros(toks.shape[:2])
      else:
        toks, scores, _, _ = decode.beam_search(cap.model.decoder, dparams, jnp.asarray(g), a.beam, a.max_len, alpha)
        toks, scores = np.asarray(toks)[:k], np.asarray(scores)[:k]
      for row, sc in zip(toks, scores):
        caps = [cap.vocab.decode(t) for t in row]
        hyps.append(caps[0])
        beams.append([{"caption": c, "score": float(s)} for c, s in zip(caps, sc)])
    decode_s = time.time() - t1
    m = metrics.all_metrics(hyps, refs, meteor=not a.no_meteor)
    results.append({"alpha": alpha, **m, "decode_s": decode_s, "hyps": hyps, "beams": beams})

  best = results[0]
  out = a.out or os.path.join(os.path.abspath(a.checkpoint), f"eval_{a.split}_beam{a.beam}.jsonl")
  with open(out, "w") as f:
    for name, h, b, r in zip(names, best["hyps"], best["beams"], refs):
      f.write(json.dumps({"image": name, "caption": h, "beams": b, "references": r,
                          "bleu4": metrics.sentence_bleu4(h, r)}) + "\n")
  cols = ["bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider"]
  log(f"\n{'alpha':>6} " + " ".join(f"{c:>8}" for c in cols) + f" {'decode s':>9}")
  for r in results:
    log(f"{r['alpha']:6.2f} " + " ".join(f"{r[c]:8.4f}" if r[c] is not None else f"{'-':>8}" for c in cols)
        + f" {r['decode_s']:9.1f}")
  log(f"per-image predictions of alpha={best['alpha']:g}: {out}")
  summary = {"checkpoint": cap.source, "split": a.split, "images": n, "beam": a.beam, "max_len": a.max_len,
             "encode_s": encode_s, "total_s": time.time() - t0,
             "results": [{k: v for k, v in r.items() if k not in ("hyps", "beams")} for r in results]}
  if len(results) == 1:
    summary.update({k: v for k, v in summary.pop("results")[0].items()})
  print(json.dumps(summary))
  return 0


if __name__ == "__main__":
  sys.exit(main())
