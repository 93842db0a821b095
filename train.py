"""Train a captioner: `python train.py [--config configs/NAME.py] [--workdir DIR] [--config.FIELD=value]`.

The quickstart by default (synthetic data, tiny model). The command itself is `jaxcap.train_cli`
(also installed as `jaxcap-train`).
"""
from jaxcap.train_cli import run

if __name__ == "__main__":
  run()
