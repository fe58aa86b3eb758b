"""Submit pretrain_model.py as one multi-GPU / multi-node job through submitit.

    python submit_pretrain.py -nodes 2 -gpus_per_node 4 -partition P -timeout_min 2880 \\
        -net VGG16 -dataset Cifar100 -classes 100 -b 512 -out checkpoint/vgg16-cifar100.pth

The job runs one task per GPU; each task is one process of the DistributedDataParallel run
that ``torchrun --nnodes N --nproc_per_node G pretrain_model.py ...`` would start: it gets
MASTER_ADDR (the job's first node), MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK and
LOCAL_WORLD_SIZE from submitit's view of the job, then runs pretrain_model's main with every
flag this command does not know (-gpu is added when the job has GPUs). The flags are checked
by pretrain_model before anything is submitted. A job that reaches its time limit or is
preempted is requeued and continues from the training state saved after the last epoch
(pretrain_model's -resume), so -out is required.
"""
import argparse
import os
import re
import sys
import time

import launch
from cli import UserError, exit_status

REPO = os.path.dirname(os.path.abspath(__file__))


class PretrainJob:
    """The callable each task of the job runs. submitit requeues a timed-out or preempted job
    with what ``checkpoint`` returns (it calls it on the first task only)."""

    def __init__(self, flags, cwd):
        self.flags, self.cwd = list(flags), cwd

    def __call__(self):
        import submitit

        env = submitit.JobEnvironment()
        # one port per job, the same in every task (they all compute it from the job id)
        port = 20000 + int(re.sub(r"\D", "", str(env.job_id)) or 0) % 20000
        os.environ.update(MASTER_ADDR="127.0.0.1" if env.cluster == "local" else env.hostnames[0],
                          MASTER_PORT=str(port), RANK=str(env.global_rank), WORLD_SIZE=str(env.num_tasks),
                          LOCAL_RANK=str(env.local_rank), LOCAL_WORLD_SIZE=str(env.num_tasks // env.num_nodes))
        os.chdir(self.cwd)
        if REPO not in sys.path:
            sys.path.insert(0, REPO)
        import pretrain_model
        from cli import run_cli

        sys.argv = ["pretrain_model.py", *self.flags]
        run_cli(pretrain_model.main)

    def checkpoint(self, *args, **kwargs):
        import submitit

        import pretrain_model

        out = pretrain_model.parse_args(self.flags).out
        state = os.path.join(self.cwd, pretrain_model.resume_path(out))
        flags = _without_flag(self.flags, "-resume")
        if os.path.exists(state):
            flags += ["-resume", state]
        return submitit.helpers.DelayedSubmission(PretrainJob(flags, self.cwd))


def _without_flag(flags, name):
    out, skip = [], False
    for f in flags:
        if skip:
            skip = False
        elif f == name:
            skip = True
        elif not f.startswith(name + "="):
            out.append(f)
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False, formatter_class=launch.HelpFormatter,
                                epilog="Every other flag goes to pretrain_model.py (see python pretrain_model.py -h).")
    p.add_argument("-nodes", type=int, default=1, help="nodes of the job")
    p.add_argument("-gpus_per_node", type=int, default=1, help="GPUs per node, one task each; 0: CPU tasks (gloo)")
    p.add_argument("-tasks_per_node", type=int, default=1, help="with -gpus_per_node 0: processes per node")
    p.add_argument("-wait", action="store_true", help="wait for the job to end and report how it ended")
    launch.add_launch_flags(p, executors=("local", "slurm"), default="slurm", detach=False)
    args, rest = p.parse_known_args(argv)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    if args.nodes < 1 or args.gpus_per_node < 0 or args.tasks_per_node < 1:
        p.error("-nodes and -tasks_per_node must be >= 1, -gpus_per_node >= 0")
    if args.gpus_per_node:
        args.tasks_per_node = args.gpus_per_node
        if "-gpu" not in rest:
            rest.append("-gpu")
    return args, rest


def main(argv=None):
    args, flags = parse_args(sys.argv[1:] if argv is None else argv)
    import pretrain_model

    world = args.nodes * args.tasks_per_node
    pretrain_args = pretrain_model.parse_args(flags)
    if pretrain_args.out is None:
        raise UserError("give -out: a requeued job continues from the training state saved beside it")
    pretrain_model.check_args(pretrain_args, world)  # refuse bad flags here, not in the queue
    job_dir = os.path.splitext(pretrain_args.out)[0] + "-submitit"
    executor = launch.executor_from_flags(args, job_dir, f"pretrain-{pretrain_args.net}-{pretrain_args.dataset}",
                                          nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                                          tasks_per_node=args.tasks_per_node)
    job = executor.submit(PretrainJob(flags, os.getcwd()))
    print(f"submitted job {job.job_id}: {world} process(es) on {args.nodes} node(s); output of rank 0 in "
          f"{job.paths.stdout}; weights -> {pretrain_args.out}", flush=True)
    if not args.wait:
        return 0
    try:
        while not job.done():
            time.sleep(1)
        job.results()
    except KeyboardInterrupt:
        job.cancel(check=False)
        print("interrupted: job cancelled; continue with -resume " + pretrain_model.resume_path(pretrain_args.out),
              file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a failed job is reported in a line, its log has the rest
        print(f"error: job {job.job_id} failed ({(str(e).strip().splitlines() or [type(e).__name__])[-1][:200]}); "
              f"see {job.paths.stderr}", file=sys.stderr)
        return 1
    print(f"job {job.job_id} done: {pretrain_args.out}")
    return 0


def cli(argv=None):
    return exit_status(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
