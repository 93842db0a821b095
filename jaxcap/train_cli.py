"""The training command (`python train.py`, or `jaxcap-train` once installed): flags in, `train_and_evaluate` out.

    jaxcap-train                                       # quickstart: synthetic data, tiny model
    jaxcap-train --config configs/flickr8k_lite0.py --workdir workdirs/lite0 --config.data.data_dir=DIR

Running the same command again resumes from the latest checkpoint in --workdir. The last line of stdout is one
JSON object with the results; an error a user can fix is one line on stderr and exit code 2.
"""
import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from jaxcap.process import default_workdir, error_line, exit_process

import configs

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", os.path.join(os.path.dirname(configs.__file__), "quickstart.py"),
                                "Config file (a .py with get_config()); fields overridable as --config.FIELD=v")
flags.DEFINE_string("workdir", None, "Checkpoints, vocabulary, config and metrics go here "
                    "(default: workdirs/<config name>)")
flags.DEFINE_bool("distributed", False, "Multi-host: call jax.distributed.initialize(), which finds its peers "
                  "from the cluster environment (Cloud TPU, SLURM, ...)")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index")
flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0")


def main(argv) -> int:
  del argv
  import jax
  from absl import logging

  logging.set_verbosity(logging.WARNING)  # Orbax logs every save step at INFO

  if FLAGS.distributed or FLAGS.coordinator_address or FLAGS.num_processes:
    # Also starts JAX's preemption service, which the trainer uses to agree on a stop step.
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  from jaxcap import allocator, logs, train_lib

  logs.install()  # Orbax's errors reach the user as one line below
  allocator.for_backend()  # glibc malloc keeps freed step buffers for reuse (CPU only)
  workdir = FLAGS.workdir or default_workdir(FLAGS["config"].config_filename)
  try:
    result = train_lib.train_and_evaluate(FLAGS.config, workdir)
  except Exception as e:  # noqa: BLE001  (one line for what the user can fix; anything else raises)
    if (line := error_line(e, workdir)) is None:
      raise
    print(line, file=sys.stderr)
    return 2
  except KeyboardInterrupt:  # before training started (then Ctrl-C saves and stops, see jaxcap.preemption)
    print("error: interrupted before training started; nothing to save", file=sys.stderr)
    return 130
  if jax.process_index() == 0:
    print(json.dumps({k: v for k, v in result.items() if k != "dev_example"}))
  return 0


def run():
  """Console-script entry point."""
  app.run(lambda argv: exit_process(main(argv)))


if __name__ == "__main__":
  run()
