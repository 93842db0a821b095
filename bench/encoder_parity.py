"""Logit parity of the Flax EfficientNet-Lite0/1/2 with efficientnet-lite-pytorch, and the weights' normalization.

    python -m bench.encoder_parity --data_dir /path/to/flickr8k [--num_images 64] [--encoder efficientnet_lite1]

Both models with the real ImageNet weights, on real Flickr8k photos. Parity: max |logit difference| and
top-5 agreement over the photos. Normalization: for photos whose captions say "dog" (at least 3 of 5), the
share whose top-1 ImageNet class is a dog breed (classes 151-268) and the mean probability on dog breeds,
under each candidate normalization. Needs requirements-torch.txt. Prints one JSON object.
"""
import argparse
import os

import numpy as np

from bench.common import emit

NORMALIZATIONS = {"(x-127)/128": ((127,) * 3, (128,) * 3),
                  "imagenet mean/std": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
                  "x/255": ((0,) * 3, (255,) * 3)}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--data_dir", default=os.environ.get("JAXCAP_FLICKR8K_DIR"),
                 help="the Flickr8k folder (default: $JAXCAP_FLICKR8K_DIR)")
  p.add_argument("--num_images", type=int, default=64)
  p.add_argument("--encoder", default="efficientnet_lite0", choices=("efficientnet_lite0", "efficientnet_lite1",
                                                                      "efficientnet_lite2"))
  a = p.parse_args()
  if not a.data_dir:
    p.error("--data_dir (or $JAXCAP_FLICKR8K_DIR): the Flickr8k folder")
  import jax
  import torch
  from efficientnet_lite_pytorch import EfficientNet
  from PIL import Image

  from jaxcap import pretrained
  from jaxcap.data import flickr8k
  from jaxcap.models import encoders

  src = flickr8k.scan(a.data_dir, check_images=False)
  names = src.splits["test"][: a.num_images]
  enc = encoders.make_encoder(a.encoder, num_classes=1000)
  size = enc.preprocessing.size
  load = lambda n: np.asarray(Image.open(os.path.join(src.images_dir, n)).convert("RGB").resize((size, size)))  # noqa
  imgs = np.stack([load(n) for n in names])
  out = pretrained.convert(a.encoder, out=f"/tmp/jaxcap_{a.encoder}_parity.msgpack")
  variables = pretrained.load(out)
  ref = EfficientNet.from_pretrained(a.encoder.replace("_", "-"), weights_path=pretrained.lite_package_path(a.encoder)).eval()
  flax_logits = np.concatenate([np.asarray(jax.jit(lambda x: enc.apply(variables, x)[2])(imgs[i:i + 16]))
                                for i in range(0, len(imgs), 16)])
  with torch.no_grad():
    torch_logits = ref(torch.tensor((imgs.astype(np.float32) - 127) / 128).permute(0, 3, 1, 2)).numpy()
  top5 = lambda l: np.argsort(-l, axis=1)[:, :5]  # noqa: E731
  parity = {"images": len(imgs), "max_abs_logit_diff": float(np.abs(flax_logits - torch_logits).max()),
            "top5_identical_images": int((top5(flax_logits) == top5(torch_logits)).all(1).sum()),
            "top1_identical_images": int((flax_logits.argmax(1) == torch_logits.argmax(1)).sum())}

  dog_names = [n for n in src.splits["test"] if sum("dog" in c.lower().split() for c in src.captions[n]) >= 3]
  dog_names = dog_names[:100]
  dogs = np.stack([load(n) for n in dog_names]).astype(np.float32)
  share, mass = {}, {}
  for label, (mean, std) in NORMALIZATIONS.items():
    with torch.no_grad():
      x = torch.tensor((dogs - np.array(mean, np.float32)) / np.array(std, np.float32)).permute(0, 3, 1, 2)
      probs = torch.softmax(ref(x), -1).numpy()
    top1 = probs.argmax(1)
    share[label] = float(((top1 >= 151) & (top1 <= 268)).mean())
    mass[label] = float(probs[:, 151:269].sum(1).mean())
  emit({"bench": "encoder_parity", "encoder": a.encoder, "image_size": size, "parity": parity,
        "dog_photos": len(dog_names), "dog_photos_top1_dog_breed_share": share,
        "dog_photos_mean_dog_probability": mass})


if __name__ == "__main__":
  main()
