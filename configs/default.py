"""Every knob a jaxcap training run has, with its default. The other configs import this and override a few.

    python train.py --config configs/default.py --config.data.data_dir=/path/to/flickr8k

Trains on Flickr8k: frozen EfficientNet-Lite0 features, Show-Attend-Tell decoder, 4 epochs. No figures of its
own: configs/flickr8k_lite0.py is this plus the deep output layer, and gives the expected results.

The ranges and choices below are checked before any work (`jaxcap/config_check.py`): a value outside them, a
field the run would ignore, or a dataset folder that is not there is one line naming the field.
"""
import os

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Seed of parameter init, dropout and the data order (>= 0).
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  # What to read: "flickr8k" (a Flickr8k folder, either layout), "karpathy" (a Karpathy caption_datasets JSON
  # plus its image folder: Flickr8k/Flickr30k/COCO) or "tfds:<name>" (a TFDS captioning dataset, e.g.
  # "tfds:coco_captions"). Read in one place, jaxcap/data/dataset.py.
  c.data.dataset = "flickr8k"
  # flickr8k: the folder; karpathy: the image folder the JSON's [filepath/]filename paths are relative to;
  # tfds and synthetic: unused (""). Default: the environment variable JAXCAP_FLICKR8K_DIR, else "".
  c.data.data_dir = os.environ.get("JAXCAP_FLICKR8K_DIR", "")
  # karpathy: the dataset_*.json ("" = the single dataset_*.json in data_dir).
  c.data.karpathy_json = ""
  # karpathy and tfds: put Karpathy's "restval" images in train (COCO: 82,783 + 30,504 = the usual 113,287).
  c.data.use_restval = True
  # Generate the synthetic shapes dataset (into synthetic_dir) instead of reading data_dir.
  c.data.synthetic = False
  # Where the synthetic dataset is written ("" = ~/.cache/jaxcap/synthetic-<n>-<size>).
  c.data.synthetic_dir = ""
  # Number of synthetic images (>= 8: dev and test get n // 8 each) and their side in pixels (>= 16).
  c.data.synthetic_num_images = 2000
  c.data.synthetic_size = 64
  # Where the prepared TFDS copy goes ("" = ~/.cache/jaxcap/tfds/...); for tfds:<name>, TFDS's data_dir
  # ("" = TFDS's default, ~/tensorflow_datasets).
  c.data.tfds_dir = ""
  # Tokens per caption including <start> and <end> (>= 3); longer captions are cut.
  c.data.max_len = 24
  # Vocabulary: words seen at least this many times in the train split (>= 1).
  c.data.min_count = 5
  # Where frozen-encoder features are cached ("" = ~/.cache/jaxcap/features).
  c.data.feature_cache_dir = ""

  c.model = ml_collections.ConfigDict()
  # Encoder: small_cnn | efficientnet_lite0..2 | resnet18..152 | resnet50_keras ...
  c.model.encoder = "efficientnet_lite0"
  # Converted ImageNet weights: "" (random init), "default" (~/.cache/jaxcap/weights/<encoder>.msgpack) or a path.
  c.model.pretrained = "default"
  # Input side for small_cnn (>= 16; pretrained encoders use their own size).
  c.model.image_size = 224
  # Input side of a pretrained encoder in pixels (0 = its own: EfficientNet-Lite0/1/2 224/240/260, ResNets 224;
  # else >= 32). Larger gives a finer grid (320: 10x10 instead of 7x7) from the same photos, upsampled.
  c.model.input_size = 0
  # Decoder: "attend" (Show-Attend-Tell soft attention) or "show_tell".
  c.model.decoder_mode = "attend"
  # Widths (>= 1).
  c.model.embed_dim = 512
  c.model.hidden_dim = 512
  c.model.attention_dim = 512
  # Dropout on the LSTM output (and attention context) before the vocabulary projection, in [0, 1).
  c.model.dropout = 0.5
  # Dropout on the word embeddings, in [0, 1).
  c.model.embed_dropout = 0.0
  # Xu et al.'s deep output layer (tanh(L [h; context] + E y_prev), embed_dim wide) before the vocabulary.
  c.model.deep_output = False
  # Attention recurrence's backward pass in training: "manual" (hand-written, keeps weight gradients out of the
  # time loop) or "autodiff" (nn.scan differentiated by JAX). The same function; only the speed differs.
  c.model.attention_backward = "manual"
  # Compute dtype: float32, or bfloat16 on accelerators (parameters and optimizer state stay float32).
  c.model.dtype = "float32"
  # Depthwise conv kernel: auto (shifted slices on CPU, library conv elsewhere) | shifted | conv.
  c.model.depthwise_impl = "auto"

  c.train = ml_collections.ConfigDict()
  # "cached": frozen encoder, features encoded once and cached; "finetune": end to end from images;
  # "self_critical": CIDEr-D-rewarded sampling on the cached features (start it from a cross-entropy run);
  # "top": the encoder's last train.top_stages stages train with the decoder, on the output of the layers below
  # them (the trunk), encoded once and cached (start it from a cross-entropy run; jaxcap/feeds/top.py).
  c.train.regime = "cached"
  # Start from this workdir's (or checkpoint directory's) weights instead of fresh ones ("" = fresh).
  c.train.init_from = ""
  # The dev metric that picks the checkpoint kept in best/: bleu4 or cider.
  c.train.select_metric = "bleu4"
  # Self-critical: captions sampled per image (the baseline is the mean reward of the others), temperature.
  c.train.scst_samples = 5
  c.train.scst_temperature = 1.0
  # Self-critical baseline: "others" (the mean reward of the image's other samples) or "greedy" (the reward of
  # its greedy caption: samples that beat what the model would say are pushed up, the rest down).
  c.train.scst_baseline = "others"
  # Global batch size (>= 1, divisible by the number of devices of all processes).
  c.train.batch_size = 64
  # Length of training in epochs over the train captions; num_steps > 0 overrides it (both >= 0, one > 0).
  c.train.num_epochs = 4
  c.train.num_steps = 0
  # AdamW peak learning rate (> 0), linear warmup steps (>= 0), cosine decay to lr * final_lr_fraction ([0, 1]);
  # weight decay >= 0.
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 100
  c.train.final_lr_fraction = 0.05
  # Length of the cosine in steps when longer than the run (0 = the run's length): the run takes the first steps
  # of a longer schedule, so it gives the same weights as the longer run up to its last step; for stopping
  # where a longer run peaked on dev, in less time.
  c.train.decay_steps = 0
  c.train.weight_decay = 1e-4
  # Gradient global-norm clipping threshold (> 0).
  c.train.grad_clip = 5.0
  # Label smoothing of the cross-entropy, in [0, 1) (0 = none).
  c.train.label_smoothing = 0.0
  # Weight of the doubly-stochastic attention penalty sum_n (1 - sum_t alpha_tn)^2 (attend mode; >= 0).
  c.train.attention_penalty = 1.0
  # Cached regime: where the train/dev feature grids are read from. "memory": loaded into host memory;
  # "stream": read from the on-disk store batch by batch (host memory: a few batches, whatever the dataset
  # size); "auto": memory when train + dev grids fit in feature_memory_gb, else stream (logged with the sizes).
  # Batches are the same either way, so a run may resume with the other choice.
  c.train.feature_store = "auto"
  # Host memory budget of the "auto" choices (feature_store, image_feed) in GB (0 = half the memory available
  # when training starts).
  c.train.feature_memory_gb = 0.0
  # Cached regime and the finetune regime's decoded feed: where each step's batch is gathered. "device": the
  # train grids (or decoded images), captions and lengths are put on the devices once (replicated where they fit
  # one device, else sharded over the data axis, each device drawing its share from its own shard) and each
  # step gathers its batch there, no per-step host work or copy;
  # an error with the sizes where they fit nowhere. "host": gathered on the host and copied every step (any
  # size). "auto": device where it fits, else host. Replicated gives the host feed's batches exactly (a run may
  # resume with either); sharded draws its own order. Logged with the sizes.
  c.train.feed_placement = "auto"
  # Memory per device the device feed may use in GB (0 = half of the device's free memory; CPU: half the
  # available host memory over the local devices).
  c.train.device_memory_gb = 0.0
  # Train steps per jitted call (>= 1; a lax.scan over the steps), so a fast device does not wait on Python
  # between steps. log_every, eval_every and checkpoint_every must be multiples of it.
  c.train.steps_per_dispatch = 1
  # The host-to-device transfer guard (`jax.transfer_guard` level) every dispatch after the first runs under:
  # "disallow_explicit" stops a run whose steady-state loop copies anything to the devices (the device-resident
  # feed copies nothing per step; a host-fed step copies its batch). "allow": no check.
  c.train.transfer_guard = "allow"
  # Sort captions by length inside chunks so short ones do not pay for padding (cached regime).
  c.train.length_bucketing = True
  # Cached and top regimes: 0 = batches of captions (length-bucketed); k > 0 = image-major batches, batch_size / k
  # images a step with k of each one's captions (the top regime then runs the encoder's top once per image).
  # batch_size must split into whole images on every device.
  c.train.captions_per_image = 0
  # Top regime: the encoder's last stages that train (EfficientNet-Lite: 1..7, the head with the last; ResNets:
  # 1..4); everything below is frozen and its output cached.
  c.train.top_stages = 2
  # Finetune and top regimes: encoder learning rate (>= 0). Finetune: the step from which the encoder trains (>= 0); its AdamW
  # starts there (step count, moments and warmup), as a fresh optimizer would.
  c.train.encoder_learning_rate = 1e-4
  c.train.finetune_from_step = 0
  # Finetune regime: random crop + brightness/contrast augmentation (no horizontal flip: it would swap "left" and
  # "right"). The decoded feed runs it on the devices, with saturation jitter too (jaxcap/augment.py).
  c.train.augment = False
  # Finetune regime's image feed. "decoded": every train image decoded and resized once into a uint8 array
  # cached on disk next to the features (N x S x S x 3 bytes; Flickr8k at 224: 0.84 GB), held on the devices
  # where it fits (train.feed_placement, train.device_memory_gb) else in host memory; batches and augmentation
  # are gathered and computed on the devices, no per-step decode. "stream": tf.data decodes and resizes every
  # image every epoch (any dataset size). "auto": decoded when the uint8 train images fit in
  # train.feature_memory_gb, else stream (logged with the sizes). The two draw different orders.
  c.train.image_feed = "auto"
  # Logging (>= 1), validation and checkpoint intervals (>= 0) in steps (0 = only at the end). A dev evaluation
  # that is a new best is also saved, whatever checkpoint_every says.
  c.train.log_every = 50
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  # Checkpoints kept besides the best-by-dev-BLEU-4 one (>= 1).
  c.train.keep_checkpoints = 2
  # Dev images used for validation (>= 0; 0 = all); greedy decoding length limit (>= 1).
  c.train.eval_num_images = 0
  c.train.decode_max_len = 20
  # At the end, evaluate the best-on-dev checkpoint on the test split (greedy BLEU).
  c.train.final_test_eval = True
  # Batch size of feature extraction and evaluation (>= 1).
  c.train.eval_batch_size = 64
  return c
