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

from absl import flags
from ml_collections import config_flags

from advjax import cli, loop, parallel, run_settings, trainers

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py).",
    lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
flags.DEFINE_bool("allow_config_change", False,
                  "Resume a run whose saved config differs from this one in "
                  "more than its length and intervals (refused otherwise); "
                  "the saved state must still fit the new config.")
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0, for multi-host runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes (hosts).")
flags.DEFINE_integer("process_id", None, "This process's index.")
flags.DEFINE_bool("distributed_auto", False,
                  "Let jax.distributed.initialize() discover the cluster "
                  "(Cloud TPU pod slices, SLURM).")


def main(argv):
  del argv  # cli.run refuses positional arguments
  dist = (run_settings.read(FLAGS.config).distributed
          or run_settings.DistributedSettings())
  parallel.initialize_distributed(
      FLAGS.coordinator_address or dist.coordinator_address or None,
      FLAGS.num_processes if FLAGS.num_processes is not None
      else (dist.num_processes if dist.num_processes >= 0 else None),
      FLAGS.process_id if FLAGS.process_id is not None
      else (dist.process_id if dist.process_id >= 0 else None),
      auto=FLAGS.distributed_auto or dist.auto)
  trainers.run(FLAGS.config, FLAGS.workdir, loop.RunOptions(
      allow_config_change=FLAGS.allow_config_change))


def entry_point(argv: list[str] | None = None):
  cli.run(main, argv, required=("config", "workdir"))


if __name__ == "__main__":
  entry_point()
