"""COCO (Karpathy split, TFDS coco_captions), pretrained EfficientNet-Lite0 frozen (feature cache), Show-Attend-Tell
decoder with the deep output layer. Meant for an accelerator (GPU or TPU): bf16 compute, batch 256.

    python -m jaxcap.pretrained convert efficientnet_lite0      # once (needs requirements-torch.txt)
    python train.py --config configs/coco_lite0.py [--config.data.tfds_dir=DIR]

Not trained here (neither COCO nor an accelerator was available), so there are no expected figures yet; the
settings are Flickr8k's recipe scaled to COCO's size, not tuned.

TFDS downloads and prepares coco_captions the first time (the COCO 2014 images, some 20 GB, into data.tfds_dir or
~/tensorflow_datasets). Train is Karpathy's train + restval (113,287 images, about 567k captions, so about 2,200
steps per epoch at batch 256), dev his 5,000 val images, test his 5,000 test images. The train features
(113,287 x 7x7x1280 float16) take 13.2 GB: with train.feature_store="auto" the trainer holds them in host memory
when train + dev fit train.feature_memory_gb (0: half the memory available at the start) and streams them from
the on-disk cache otherwise; the log line "feature store: ..." says which, with the sizes.

The same data from Karpathy's dataset_coco.json and the COCO image folders (data_dir holds train2014/ and
val2014/, the JSON's `filepath`s):
    --config.data.dataset=karpathy --config.data.data_dir=/data/coco --config.data.karpathy_json=/data/dataset_coco.json
"""
from configs import default


def get_config():
  c = default.get_config()
  c.data.dataset = "tfds:coco_captions"
  c.data.data_dir = ""  # TFDS reads data.tfds_dir
  c.data.use_restval = True  # 82,783 train + 30,504 restval images: the usual 113,287
  c.model.encoder = "efficientnet_lite0"
  c.model.pretrained = "default"
  c.model.deep_output = True
  c.model.dtype = "bfloat16"
  c.train.regime = "cached"
  c.train.batch_size = 256
  c.train.num_epochs = 8
  c.train.warmup_steps = 500
  c.train.log_every = 100
  c.train.eval_every = 2000
  c.train.checkpoint_every = 2000
  c.train.eval_batch_size = 256
  return c
