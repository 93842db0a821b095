"""The Flax captioning model: encoder + decoder as one module (`CaptionModel`); `make_model` builds it from a
config. (The inference class that loads checkpoints is `jaxcap.inference.Captioner`.)"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxcap.models import encoders
from jaxcap.models.decoder import Decoder


class CaptionModel(nn.Module):
  """Variables: params/{encoder,decoder}, batch_stats/encoder."""
  encoder: nn.Module
  decoder: Decoder

  def __call__(self, images, tokens, train: bool = False, train_encoder: bool = False):
    grid = self.encode(images, train_encoder)
    if not train_encoder:
      grid = jax.lax.stop_gradient(grid)
    return self.decoder(grid, tokens, train=train)

  def encode(self, images, train_encoder: bool = False):
    return self.encoder(images, train=train_encoder)[0]

  def encode_top(self, trunk, start: int):
    """The grid from a trunk (the output of the encoder's layers below `start`): the layers from `start` on, in
    inference mode (frozen BatchNorm statistics, as fine-tuning with small batches does)."""
    return self.encoder(trunk, train=False, span=(start, self.encoder.num_layers))


def encode_fn(model: CaptionModel):
  """jitted (variables {params, batch_stats}, images uint8 [B, S, S, 3]) -> grid [B, h, w, C], eval mode."""
  return jax.jit(lambda v, x: model.apply(v, x, method=CaptionModel.encode))


def dtype_of(name: str):
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def make_model(model_config, vocab_size: int) -> CaptionModel:
  dtype = dtype_of(model_config.dtype)
  enc = encoders.make_encoder(model_config.encoder, dtype=dtype, image_size=model_config.image_size,
                              input_size=model_config.get("input_size", 0),
                              depthwise_impl=model_config.get("depthwise_impl", "auto"))
  dec = Decoder(vocab_size=vocab_size, mode=model_config.decoder_mode, embed_dim=model_config.embed_dim,
                hidden_dim=model_config.hidden_dim, attention_dim=model_config.attention_dim,
                dropout=model_config.dropout, embed_dropout=model_config.get("embed_dropout", 0.0),
                deep_output=model_config.get("deep_output", False),
                attention_backward=model_config.get("attention_backward", "manual"), dtype=dtype)
  return CaptionModel(enc, dec)
