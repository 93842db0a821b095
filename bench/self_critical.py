"""Where a self-critical step's time goes, on the real Flickr8k features from a real cross-entropy checkpoint:
the whole jitted step (sampling, the CIDEr-D reward called back on the host, the teacher-forced policy
gradient, the optimizer) and, inside it, the reward's host time; plus sampling alone.

    python -m bench.self_critical --init_from workdirs/flickr8k_lite0 [--data_dir /path/to/flickr8k] \
        [--steps 5] [--batch_size 64] [--samples 5]

The trainer's own pieces (`train_lib.load_data`, `feeds.make_feed`, `train_state.build/make_train_step`), so the
figures are the training run's. Prints one JSON object: seconds per step (median of --steps after one untimed
compile step), the reward's share of it, and sampling's.
"""
import argparse
import os
import statistics
import time


from bench.common import emit, machine, timeit


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--init_from", required=True, help="a cross-entropy workdir or checkpoint")
  p.add_argument("--data_dir", default=os.environ.get("JAXCAP_FLICKR8K_DIR"),
                 help="the Flickr8k folder (default: $JAXCAP_FLICKR8K_DIR)")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--samples", type=int, default=5)
  p.add_argument("--max_len", type=int, default=20)
  a = p.parse_args()
  if not a.data_dir:
    p.error("--data_dir (or $JAXCAP_FLICKR8K_DIR): the Flickr8k folder")

  import jax

  from configs import flickr8k_lite0
  from jaxcap import checkpoint, decode, feeds, objectives, train_lib, train_state

  _, meta, _ = checkpoint.load(a.init_from)
  config = flickr8k_lite0.get_config()
  config.model.update(meta["config"]["model"])  # the checkpoint's decoder
  config.data.data_dir, config.train.regime, config.train.init_from = a.data_dir, "self_critical", a.init_from
  config.train.batch_size, config.train.scst_samples = a.batch_size, a.samples
  config.train.decode_max_len, config.train.learning_rate, config.train.warmup_steps = a.max_len, 5e-5, 0

  builder, vocab, train, dev = train_lib.load_data(config, "/nonexistent", verbose=False)
  model, variables = train_state.init_model(config, len(vocab), vocab.tokens)
  feed = feeds.make_feed(config, builder, model, variables, vocab, train, dev, log=lambda *x: None, verbose=False)
  reward = objectives.CiderReward(vocab, train)
  reward_s = []

  def timed_reward(tokens, index):
    t = time.perf_counter()
    r = reward(tokens, index)
    reward_s.append(time.perf_counter() - t)
    return r

  objective = objectives.self_critical(config, timed_reward)
  setup = train_state.build(config, model, variables, 1000, feed.trainable)
  step = jax.jit(train_state.make_train_step(setup, objective), donate_argnums=0)
  state = jax.device_put(setup.state)
  batches = feed.batches(0, a.steps + 1)
  step_s = []
  for i, batch in enumerate(batches):
    t = time.perf_counter()
    state, m = step(state, batch)
    float(m["loss"])
    step_s.append(time.perf_counter() - t)
  timed, rewards = step_s[1:], reward_s[1:]

  sample = jax.jit(lambda params, grid, rng: decode.sample(model.decoder, params, grid, rng, a.samples, a.max_len,
                                                           1.0)[0])
  grid, key = jax.device_put(batch["grid"]), jax.random.PRNGKey(0)
  sampling = timeit(lambda: sample(state["params"]["decoder"], grid, key).block_until_ready(), a.steps)

  med = statistics.median(timed)
  emit({"bench": "self_critical", "machine": machine(), "batch_images": a.batch_size, "samples": a.samples,
        "captions_per_step": a.batch_size * a.samples, "step_median_s": med, "step_min_s": min(timed),
        "step_max_s": max(timed), "compile_step_s": step_s[0], "reward_median_s": statistics.median(rewards),
        "reward_share": statistics.median(rewards) / med, "sample_median_s": sampling["median_s"],
        "sample_share": sampling["median_s"] / med, "last_mean_reward": float(m["reward"])})


if __name__ == "__main__":
  main()
