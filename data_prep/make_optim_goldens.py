#!/usr/bin/python3
"""Writes tests/assets/optim/adamw.json: a few steps of PyTorch's own torch.optim.AdamW (with
torch.nn.utils.clip_grad_norm_ before each step) on fixed parameters and gradients, the golden
for llt's optimizer (tests/test_optim.cpp). See tests/assets/optim/README.md.

Two parameter groups as llt builds them: matrices with weight decay, 1-D tensors (norm weights)
without. Gradients are given (seeded), not computed, and a different learning rate is used at
each step, so the test checks the update rule, the bias corrections, the decoupled weight decay,
the per-step learning rate and clipping, not a model. Step 3's gradients are large enough that
clipping engages.

Run: /usr/bin/python3 data_prep/make_optim_goldens.py [OUTPUT_DIR]
"""

import json
import os
import sys

import torch

SEED = 2024
LRS = [1e-3, 5e-4, 2e-3, 1e-3]  # one per step
GRAD_SCALES = [1.0, 0.5, 20.0, 1.0]  # step 3 (index 2) is clipped
WEIGHT_DECAY = 0.1
MAX_NORM = 5.0
BETAS = (0.9, 0.999)
EPS = 1e-8


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(__file__), "..", "tests", "assets", "optim")
    g = torch.Generator().manual_seed(SEED)
    w = torch.randn(3, 4, generator=g).requires_grad_(True)  # a matrix: decayed
    b = (1 + 0.1 * torch.randn(4, generator=g)).requires_grad_(True)  # a norm weight: not decayed
    initial = {"w": w.detach().clone().tolist(), "b": b.detach().clone().tolist()}
    opt = torch.optim.AdamW(
        [{"params": [w], "weight_decay": WEIGHT_DECAY}, {"params": [b], "weight_decay": 0.0}],
        lr=LRS[0], betas=BETAS, eps=EPS, foreach=False, amsgrad=False, maximize=False)
    steps = []
    for lr, scale in zip(LRS, GRAD_SCALES):
        gw = scale * torch.randn(3, 4, generator=g)
        gb = scale * torch.randn(4, generator=g)
        w.grad, b.grad = gw.clone(), gb.clone()
        norm = torch.nn.utils.clip_grad_norm_([w, b], MAX_NORM)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        steps.append({
            "lr": lr,
            "grad": {"w": gw.tolist(), "b": gb.tolist()},
            "grad_norm": norm.item(),
            "clipped_grad": {"w": w.grad.tolist(), "b": b.grad.tolist()},
            "param": {"w": w.detach().tolist(), "b": b.detach().tolist()},
        })
    golden = {
        "torch_version": torch.__version__,
        "betas": list(BETAS), "eps": EPS, "weight_decay": WEIGHT_DECAY, "max_norm": MAX_NORM,
        "initial": initial,
        "steps": steps,
    }
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "adamw.json"), "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
