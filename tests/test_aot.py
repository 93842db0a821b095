"""`python -m jaxcap.aot`: the programs a user runs compiled for a TPU pod on this CPU (the real TPU compiler,
compile-only devices). The compiling tests are skipped, with the reason, when libtpu is not installed
(requirements-tpu-aot.txt says how; CI installs it)."""
import os
import subprocess
import sys

import jax
import pytest

from configs import quickstart
from jaxcap.aot import chips, compile_only, programs, report

# The suite's persistent compilation cache (conftest) cannot load executables for compile-only devices.
pytestmark = pytest.mark.filterwarnings("ignore:Error reading persistent compilation cache")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_libtpu = pytest.mark.skipif(compile_only.libtpu_path() is None,
                                  reason=f"libtpu not installed: {compile_only.INSTALL}")


def test_shape_bytes_and_collectives_read_hlo_text():
  assert report.shape_bytes("f32[512,2048]{1,0}") == 512 * 2048 * 4
  assert report.shape_bytes("(bf16[3,4]{1,0}, s32[])") == 3 * 4 * 2 + 4
  hlo = "\n".join([
      "  %all-reduce.3 = f32[1024]{0} all-reduce(f32[1024]{0} %p), replica_groups={{0,1,2,3}}, to_apply=%add",
      "  %ag = (bf16[8]{0}, bf16[32]{0}) all-gather-start(bf16[8]{0} %x), dimensions={0}",
      "  %agd = bf16[32]{0} all-gather-done((bf16[8]{0}, bf16[32]{0}) %ag)",
      '  %cb = f32[4]{0} custom-call(f32[4]{0} %y), custom_call_target="xla_python_cpu_callback"',
      "  %ar2 = (f32[256,512]{1,0:T(8,128)}, bf16[8]{0:T(512)(2,1)}) all-reduce-start(f32[256,512]{1,0} %a, "
      "bf16[8] %b)",
      "  %ar2d = (f32[256,512]{1,0:T(8,128)}, bf16[8]{0}) all-reduce-done((f32[256,512]{1,0}, bf16[8]{0}) %ar2)",
      "  ROOT %t = (f32[1024]{0}) tuple(f32[1024]{0} %all-reduce.3)"])
  assert report.collectives(hlo) == {
      "all-reduce": {"ops": 2, "bytes": 4096 + 256 * 512 * 4 + 16, "elements": 1024 + 256 * 512 + 8},
      "all-gather": {"ops": 1, "bytes": 64, "elements": 32}}
  assert report.host_transfers(hlo) == ["custom-call xla_python_cpu_callback x1"]


def test_chip_of_names_the_known_chips():
  assert chips.chip_of("v5e:2x2") is chips.CHIPS["v5e"]
  assert chips.chip_of("v5p:2x2x1").hbm_bytes == 95 * 2**30
  with pytest.raises(ValueError, match="unknown chip 'v9'"):
    chips.chip_of("v9:2x2")


def test_cpu_runs_do_not_load_libtpu():
  """libtpu installed as requirements-tpu-aot.txt says (in a folder JAX does not search) leaves ordinary runs
  alone: no TPU probing, nothing on stderr about TPUs."""
  code = "import jaxcap, jax; print(jax.devices()[0].platform)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                       env={k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "TPU_LIBRARY_PATH")})
  assert out.stdout.strip() == "cpu"
  assert "TPU" not in out.stderr and "libtpu" not in out.stderr, out.stderr


def test_missing_libtpu_is_one_line(monkeypatch, tmp_path):
  monkeypatch.setenv(compile_only.LIBTPU_DIR_VARIABLE, str(tmp_path))
  monkeypatch.delenv("TPU_LIBRARY_PATH", raising=False)
  if compile_only.libtpu_path() is not None:
    pytest.skip("libtpu is importable from site-packages here")
  with pytest.raises(compile_only.AotError, match="requirements-tpu-aot.txt"):
    compile_only.devices("v5e:2x2")


def _config(regime: str):
  c = quickstart.get_config()
  c.train.regime = regime
  if regime == "self_critical":
    c.train.scst_samples = 2
  if regime == "top":  # image-major: 4 images of 5 captions, one per chip
    c.train.captions_per_image, c.train.batch_size = 5, 20
  return c


@pytest.mark.slow
@needs_libtpu
@pytest.mark.parametrize("regime", ["cached", "finetune", "self_critical", "top"])
def test_every_program_compiles_for_v5e_2x2_and_fits(regime):
  """The tiny config's programs on 4 v5e chips: every one fits; the cached and fine-tune steps move nothing to or
  from the host and their one collective is the gradient all-reduce (the trainable parameters' bytes, plus the
  step's scalar metrics); self-critical's reward is the one host callback."""
  config = _config(regime)
  rows = compile_only.run(config, ["v5e:2x2"], ["train", "validate", "beam"], programs.Sizes(beam_images=64),
                          log=lambda *a: None)
  assert [r["program"] for r in rows] == [f"train ({regime}, K=1)", "validate (greedy)", "beam search (K=3)"]
  for r in rows:
    assert r["fits"] and 0 < r["memory_bytes"] < r["hbm_bytes"], r
    assert r["flops_per_step"] > 0 and r["bytes_per_step"] > 0, r
  train = rows[0]
  build = programs.Build(config, compile_only.devices("v5e:2x2"), programs.Sizes(), chips.CHIPS["v5e"].hbm_bytes)
  params = build.setup.state["params"]
  trainable = sum(x.size for g in build.feed_class.trainable_for(config)  # groups, or "encoder/<module>" (top)
                  for x in jax.tree.leaves(params[g.partition("/")[0]].get(g.partition("/")[2], None)
                                           if "/" in g else params[g]))
  if regime == "self_critical":
    assert train["host_transfers"], "the reward is a host callback"
  else:
    assert train["host_transfers"] == [], train["host_transfers"]
    assert set(train["collectives"]) == {"all-reduce"}, train["collectives"]
    # A gradient per trainable parameter (in f32 or the backward's bf16), the loss and metric scalars, and in
    # fine-tuning the encoder's batch-norm statistics over the global batch.
    reduced = train["collectives"]["all-reduce"]["elements"]
    batch_norm = 16 * 1024 if regime == "finetune" else 0
    assert trainable <= reduced <= trainable + 64 + batch_norm, (reduced, trainable)
