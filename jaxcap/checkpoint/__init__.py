"""A workdir's checkpoints: `format` (the on-disk layout, reading one checkpoint, finding the best, configs
saved by older versions), `manager` (the trainer's saves, restores and their protocol), `lock` (one trainer per
workdir), `errors`. Only this package knows the on-disk names; the trainer writes and the `Captioner` reads
through it.
"""
from jaxcap.checkpoint.errors import CheckpointError
from jaxcap.checkpoint.format import (LATEST, TMP_MARK, Ref, best, find, load, metadata, with_added_fields,
                                      workdir_of)
from jaxcap.checkpoint.lock import WorkdirLock, locked
from jaxcap.checkpoint.manager import Checkpoints

__all__ = ["CheckpointError", "LATEST", "TMP_MARK", "Ref", "best", "find", "load", "metadata", "with_added_fields",
           "workdir_of", "WorkdirLock", "locked", "Checkpoints"]
