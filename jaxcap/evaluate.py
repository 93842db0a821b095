"""Evaluate a checkpoint on a split: BLEU-1..4 (nltk), METEOR, ROUGE-L, CIDEr-D (pycocoevalcap).

    python -m jaxcap.evaluate --checkpoint workdirs/flickr8k_lite0 --split test --beam 3
    python -m jaxcap.evaluate --checkpoint workdirs/flickr8k_lite0 --split dev --beam 3 --alphas 0 0.4 0.8 1.2
    python -m jaxcap.evaluate --checkpoint workdirs/seed0 --checkpoint workdirs/seed1 --split dev --beam 3
    python -m jaxcap.evaluate --checkpoint workdirs/flickr8k_lite0 --split test --beam 1 3 5

Images go through the same pipeline as training (decode, resize) and the checkpoint's encoder. Writes a JSONL
of per-image predictions (caption, beams, references, per-image BLEU-4) and prints a table; the last line of
stdout is one JSON object with the metrics. Without --data_dir the dataset named in the checkpoint's config
is used (whatever its data.dataset: Flickr8k, a Karpathy JSON, tfds:<name>). With several --alphas, each
length penalty (and with several --beam, each beam size) is evaluated on the same encoded images (tune on
dev, report on test). When the first checkpoint's workdir has a consensus index (`python -m jaxcap.consensus`),
beam search's captions are re-ranked by it (--rerank_weights: the weights to try, 0 = off); a dev or test split
sharing images with the index's train images is refused (their own references would rank them). Several
--checkpoint make an ensemble (same vocabulary, any encoders; every step scores words by the mean of the members'
log-probabilities): images are encoded once per distinct encoder, and the dataset is the first checkpoint's.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time


def _positive(text: str) -> int:
  if not text.isdigit() or int(text) < 1:
    raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
  return int(text)


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m jaxcap.evaluate", description=__doc__.split("\n")[0])
  p.add_argument("--checkpoint", required=True, action="append",
                 help="workdir (its best checkpoint) or a step directory; repeat it for an ensemble")
  p.add_argument("--data_dir", default=None, help="dataset folder (default: the one in the checkpoint's config)")
  p.add_argument("--split", default="test", choices=("train", "dev", "test"))
  p.add_argument("--beam", type=int, nargs="+", default=[3], help="beam size(s); 1 = greedy")
  p.add_argument("--alphas", type=float, nargs="+", default=[1.0],
                 help="length penalty exponent(s); 1.0 was best on Flickr8k dev")
  p.add_argument("--rerank_weights", type=float, nargs="+", default=[None],
                 help="consensus reranking weight(s) when the first checkpoint's workdir has a consensus index "
                 "(`python -m jaxcap.consensus`); 0 = off; default: the index's")
  p.add_argument("--rerank_k", type=_positive, default=None,
                 help="neighbours of consensus reranking (default: the index's)")
  p.add_argument("--max_len", type=int, default=20)
  p.add_argument("--batch_size", type=int, default=50)
  p.add_argument("--limit", type=int, default=0, help="evaluate the first N images only")
  p.add_argument("--out", default=None, help="per-image JSONL of the first setting (beam, alpha, rerank weight) "
                 "(default: <checkpoint>/eval_<split>_beam<k>.jsonl; an ensemble's goes to the first checkpoint, "
                 "ending _ensemble<n>.jsonl)")
  p.add_argument("--no_meteor", action="store_true",
                 help="skip the Java metrics: METEOR (the slowest) and coco-caption's PTB-tokenized BLEU-4")
  return p


def main(argv=None) -> int:
  from jaxcap import allocator, logs
  from jaxcap.checkpoint import CheckpointError
  from jaxcap.consensus import ConsensusError
  from jaxcap.data import DataError
  from jaxcap.data.images import ImageError

  logs.install()
  allocator.for_backend()  # glibc malloc keeps freed step buffers for reuse (CPU only)
  try:
    summary = run(parser().parse_args(argv))
  except (CheckpointError, ConsensusError, DataError, ImageError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(summary))
  return 0


def run(a: argparse.Namespace, log=lambda *x: print(*x, file=sys.stderr)) -> dict:
  """The evaluation `a` (parsed flags, `parser()`) describes; returns the summary main prints."""
  from jaxcap import consensus, evaluator, feature_cache, metrics
  from jaxcap.data import dataset
  from jaxcap.inference import Captioner

  cap = Captioner.load(a.checkpoint, warn=log)
  data = cap.config.data.copy_and_resolve_references()
  if a.data_dir:  # the same kind of dataset, in another folder (prepared in the default place)
    data.data_dir, data.tfds_dir, data.synthetic = a.data_dir, "", False
  builder = dataset.prepare(data)
  n = builder.info.splits[a.split].num_examples
  n = min(n, a.limit) if a.limit else n
  source = " + ".join(cap.sources)
  log(f"{source}: {a.split} split of {dataset.describe(data)}, {n} images, beam {a.beam}")

  t0 = time.time()
  # Raw images through the training pipeline's decode and resize and the checkpoint's encoder: what a user of
  # the Captioner gets.
  inputs = feature_cache.encode_split(cap.encode, builder, a.split, cap.preprocessing, a.batch_size, n,
                                      progress=True)
  encode_s = time.time() - t0
  results = []
  rr = cap.reranker
  if rr is None and a.rerank_weights != [None]:
    log(f"no consensus index in the workdir of {cap.source} (`python -m jaxcap.consensus`): --rerank_weights ignored")
  if rr is not None and a.split == "train":
    log("warning: a train image is its own nearest train image, so re-ranked train figures are optimistic")
  if rr is not None:
    log(f"beams re-ranked by consensus with the nearest train images ({rr.index.encoder}, "
        f"k={rr.resolve(evaluator.Settings(rerank_k=a.rerank_k))[0]}); --rerank_weights 0 turns it off")
  settings_to_try = [(beam, alpha, weight) for beam, alpha in itertools.product(a.beam, a.alphas)
                     for weight in (a.rerank_weights if rr and beam > 1 else [None])]  # greedy: nothing to rank
  if rr is not None and a.split != "train" and any(
      beam > 1 and rr.resolve(evaluator.Settings(rerank_k=a.rerank_k, rerank_weight=w))[1] > 0
      for beam, _, w in settings_to_try):
    # A dev or test image among the index's train images would be ranked by its own references (train: the
    # warning above). Checked on the names just encoded, before anything is decoded.
    consensus.check_disjoint(rr.index, inputs.names, a.split)
  for beam, alpha, weight in settings_to_try:
    t1 = time.time()
    settings = evaluator.Settings(beam, a.max_len, alpha, a.batch_size, a.rerank_k, weight)
    ev = evaluator.evaluate(cap.decoders, cap.decoder_params, inputs, settings, cap.vocab,
                            scorer=lambda h, r: metrics.all_metrics(h, r, meteor=not a.no_meteor), rerank=rr)
    rerank = rr.resolve(settings)[1] if rr and beam > 1 else 0.0
    results.append({"beam": beam, "alpha": alpha, "rerank": rerank, **ev.metrics, "decode_s": time.time() - t1,
                    "hyps": ev.captions, "beams": [[{"caption": c, "score": s} for c, s in b] for b in ev.beams]})

  best = results[0]
  ensemble = f"_ensemble{len(cap.members)}" if len(cap.members) > 1 else ""
  out = a.out or os.path.join(os.path.abspath(a.checkpoint[0]),
                              f"eval_{a.split}_beam{best['beam']}{ensemble}.jsonl")
  with open(out, "w") as f:
    for name, h, b, r in zip(inputs.names, best["hyps"], best["beams"], inputs.references):
      f.write(json.dumps({"image": name, "caption": h, "beams": b, "references": r,
                          "bleu4": metrics.sentence_bleu4(h, r)}) + "\n")
  cols = ["bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider", "bleu4_coco", "dangling"]
  log(f"\n{'beam':>4} {'alpha':>6} {'rerank':>6} " + " ".join(f"{c:>8}" for c in cols) + f" {'decode s':>9}")
  for r in results:
    log(f"{r['beam']:4d} {r['alpha']:6.2f} {r['rerank']:6.2f} "
        + " ".join(f"{r[c]:8.4f}" if r[c] is not None else f"{'-':>8}" for c in cols) + f" {r['decode_s']:9.1f}")
  log(f"per-image predictions of beam {best['beam']}, alpha={best['alpha']:g}, rerank={best['rerank']:g}: {out}")
  summary = {"checkpoint": source, "split": a.split, "images": n, "max_len": a.max_len,
             "encode_s": encode_s, "total_s": time.time() - t0,
             "results": [{k: v for k, v in r.items() if k not in ("hyps", "beams")} for r in results]}
  if len(results) == 1:
    summary.update({k: v for k, v in summary.pop("results")[0].items()})
  return summary


if __name__ == "__main__":
  sys.exit(main())
