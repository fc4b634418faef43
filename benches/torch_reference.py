"""PyTorch side of `haba bench`: the same work units as the Rust side, timed in PyTorch.

`haba bench` runs each work unit in Rust, then runs this script once per unit (a fresh
process, so the peak memory reported is the unit's own) and prints both times side by side:

    python3 benches/torch_reference.py --unit dm --channels 1 --height 28 --width 28 \
        --classes 10 --ipc 10 --batch-real 256 --batch 256 --test-size 10000 \
        --hallucinators 5 --width-net 128 --depth 3 --iters 12 --warmup 2 --threads 4 \
        --device cpu --seed 0

It prints one line of JSON on stdout (diagnostics go to stderr): the unit, the wall time of
each timed iteration, the peak resident memory, the peak device memory on CUDA, the torch
version, the thread count and the device.

This is our own code, written from the descriptions in the DM, DSA, MTT and HaBa papers and
from haba's Rust implementation (src/nets/convnet.rs, src/augment.rs, src/distill/, src/haba/),
so that both sides do the same computation. Inputs are random: timing does not depend on them.
"""

import argparse
import copy
import json
import math
import random
import resource
import sys
import time

import torch
import torch.nn.functional as F

# Iteration i (warm-up included) uses family i % 6, on the Rust side too, so both run the
# same mix of augmentations instead of a random one.
FAMILIES = ["color", "crop", "cutout", "flip", "scale", "rotate"]
UNITS = ["dsa", "embed", "test-pass", "train-step", "eval-epoch", "dm", "haba-dm", "mtt",
         "haba-mtt"]

# src/distill/config.rs and src/haba/contrastive.rs defaults.
LR_BASES, MOMENTUM_BASES = 1.0, 0.5
LR_HAL, MOMENTUM_HAL = 1e-3, 0.5
LR_ADV, MOMENTUM_ADV = 1e-3, 0.9
LAMBDA_COS, LAMBDA_CLS, LAMBDA_LIKE, LAMBDA_CON = 0.1, 1.0, 0.1, 0.1
TEMPERATURE = BASE_TEMPERATURE = 0.07
# src/distill/config.rs, the MTT presets: images lr 1000, momentum 0.5 (MTT's); bases and
# hallucinators lr 100, momentum 0.95 (HaBa's); the learned lr alpha starts at lr_teacher
# and has its own SGD (momentum 0.5, 0.9 with HaBa); src/distill/mtt.rs keeps it >= MIN_LR.
LR_MTT, MOMENTUM_MTT = 1000.0, 0.5
LR_HABA_MTT, MOMENTUM_HABA_MTT = 100.0, 0.95
LR_TEACHER, LR_LR, MIN_LR = 0.01, 1e-5, 0.001
MOMENTUM_LR, MOMENTUM_LR_HABA = 0.5, 0.9
# The benchmark's expert: its target is this far (times N(0, 1)) from the start.
EXPERT_SPREAD = 0.01
# The evaluation protocol's optimiser (src/train.rs, TrainConfig::protocol).
LR_NET, MOMENTUM_NET, DECAY_NET = 0.01, 0.9, 5e-4


# ---------------------------------------------------------------------------- network


def uniform(shape, fan_in, device):
    """PyTorch's default conv/linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return torch.empty(shape, device=device).uniform_(-bound, bound)


class ConvNet:
    """DatasetCondensation's ConvNet: `depth` blocks of conv3x3 -> GroupNorm(width, width)
    (its "instancenorm") -> ReLU -> AvgPool2, then one linear layer (`head=False`: the
    embedder, which returns the flattened features). Written functionally over a parameter
    list so a fresh one can be made directly on the device each DM iteration."""

    def __init__(self, a, head, device, width=None, depth=None):
        width, depth = width or a.width_net, depth or a.depth
        c, h, w = a.channels, a.height, a.width
        self.blocks = []
        for d in range(depth):
            # One-channel input (28x28 MNIST-like data) pads the first conv by 3, as the
            # reference does, so the maps become 32x32.
            pad = 3 if a.channels == 1 and d == 0 else 1
            fan_in = c * 9
            self.blocks.append((
                uniform((width, c, 3, 3), fan_in, device), uniform((width,), fan_in, device),
                torch.ones(width, device=device), torch.zeros(width, device=device), pad,
            ))
            c, h, w = width, (h + 2 * pad - 2) // 2, (w + 2 * pad - 2) // 2
        features = c * h * w
        self.head = None
        if head:
            self.head = (uniform((a.classes, features), features, device),
                         uniform((a.classes,), features, device))

    def parameters(self):
        ps = [p for b in self.blocks for p in b[:4]]
        return ps + list(self.head or ())

    def requires_grad_(self, flag):
        for p in self.parameters():
            p.requires_grad_(flag)
        return self

    def flat(self):
        """The parameters as one vector, in parameters() order (MTT's flat student)."""
        return torch.cat([p.reshape(-1) for p in self.parameters()])

    def with_flat(self, theta):
        """The same network with its parameters replaced by views of the vector `theta`
        (laid out as flat()), so that gradients reach `theta`."""
        ps = self.parameters()
        views = [v.view_as(p) for v, p in zip(theta.split([p.numel() for p in ps]), ps)]
        out = copy.copy(self)
        out.blocks = [(*views[4 * d:4 * d + 4], b[4]) for d, b in enumerate(self.blocks)]
        out.head = tuple(views[4 * len(self.blocks):]) or None
        return out

    def embed(self, x, const=False):
        """Flattened features; `const` cuts the graph to the parameters (they stay
        constants, as the adversary's do in haba's diversity term)."""
        for cw, cb, gw, gb, pad in self.blocks:
            if const:
                cw, cb, gw, gb = cw.detach(), cb.detach(), gw.detach(), gb.detach()
            x = F.conv2d(x, cw, cb, padding=pad)
            x = F.group_norm(x, cw.shape[0], gw, gb, eps=1e-5)
            x = F.avg_pool2d(F.relu(x), 2)
        return x.flatten(1)

    def classify(self, features):
        return F.linear(features, *self.head)

    def __call__(self, x):
        return self.classify(self.embed(x))


# ------------------------------------------------------------------------------- DSA


def dsa_draw(family, n, h, w, device):
    """Random parameters of one family for n samples (the reference's ParamDiffAug
    strengths). A Siamese draw is n = 1, broadcast over every batch it is applied to."""
    def u():
        return torch.rand(n, 1, 1, 1, device=device)

    if family == "color":  # brightness 1.0, saturation 2.0, contrast 0.5
        return (u() - 0.5) * 1.0, u() * 2.0, u() + 0.5
    if family == "crop":  # shifts up to int(size * 0.125 + 0.5)
        sh, sw = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
        return (torch.randint(-sh, sh + 1, (n, 1, 1), device=device),
                torch.randint(-sw, sw + 1, (n, 1, 1), device=device))
    if family == "cutout":  # side int(size * 0.5 + 0.5), centre anywhere, clipped
        ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
        return (torch.randint(0, h + 1 - ch % 2, (n, 1, 1), device=device),
                torch.randint(0, w + 1 - cw % 2, (n, 1, 1), device=device), ch, cw)
    if family == "flip":
        return u() < 0.5
    zero = torch.zeros(n, device=device)
    if family == "scale":
        r = 1.2
        sx, sy = (torch.rand(2, n, device=device) * (r - 1.0 / r) + 1.0 / r).unbind(0)
        rows = [sx, zero, zero, zero, sy, zero]
    elif family == "rotate":
        angle = (torch.rand(n, device=device) - 0.5) * 2 * math.radians(15.0)
        cos, sin = angle.cos(), angle.sin()
        rows = [cos, -sin, zero, sin, cos, zero]
    else:
        raise ValueError(f"unknown DSA family {family!r}")
    # The reference builds theta with a Python loop over samples; this is the same
    # matrix built in one op, so the benchmark times the framework, not the loop.
    return torch.stack(rows, 1).view(n, 2, 3)


def dsa(x, family, draw=None):
    """DiffAugment's 'S' mode with the family fixed: per-sample draws unless `draw` (a
    shared Siamese draw from dsa_draw(family, 1, ...)) is given."""
    n, _, h, w = x.shape
    if draw is None:
        draw = dsa_draw(family, n, h, w, x.device)
    if family == "color":
        b, s, k = draw
        x = x + b
        mean = x.mean(1, keepdim=True)
        x = (x - mean) * s + mean
        mean = x.mean((1, 2, 3), keepdim=True)
        x = (x - mean) * k + mean
    elif family == "crop":
        ty, tx = draw
        gb, gy, gx = torch.meshgrid(
            torch.arange(n, device=x.device), torch.arange(h, device=x.device),
            torch.arange(w, device=x.device), indexing="ij")
        gy = torch.clamp(gy + ty + 1, 0, h + 1)
        gx = torch.clamp(gx + tx + 1, 0, w + 1)
        padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1).contiguous()
        x = padded[gb, gy, gx].permute(0, 3, 1, 2)
    elif family == "cutout":
        oy, ox, ch, cw = draw
        gb, gy, gx = torch.meshgrid(
            torch.arange(n, device=x.device), torch.arange(ch, device=x.device),
            torch.arange(cw, device=x.device), indexing="ij")
        gy = torch.clamp(gy + oy - ch // 2, 0, h - 1)
        gx = torch.clamp(gx + ox - cw // 2, 0, w - 1)
        mask = torch.ones(n, h, w, dtype=x.dtype, device=x.device)
        mask[gb, gy, gx] = 0
        x = x * mask.unsqueeze(1)
    elif family == "flip":
        x = torch.where(draw, x.flip(3), x)
    else:  # scale, rotate: align_corners=True as HaBa's (MTT's) DiffAugment and haba
        theta = draw.expand(n, 2, 3).contiguous()
        grid = F.affine_grid(theta, list(x.shape), align_corners=True)
        x = F.grid_sample(x, grid, align_corners=True)
    return x.contiguous()


def siamese(family, *batches):
    """One draw shared by every sample of every batch (DM's seeded DiffAugment)."""
    _, _, h, w = batches[0].shape
    draw = dsa_draw(family, 1, h, w, batches[0].device)
    return [dsa(x, family, draw) for x in batches]


# ----------------------------------------------------------------------------- units


def images(a, n, device):
    return torch.randn(n, a.channels, a.height, a.width, device=device)


def labels(a, n, device):
    return torch.randint(0, a.classes, (n,), device=device)


def class_major(a, device):
    """The synthetic set's labels: ipc images of class 0 first, then class 1, ..."""
    return torch.arange(a.classes, device=device).repeat_interleave(a.ipc)


def sgd_net(net):
    return torch.optim.SGD(net.parameters(), lr=LR_NET, momentum=MOMENTUM_NET,
                           weight_decay=DECAY_NET)


def unit_dsa(a, dev):
    """One iteration is every family once, so a few iterations cover the whole mix."""
    x = images(a, a.batch, dev)

    def step(_family):
        with torch.no_grad():
            for family in FAMILIES:
                dsa(x, family)
    return step


def unit_embed(a, dev):
    net, x = ConvNet(a, False, dev), images(a, a.batch, dev)

    def step(family):
        with torch.no_grad():
            net.embed(x)
    return step


def unit_test_pass(a, dev):
    net, x, y = ConvNet(a, True, dev), images(a, a.test_size, dev), labels(a, a.test_size, dev)
    # Functional GroupNorm has no train/eval difference: this is eval mode.

    def step(family):
        correct = 0
        with torch.no_grad():
            for i in range(0, a.test_size, a.batch):
                pred = net(x[i:i + a.batch]).argmax(1)
                correct += (pred == y[i:i + a.batch]).sum().item()
        return correct
    return step


def unit_train_step(a, dev):
    net = ConvNet(a, True, dev).requires_grad_(True)
    opt, x, y = sgd_net(net), images(a, a.batch, dev), labels(a, a.batch, dev)
    loss_sum = torch.zeros((), device=dev)  # summed on the device, read once per epoch

    def step(family):
        nonlocal loss_sum
        loss = F.cross_entropy(net(dsa(x, family)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss_sum = loss_sum + loss.detach()
    return step


def unit_eval_epoch(a, dev):
    n = a.classes * a.ipc
    net = ConvNet(a, True, dev).requires_grad_(True)
    opt, x, y = sgd_net(net), images(a, n, dev), labels(a, n, dev)

    def step(family):
        order = torch.randperm(n, device=dev)
        loss_sum, batches = torch.zeros((), device=dev), 0
        for i in range(0, n, a.batch):
            idx = order[i:i + a.batch]
            loss = F.cross_entropy(net(dsa(x[idx], family)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum, batches = loss_sum + loss.detach(), batches + 1
        return loss_sum.item() / batches
    return step


def dm_loss(a, embedder, real, syn, family):
    """Sum over classes of |mean embed(real_c) - mean embed(syn_c)|^2, one Siamese draw
    per class; real embeddings carry no graph."""
    loss = 0.0
    for c in range(a.classes):
        r, s = siamese(family, real[c], syn[c])
        with torch.no_grad():
            mean_real = embedder.embed(r).mean(0)
        loss = loss + ((mean_real - embedder.embed(s).mean(0)) ** 2).sum()
    return loss


def unit_dm(a, dev):
    real = torch.randn(a.classes, a.batch_real, a.channels, a.height, a.width, device=dev)
    image_syn = images(a, a.classes * a.ipc, dev).requires_grad_(True)
    opt = torch.optim.SGD([image_syn], lr=LR_BASES, momentum=MOMENTUM_BASES)
    n = a.ipc

    def step(family):
        embedder = ConvNet(a, False, dev)  # fresh and untrained every iteration, no grad
        syn = [image_syn[c * n:(c + 1) * n] for c in range(a.classes)]
        loss = dm_loss(a, embedder, real, syn, family)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()  # haba reads the objective every iteration too
    return step


def make_hallucinator(a, dev):
    """enc: Conv2d(C, C, 3), modulation scale * z + shift with [1, C, H-2, W-2] maps
    (identity at init), dec: ConvTranspose2d(C, C, 3); PyTorch's default init."""
    c, fan_in, maps = a.channels, a.channels * 9, (1, a.channels, a.height - 2, a.width - 2)
    return [uniform((c, c, 3, 3), fan_in, dev), uniform((c,), fan_in, dev),
            torch.ones(maps, device=dev), torch.zeros(maps, device=dev),
            uniform((c, c, 3, 3), fan_in, dev), uniform((c,), fan_in, dev)]


def hallucinate(hal, bases):
    enc_w, enc_b, scale, shift, dec_w, dec_b = hal
    return F.conv_transpose2d(scale * F.conv2d(bases, enc_w, enc_b) + shift, dec_w, dec_b)


def cosine(f0, f1):
    return F.cosine_similarity(f0, f1, dim=1, eps=1e-8)


def supcon(f0, f1, y):
    """Supervised contrastive loss (Khosla et al.) over two views, contrast mode 'all'."""
    z = torch.cat([F.normalize(f0, dim=1), F.normalize(f1, dim=1)], 0)
    logits = z @ z.T / TEMPERATURE
    logits = logits - logits.max(1, keepdim=True).values.detach()
    yy = y.repeat(2)
    others = 1.0 - torch.eye(len(yy), device=z.device)
    positives = (yy[:, None] == yy[None, :]).float() * others
    log_prob = logits - torch.log((logits.exp() * others).sum(1, keepdim=True))
    mean_pos = (log_prob * positives).sum(1) / positives.sum(1)
    return -(TEMPERATURE / BASE_TEMPERATURE) * mean_pos.mean()


def factorised(a, dev, unit):
    """HaBa's factorised set: class-major bases [classes * ipc, C, H, W] and
    `--hallucinators` hallucinators, all on the graph."""
    if a.hallucinators < 2:
        sys.exit(f"torch_reference.py: {unit} compares two hallucinators; "
                 "use --hallucinators >= 2")
    bases = images(a, a.classes * a.ipc, dev).requires_grad_(True)
    hals = [[p.requires_grad_(True) for p in make_hallucinator(a, dev)]
            for _ in range(a.hallucinators)]
    return bases, hals


def contrastive(a, dev, bases, hals):
    """HaBa's adversary (src/distill/contrastive.rs) over the factorised set. Returns
    diversity(family), the term added to the set's objective, and adversary_step(family),
    the adversary's own step once the set has taken its step (it returns that loss)."""
    m, k, y = len(hals), len(bases), class_major(a, dev)
    # haba's Adversary::new always builds Arch::default() (width 128, depth 3), the
    # reference Extractor, whatever the embedder's width.
    adversary = ConvNet(a, True, dev, width=128, depth=3).requires_grad_(True)
    opt_adv = torch.optim.SGD(adversary.parameters(), lr=LR_ADV, momentum=MOMENTUM_ADV)

    def pair(family):
        """The bases through two different hallucinators, augmented in one per-sample
        DSA call (so the two views of a basis are augmented differently)."""
        j = random.randrange(m)
        i = (j + 1 + random.randrange(m - 1)) % m
        both = dsa(torch.cat([hallucinate(hals[j], bases), hallucinate(hals[i], bases)]), family)
        return both[:k], both[k:]

    def diversity(family):
        # Two views of the same bases should look different to the adversary, whose
        # parameters are constants here (haba; the reference computes and then discards
        # their gradient).
        x0, x1 = pair(family)
        f = adversary.embed(torch.cat([x0, x1]), const=True)
        return LAMBDA_COS * ((cosine(f[:k], f[k:]) + 1) / 2).mean()

    def adversary_step(family):
        # On a fresh pair of detached views of the updated bases.
        with torch.no_grad():
            x0, x1 = pair(family)
        f = adversary.embed(torch.cat([x0, x1]))
        f0, f1 = f[:k], f[k:]
        loss = (LAMBDA_CLS * F.cross_entropy(adversary.classify(f), y.repeat(2))
                + LAMBDA_LIKE * ((1 - cosine(f0, f1)) / 2).mean()
                + LAMBDA_CON * supcon(f0, f1, y))
        opt_adv.zero_grad()
        loss.backward()
        opt_adv.step()
        return loss.item()
    return diversity, adversary_step


def unit_haba_dm(a, dev):
    n = a.ipc
    real = torch.randn(a.classes, a.batch_real, a.channels, a.height, a.width, device=dev)
    bases, hals = factorised(a, dev, "haba-dm")
    opt_bases = torch.optim.SGD([bases], lr=LR_BASES, momentum=MOMENTUM_BASES)
    opt_hal = torch.optim.SGD([p for h in hals for p in h], lr=LR_HAL, momentum=MOMENTUM_HAL)
    diversity, adversary_step = contrastive(a, dev, bases, hals)

    def step(family):
        embedder = ConvNet(a, False, dev)  # fresh, untrained, no grad (DM)
        # Every basis through every hallucinator; class c's views are its N bases under
        # each of the M hallucinators (M * N images).
        views = [hallucinate(h, bases) for h in hals]
        syn = [torch.cat([v[c * n:(c + 1) * n] for v in views]) for c in range(a.classes)]
        objective = dm_loss(a, embedder, real, syn, family)
        div = diversity(family)
        _ = objective.item(), div.item()  # haba reads both before its backward
        opt_bases.zero_grad()
        opt_hal.zero_grad()
        (objective + div).backward()
        opt_bases.step()
        opt_hal.step()
        return adversary_step(family)
    return step


class Mtt:
    """Matching training trajectories (src/distill/mtt.rs) against one expert segment:
    the start is a default-initialised ConvNet's flat parameters and the target is
    EXPERT_SPREAD * N(0, 1) away from it. It owns the learned lr alpha and steps it like
    an optimiser (zero_grad() before the backward, step() after)."""

    def __init__(self, a, dev, momentum_lr):
        self.a, self.y = a, class_major(a, dev)
        self.net = ConvNet(a, True, dev)
        self.start = self.net.flat()
        self.target = self.start + EXPERT_SPREAD * torch.randn_like(self.start)
        self.alpha = torch.tensor(LR_TEACHER, device=dev, requires_grad=True)
        self.opt = torch.optim.SGD([self.alpha], lr=LR_LR, momentum=momentum_lr)

    def loss(self, rows, family):
        """|theta_N - target|^2 / |start - target|^2 after `--syn-steps` student steps
        from start; `rows(idx)` gives the synthetic images of rows idx, on the graph."""
        k = len(self.y)
        # A fresh leaf on start's storage: autograd.grad needs the first theta to require
        # grad, as the reference's student_params[0] does.
        theta = self.start.detach().requires_grad_(True)
        for _ in range(self.a.syn_steps):
            # batch_syn is the whole set: each step is one chunk of a fresh permutation.
            perm = torch.randperm(k, device=self.start.device)
            x = dsa(rows(perm), family)  # a fresh per-sample draw every step
            ce = F.cross_entropy(self.net.with_flat(theta)(x), self.y[perm])
            g = torch.autograd.grad(ce, theta, create_graph=True)[0]
            theta = theta - self.alpha * g
        return (((theta - self.target) ** 2).sum()
                / ((self.start - self.target) ** 2).sum())

    def zero_grad(self):
        self.opt.zero_grad()

    def step(self):
        self.opt.step()
        with torch.no_grad():
            self.alpha.clamp_(min=MIN_LR)


def unit_mtt(a, dev):
    syn = images(a, a.classes * a.ipc, dev).requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=LR_MTT, momentum=MOMENTUM_MTT)
    mtt = Mtt(a, dev, MOMENTUM_LR)

    def step(family):
        loss = mtt.loss(lambda idx: syn[idx], family)
        value = loss.item()  # haba reads the objective before its backward
        opt.zero_grad()
        mtt.zero_grad()
        loss.backward()
        opt.step()
        mtt.step()
        return value
    return step


def unit_haba_mtt(a, dev):
    bases, hals = factorised(a, dev, "haba-mtt")
    opt = torch.optim.SGD([bases] + [p for h in hals for p in h], lr=LR_HABA_MTT,
                          momentum=MOMENTUM_HABA_MTT)
    diversity, adversary_step = contrastive(a, dev, bases, hals)
    mtt = Mtt(a, dev, MOMENTUM_LR_HABA)

    def rows(idx):
        # Each student step runs its whole batch through one hallucinator drawn at random.
        return hallucinate(hals[random.randrange(len(hals))], bases[idx])

    def step(family):
        objective = mtt.loss(rows, family)
        div = diversity(family)
        _ = objective.item(), div.item()  # haba reads both before its backward
        opt.zero_grad()
        mtt.zero_grad()
        (objective + div).backward()
        opt.step()
        mtt.step()
        return adversary_step(family)
    return step


BUILDERS = {"dsa": unit_dsa, "embed": unit_embed, "test-pass": unit_test_pass,
            "train-step": unit_train_step, "eval-epoch": unit_eval_epoch, "dm": unit_dm,
            "haba-dm": unit_haba_dm, "mtt": unit_mtt, "haba-mtt": unit_haba_mtt}


# ------------------------------------------------------------------------------ main


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--unit", required=True)
    for name in ["channels", "height", "width", "classes", "ipc", "batch-real", "batch",
                 "test-size", "hallucinators", "iters", "warmup", "threads", "seed"]:
        p.add_argument(f"--{name}", type=int, required=True)
    p.add_argument("--width-net", type=int, default=128)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--syn-steps", type=int, default=10)  # MTT's student steps
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    return p.parse_args(argv)


def main(argv):
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError as e:  # only allowed before any parallel work
        print(f"torch_reference.py: set_num_interop_threads: {e}", file=sys.stderr)
    if a.unit not in BUILDERS:
        sys.exit(f"torch_reference.py: unknown unit {a.unit!r}; known: {', '.join(UNITS)}")
    cuda = a.device == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("torch_reference.py: --device cuda, but torch sees no CUDA device")
    dev = torch.device("cuda" if cuda else "cpu")
    if cuda:
        # PyTorch's defaults otherwise (cuDNN may pick TF32 convolutions on Ampere+).
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(a.seed)
    random.seed(a.seed)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    step = BUILDERS[a.unit](a, dev)
    seconds = []
    for i in range(a.warmup + a.iters):
        sync()
        start = time.perf_counter()
        step(FAMILIES[i % len(FAMILIES)])
        sync()
        if i >= a.warmup:
            seconds.append(time.perf_counter() - start)
    print(json.dumps({
        "unit": a.unit,
        "seconds": seconds,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_device_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "torch": torch.__version__,
        "threads": a.threads,
        "device": f"cuda:{torch.cuda.get_device_name(dev)}" if cuda else "cpu",
    }))


if __name__ == "__main__":
    main(sys.argv[1:])
