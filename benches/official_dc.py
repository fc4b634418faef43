"""Times the official DC / DSA code (VICO-UoE/DatasetCondensation `main.py`) per iteration.

The official script runs unchanged, from a checkout whose location is given; this file only
wraps three of its functions before calling its `main()`:

- `get_network`, called once at the start of every distillation iteration (and once per
  evaluation network): the time between two iterations' calls is one iteration (a fresh network, `outer_loop` matching rounds and the
  `inner_loop` training between them), which is what is reported;
- `evaluate_synset`, which trains 20 networks for 300 or 1,000 epochs at iteration 0: not
  part of an iteration, and skipped;
- `get_dataset`, because the official loader downloads through torchvision: here the same
  tensors (ToTensor + the official per-dataset mean/std) come from a class-per-folder tree
  of image files, or, for Fashion-MNIST, from the four IDX files torchvision itself reads.

    python3 benches/official_dc.py --official PATH/TO/DatasetCondensation \
        --dataset CIFAR10 --images PATH/TO/cifar10-tree --threads 2 -- \
        --method DC --ipc 10 --Iteration 3

Everything after `--` goes to the official `main.py` as its own flags. It prints one JSON
line: the seconds of each timed iteration, their median after the first, the peak resident memory, the
torch version and the thread count. It fetches nothing.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time


def folder_dataset(root, mean, std):
    """The official `get_dataset`'s return value, from `root/{train,test}/<class>/*`."""
    import torch
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    train = datasets.ImageFolder(os.path.join(root, "train"), transform=tf)
    test = datasets.ImageFolder(os.path.join(root, "test"), transform=tf)
    x, _ = train[0]
    loader = torch.utils.data.DataLoader(test, batch_size=256, shuffle=False, num_workers=0)
    return x.shape[0], tuple(x.shape[1:]), len(train.classes), train.classes, mean, std, \
        train, test, loader


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--official", required=True, help="a DatasetCondensation checkout")
    p.add_argument("--dataset", required=True, choices=["CIFAR10", "FashionMNIST"])
    p.add_argument("--images", help="CIFAR10: a class-per-folder tree (train/, test/)")
    p.add_argument("--idx", help="FashionMNIST: the folder of the four IDX .gz files")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="-- then main.py's own flags")
    args = p.parse_args()
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest

    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, os.path.abspath(args.official))
    work = tempfile.mkdtemp(prefix="official-dc-")
    os.chdir(work)  # main.py writes data/ and result/ where it runs
    import main as official  # noqa: E402  (the official main.py)
    import utils  # noqa: E402

    if args.dataset == "CIFAR10":
        mean, std = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]
        official.get_dataset = lambda name, path: folder_dataset(args.images, mean, std)
    else:
        # torchvision's FashionMNIST reads (and unpacks) the .gz files it finds with the
        # right checksums instead of downloading them.
        raw = os.path.join(work, "data", "FashionMNIST", "raw")
        os.makedirs(raw)
        for f in os.listdir(args.idx):
            os.symlink(os.path.join(args.idx, f), os.path.join(raw, f))

    stamps = []
    get_network = utils.get_network

    def timed(*a, **k):
        stamps.append(time.perf_counter())
        return get_network(*a, **k)

    def skip_evaluation(it, net, *a, **k):
        stamps.pop()  # the evaluation's own network, not an iteration
        return net, 0.0, 0.0

    official.get_network = timed
    official.evaluate_synset = skip_evaluation
    sys.argv = ["main.py", "--dataset", args.dataset, "--num_exp", "1", "--num_eval", "1",
                "--data_path", os.path.join(work, "data")] + rest
    official.main()
    seconds = [b - a for a, b in zip(stamps, stamps[1:])]
    print(json.dumps({
        "code": "VICO-UoE/DatasetCondensation main.py",
        "argv": sys.argv[1:],
        "iteration_seconds": seconds,
        # The first iteration warms up (allocations, threads), as in official_mtt.py.
        "median_seconds": statistics.median(seconds[1:]) if len(seconds) > 1 else None,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
