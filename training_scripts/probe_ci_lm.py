"""The CI's small LM (tests/test_lr_robustness.py) over seeds: where AdaOpt's step settles, and how it ends.

    python training_scripts/probe_ci_lm.py      # writes model_cards/results/ablation/v11/ci_lm_seeds.json
    python training_scripts/probe_ci_lm.py --rows '{"v12": {}, "v12b": {"variant": "v12b"}}' \
        --out model_cards/results/ablation/v12/ci_lm_seeds.json [--append]

``--rows``: AdaOpt rows by name, each built with those settings (``hf_adaopt.core._variants.build``: a variant and
private settings) instead of v11's rows and AdamW's; ``--append`` keeps the file's other rows (a probe's patched
checkout can add its rows with ``PYTHONPATH``).

The LM of the test (GPT-2, 2 layers, d_model 64, byte-level on CPython's prose, batch 16 x 32, 150 steps, clipping
1.0, AdaOpt fed the loss, no horizon), seeds 0-3: AdaOpt as it is (the start read before clipping, v11), AdaOpt with
the start read after clipping (as before v11), and AdamW at 1e-3, 3e-3 and 1e-2. Each run: the validation bits per
character and AdaOpt's effective lr at steps 1, 40 and 150.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from concurrent.futures import ProcessPoolExecutor

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "model_cards", "results", "ablation", "v11", "ci_lm_seeds.json")
TEST = os.path.join(HERE, "..", "tests", "test_lr_robustness.py")
SEEDS = (0, 1, 2, 3)


def _test_module():
    """The test file itself, so that the probe runs its LM, data and loop, not a copy of them."""
    spec = importlib.util.spec_from_file_location("test_lr_robustness", TEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(job: tuple) -> dict:
    """(optimizer, lr, seed[, settings]): one run of the test's loop, recording AdaOpt's effective lr after every
    step; with settings, AdaOpt built from them (``_variants.build``)."""
    from hf_adaopt import AdaOpt
    from hf_adaopt.core import _variants

    name, lr, seed, *rest = job
    torch.set_num_threads(1)
    test = _test_module()
    lrs: list[float] = []

    def make(params):
        if name == "adamw":
            return torch.optim.AdamW(params, lr=lr)
        opt = _variants.build(params, **rest[0]) if rest else AdaOpt(params)
        if name == "adaopt-after-clipping":  # the start read from the clipped gradient, as before v11
            opt._backward_reading.stop()
            opt._backward_reading = None
        opt.register_step_post_hook(lambda o, args, kwargs: lrs.append(o.param_groups[0]["effective_lr"]))
        return opt

    out = {"optimizer": name, "lr": lr, "seed": seed,
           "bpc": test._lm_bits_per_char(make, test.prose_split(), seed=seed)}
    if lrs:
        out["effective_lr"] = {"1": lrs[0], "40": lrs[39], str(test.LM_STEPS): lrs[-1]}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--rows", type=json.loads, default=None, help="JSON: AdaOpt row name -> settings")
    parser.add_argument("--out", default=OUT)
    parser.add_argument("--append", action="store_true", help="keep the other rows already in --out")
    args = parser.parse_args(argv)
    if args.rows is None:
        jobs = [(name, None, s) for s in SEEDS for name in ("adaopt", "adaopt-after-clipping")]
        jobs += [("adamw", lr, s) for s in SEEDS for lr in (1e-3, 3e-3, 1e-2)]
    else:
        jobs = [(name, None, s, settings) for s in SEEDS for name, settings in args.rows.items()]
    with ProcessPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        runs = list(pool.map(run, jobs))
    for job, out in zip(jobs, runs):
        if len(job) > 3:
            out["settings"] = job[3]
    if args.append and os.path.exists(args.out):
        with open(args.out, encoding="utf-8") as f:
            kept = [r for r in json.load(f)["runs"] if r["optimizer"] not in {j[0] for j in jobs}]
        runs = kept + runs
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"what": __doc__.strip().splitlines()[0], "steps": _test_module().LM_STEPS, "runs": runs}, f,
                  indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
