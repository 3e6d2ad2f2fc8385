"""Run a study: every variant of a config file over several seeds, then one report.

    python scripts/study.py --config configs/pooling.py --workdir runs/pooling --seeds 5
    python scripts/study.py --config configs/lenet.py --workdir runs/lenet            # the LeNet variants
    python scripts/study.py --config configs/lenet.py:smoke --workdir /tmp/s --variants 3,max --seeds 2

`--config FILE[:overrides]`: the overrides (`epochs=5,smoke`, `data=mnist`) apply to every variant, as do
`--config.KEY=VALUE` flags (`--config.train.epochs=5`).
Rerunning skips finished runs and resumes unfinished ones. On the CPU, --jobs N runs N at once, each
in a process of its own with cores/N threads (default: one per core). Runs that share an architecture
and an optimizer family train together as one vmapped program with --group=yes (the default, auto,
does so on GPU/TPU only, where --jobs defaults to 1).
"""

import functools

from absl import flags
from ml_collections import config_flags

from jaxcnn.cli import run

config_flags.DEFINE_config_file("config", None, "Config file, optionally with overrides for every variant: "
                                "FILE[:k=v,...]; --config.KEY=VALUE flags apply to every variant too.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Study directory: one folder per variant and seed, report.md, results.csv.")
flags.DEFINE_integer("seeds", 1, "Seeds per variant (0..N-1).")
flags.DEFINE_list("variants", None, "Variants to run (default: all the config file declares).")
flags.DEFINE_enum("group", "auto", ["auto", "yes", "no"],
                  "Train runs that share an architecture and optimizer family as one vmapped program: "
                  "auto = on GPU/TPU, not on CPU (slower there, see README).")
flags.DEFINE_integer("max_group", 0, "Most runs in one group (0: no limit); lower it if memory runs short.")
flags.DEFINE_integer("jobs", None, "Runs trained at once, each in a process of its own with cores/N threads "
                     "(default: one per core on the CPU; 1 on GPU/TPU and with --group=yes).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    from jaxcnn.errors import UserError
    from jaxcnn.study.runner import default_jobs, run_study

    f = flags.FLAGS
    path, _, arg = config_flags.get_config_filename(f["config"]).partition(":")
    flag_overrides = [f"{k}={v!r}" for k, v in config_flags.get_override_values(f["config"]).items()]
    overrides = ",".join(p for p in (arg, *flag_overrides) if p)
    jobs = default_jobs(f.group) if f.jobs is None else f.jobs
    result = run_study(path, f.workdir, f.seeds, f.variants, overrides, f.group, f.max_group, jobs=jobs,
                       log=functools.partial(print, flush=True))  # each line as it happens, also into a pipe
    if result.get("verdict"):
        print(result["verdict"])
    if result["failed"]:
        names = ", ".join(line.split()[0] for line in result["failed"])
        raise UserError(f"{len(result['failed'])} run(s) failed ({names}), listed as failed in the report; rerun "
                        "the same command to train them again")


if __name__ == "__main__":
    run(main)
