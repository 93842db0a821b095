"""Flickr8k, ImageNet ResNet-50 (torchvision weights) fine-tuned end to end: meant for GPUs and TPUs.

    python -m jaxcap.pretrained convert resnet50 --source resnet50-11ad3fa6.pth   # torchvision checkpoint
    python train.py --config configs/flickr8k_resnet50.py --config.data.data_dir=/path/to/flickr8k

Not trained here (no accelerator was available), so there are no expected figures for it yet. The encoder stays
frozen for the first 3,000 steps, then trains with its own, lower learning rate; bf16 compute, f32 parameters
and optimizer state. The folder: --config.data.data_dir or $JAXCAP_FLICKR8K_DIR.
"""
from configs import default


def get_config():
  c = default.get_config()
  c.model.encoder = "resnet50"
  c.model.pretrained = "default"
  c.model.dtype = "bfloat16"
  c.train.regime = "finetune"
  c.train.batch_size = 64
  c.train.num_epochs = 0
  c.train.num_steps = 12000
  c.train.learning_rate = 4e-4
  c.train.encoder_learning_rate = 1e-4
  c.train.finetune_from_step = 3000
  c.train.augment = True
  c.train.eval_every = 1000
  c.train.checkpoint_every = 1000
  return c
