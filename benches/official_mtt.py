"""Runs the official trajectory-matching code unchanged and times its iterations.

The scripts are GeorgeCazenavette/mtt-distillation's `buffer.py` and `distill.py` and
Huage001/DatasetFactorization's `distill_fac.py` (HaBa-MTT), from checkouts whose location
is given. This file only sets up what they expect from the outside before running them as
`__main__`:

- `wandb`: a stand-in module. The scripts log `Synthetic_LR` just before an iteration's
  student steps and `Grand_Loss` just after its updates; the time between the two is one
  distillation iteration, which is what is reported (as their own logging brackets it).
- the evaluation pool: `np.arange` called from the script's `main` (it builds the
  iterations to evaluate at, which always include one early) returns nothing, so no
  evaluation and no image saving run; everywhere else `np.arange` is numpy's.
- `torchvision.datasets.CIFAR10`: read from a class-per-folder tree of image files
  (`train/<class>/*`, `test/<class>/*`, classes in CIFAR-10's order, which is
  alphabetical) instead of the pickled release; the scripts' own transforms and ZCA
  (kornia's) apply unchanged.
- `distill_fac.py` reads `args.kip_zca`, which its parser never defines: it is set to
  False, what its code expects when the flag is absent.

    python3 benches/official_mtt.py --official PATH/mtt-distillation --script distill.py \
        --images PATH/cifar10-tree --threads 2 -- --dataset CIFAR10 --ipc 1 --zca \
        --syn_steps 10 --expert_epochs 2 --max_start_epoch 2 --Iteration 5 \
        --buffer_path PATH/buffers --data_path data

Everything after `--` goes to the script as its own flags. It prints one JSON line: the
seconds of each timed iteration, their median after the first, the peak resident memory,
the torch version and the thread count. It fetches nothing.
"""

import argparse
import json
import os
import resource
import runpy
import statistics
import sys
import time
import types


def stand_in_wandb(stamps):
    """A `wandb` module with what the scripts call, recording when iterations start/end."""
    wandb = types.ModuleType("wandb")

    class Config:
        _items = {}

    class Run:
        name = "timed"

    wandb.config = Config()
    wandb.run = Run()

    def init(config=None, **_):
        wandb.config._items = dict(vars(config)) if config is not None else {}
        return wandb.run

    def log(values, step=None):
        if "Synthetic_LR" in values:
            stamps.append(["start", time.perf_counter()])
        if "Grand_Loss" in values:
            stamps.append(["end", time.perf_counter()])

    wandb.init = init
    wandb.log = log
    wandb.finish = lambda *a, **k: None
    wandb.Image = lambda *a, **k: None
    wandb.Histogram = lambda *a, **k: None
    return wandb


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--official", required=True, help="a checkout holding the script")
    p.add_argument("--script", required=True,
                   choices=["buffer.py", "distill.py", "distill_fac.py"])
    p.add_argument("--images", required=True, help="a class-per-folder CIFAR-10 tree")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="-- then the script's own flags")
    args = p.parse_args()
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest

    import numpy as np
    import torch
    import torchvision

    torch.set_num_threads(args.threads)
    official = os.path.abspath(args.official)
    script = os.path.join(official, args.script)
    sys.path.insert(0, official)

    stamps = []
    sys.modules["wandb"] = stand_in_wandb(stamps)

    arange = np.arange

    def no_evaluation(*a, **k):
        caller = sys._getframe(1).f_code
        if caller.co_name == "main" and caller.co_filename == script:
            return arange(0)
        return arange(*a, **k)

    if args.script != "buffer.py":
        np.arange = no_evaluation

    images = args.images

    def cifar10(root, train=True, download=False, transform=None, **_):
        split = "train" if train else "test"
        return torchvision.datasets.ImageFolder(os.path.join(images, split), transform=transform)

    torchvision.datasets.CIFAR10 = cifar10

    parse_args = argparse.ArgumentParser.parse_args

    def with_kip_zca(self, *a, **k):
        parsed = parse_args(self, *a, **k)
        if not hasattr(parsed, "kip_zca"):
            parsed.kip_zca = False
        return parsed

    argparse.ArgumentParser.parse_args = with_kip_zca
    sys.argv = [script] + rest
    runpy.run_path(script, run_name="__main__")

    seconds = [b[1] - a[1] for a, b in zip(stamps, stamps[1:])
               if a[0] == "start" and b[0] == "end"]
    print(json.dumps({
        "code": f"{os.path.basename(official)}/{args.script}",
        "argv": rest,
        "iteration_seconds": seconds,
        "median_seconds": statistics.median(seconds[1:]) if len(seconds) > 1 else None,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
