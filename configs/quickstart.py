"""Quickstart: synthetic shapes dataset, tiny model trained end to end; what `python train.py` runs.

    python train.py            # = python train.py --config configs/quickstart.py --workdir workdirs/quickstart

Expect test greedy BLEU-4 about 0.98 on the synthetic test split (CI fails below 0.9), in about 2 minutes on a
2-core CPU, data generation included; the same with --config.model.dtype=bfloat16.
"""
from configs import default


def get_config():
  c = default.get_config()
  c.data.synthetic = True
  c.data.data_dir = ""  # generated into data.synthetic_dir: no folder to read
  c.data.synthetic_num_images = 2000
  c.data.synthetic_size = 64
  c.data.max_len = 12
  c.data.min_count = 1
  c.model.encoder = "small_cnn"
  c.model.pretrained = ""
  c.model.image_size = 64
  c.model.embed_dim = 64
  c.model.hidden_dim = 128
  c.model.attention_dim = 64
  c.model.dropout = 0.1
  c.train.regime = "finetune"
  c.train.batch_size = 32
  c.train.num_epochs = 0
  c.train.num_steps = 1500
  c.train.learning_rate = 3e-3
  c.train.encoder_learning_rate = 3e-3
  c.train.warmup_steps = 50
  c.train.attention_penalty = 0.1
  c.train.log_every = 50
  c.train.eval_every = 500
  c.train.checkpoint_every = 250
  c.train.decode_max_len = 12
  return c
