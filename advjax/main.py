"""Entry point: `python -m advjax.main --config=configs/X.py --workdir=DIR`.

Any config field can be overridden on the command line, e.g.
`--config.batch_size=256 --config.optimizer.learning_rate=0.05`.
Rerunning with the same work directory resumes from its latest checkpoint.

Multi-host: pass --coordinator_address/--num_processes/--process_id (or set
them in the config as `config.distributed.*`, or in the environment as
ADVJAX_COORDINATOR_ADDRESS/ADVJAX_NUM_PROCESSES/ADVJAX_PROCESS_ID), or
--distributed_auto (`config.distributed.auto`) on Cloud TPU pod slices, and
start the same command on every host.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from advjax import parallel, trainers
from advjax.errors import TrainingDiverged, UserError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py).",
    lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0, for multi-host runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes (hosts).")
flags.DEFINE_integer("process_id", None, "This process's index.")
flags.DEFINE_bool("distributed_auto", False,
                  "Let jax.distributed.initialize() discover the cluster "
                  "(Cloud TPU pod slices, SLURM).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.config is None:
    raise app.UsageError("--config=configs/<experiment>.py is required")
  if not FLAGS.workdir:
    raise app.UsageError("--workdir=DIR is required")
  logging.set_verbosity(logging.ERROR)
  try:
    dist = FLAGS.config.get("distributed") or {}
    parallel.initialize_distributed(
        FLAGS.coordinator_address or dist.get("coordinator_address") or None,
        FLAGS.num_processes if FLAGS.num_processes is not None
        else dist.get("num_processes"),
        FLAGS.process_id if FLAGS.process_id is not None
        else dist.get("process_id"),
        auto=FLAGS.distributed_auto or bool(dist.get("auto", False)))
    trainers.run(FLAGS.config, FLAGS.workdir)
  except UserError as e:
    print(f"advjax: error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  except TrainingDiverged as e:
    print(f"advjax: error: {e}", file=sys.stderr, flush=True)
    sys.exit(3)


def _parse_flags(argv: list[str]) -> list[str]:
  """Parses flags; a bad flag or `--config.x` override gives one line."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    message = str(e)
  except (AttributeError, KeyError) as e:
    message = (f"unknown config field {str(e).strip(chr(34))} in a --config.* "
               f"override; see the config file for the fields it has")
  print(f"advjax: error: {message.splitlines()[0]}", file=sys.stderr,
        flush=True)
  sys.exit(2)


def entry_point(argv: list[str] | None = None):
  argv = list(sys.argv if argv is None else argv)
  remaining = _parse_flags(argv)
  app.run(main, argv=argv, flags_parser=lambda _: remaining)


if __name__ == "__main__":
  entry_point()
