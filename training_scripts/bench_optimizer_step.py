"""Time per optimizer step and optimizer-state bytes per parameter: AdaOpt vs torch and peer optimizers.

    python training_scripts/bench_optimizer_step.py                      # ~25M params, fp32, CPU
    python training_scripts/bench_optimizer_step.py --num_params 25e6 --steps 20 --dtype bfloat16 --device cpu
    python training_scripts/bench_optimizer_step.py --clock cpu --threads 1     # on a machine shared with others
    python training_scripts/bench_optimizer_step.py --device cuda --num_params 350e6 --only fused   # one GPU

The parameters are transformer-shaped (token and position embeddings, then per layer: LayerNorm, fused qkv
projection, output projection, LayerNorm, 4x MLP -- weights and biases -- and a final LayerNorm; d_model 512
by default), as many layers as come closest to ``--num_params``. Every parameter gets a fixed random gradient.
All optimizers are built side by side, each stepped ``--warmup`` times, then timed for ``--steps`` steps,
interleaved (timed step i of every optimizer, in a rotating order, before step i+1 of any), so that changes in
machine load hit all of them alike. The table shows the median step time and the medians of the per-step
ratios to torch's ``AdamW(fused=True)`` and ``AdamW(foreach=True)``, measured in the same run.

The memory floor: AdamW reads p, g, m, v and writes p, m, v -- 7 tensors of the parameters' dtype, 28 bytes per
fp32 parameter (14 for bf16, whose AdamW state is bf16). A ``torch.Tensor.copy_`` that moves as many bytes (half
read, half written), timed in the same rotation as the optimizers, is the ``copy floor``; ``x floor`` is each
step's time over the copy's, and ``GB/s`` is those AdamW bytes over the step time (the same yardstick for every
row, whatever the optimizer really moves: AdaOpt keeps fp32 state for bf16 parameters and reads the gradient once
more for its statistics).
State bytes are the sum of ``nbytes`` of every tensor in ``optimizer.state`` (and any tensor kept in
``param_groups``), divided by the number of parameters. The first (compiling) step of each AdaOpt that runs fused is
reported as ``compile_s`` in the JSON (the kernel's load from torch's cache, or its build on a fresh machine).

Compared: AdaOpt as users build it (``AdaOpt(params)``, no flag: fused on CPU), with ``fused=True`` and with
``foreach=True``, torch AdamW (fused and foreach) / Adam (foreach), SGD (momentum 0.9, foreach), RMSprop (foreach),
and, when installed (``pip install 'hf-adaopt[peers]'``), Prodigy, D-Adaptation (DAdaptAdam), Schedule-Free
(AdamWScheduleFree) and DoG.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable

import torch

from hf_adaopt import AdaOpt


# ------------------------------------------------------------------------------------------ parameters
def layer_shapes(d_model: int) -> list[tuple[int, ...]]:
    """Parameter shapes of one pre-LN transformer block."""
    d, h = d_model, 4 * d_model
    return [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,),  # ln1, qkv, out
            (d,), (d,), (h, d), (h,), (d, h), (d,)]  # ln2, mlp up, mlp down


def model_shapes(num_params: float, d_model: int, vocab: int, max_positions: int) -> list[tuple[int, ...]]:
    """Embeddings + final LayerNorm + as many blocks as come closest to ``num_params`` (at least one)."""
    fixed = [(vocab, d_model), (max_positions, d_model), (d_model,), (d_model,)]
    per_layer = sum(math.prod(s) for s in layer_shapes(d_model))
    n_fixed = sum(math.prod(s) for s in fixed)
    layers = max(1, round((num_params - n_fixed) / per_layer))
    return fixed[:2] + layer_shapes(d_model) * layers + fixed[2:]


def make_params(shapes, dtype: torch.dtype, device: str, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter((torch.randn(shape, generator=g) * 0.02).to(device=device, dtype=dtype))
        p.grad = (torch.randn(shape, generator=g) * 1e-3).to(device=device, dtype=dtype)
        params.append(p)
    return params


# ------------------------------------------------------------------------------------------ optimizers
def optimizer_factories() -> dict[str, Callable]:
    """name -> factory(params); the peers only when their packages are installed."""
    factories = {
        "AdamW (torch, fused)": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01, fused=True),
        "AdamW (torch, foreach)": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01, foreach=True),
        # as users build it: no flag (on CPU the fused step; on CUDA foreach until the compiled graph is measured)
        "AdaOpt (default)": lambda ps: AdaOpt(ps, lr=1e-3, weight_decay=0.01),
        "AdaOpt (fused)": lambda ps: AdaOpt(ps, lr=1e-3, weight_decay=0.01, fused=True),
        "AdaOpt (foreach)": lambda ps: AdaOpt(ps, lr=1e-3, weight_decay=0.01, foreach=True, fused=False),
        "Adam (torch, foreach)": lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True),
        "SGD momentum 0.9 (foreach)": lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, foreach=True),
        "RMSprop (foreach)": lambda ps: torch.optim.RMSprop(ps, lr=1e-3, foreach=True),
    }
    try:
        from prodigyopt import Prodigy

        factories["Prodigy"] = lambda ps: Prodigy(ps, lr=1.0, weight_decay=0.01)
    except ImportError:
        pass
    try:
        from dadaptation import DAdaptAdam

        factories["D-Adaptation (DAdaptAdam)"] = lambda ps: DAdaptAdam(ps, lr=1.0, weight_decay=0.01)
    except ImportError:
        pass
    try:
        from schedulefree import AdamWScheduleFree

        def schedule_free(ps):
            opt = AdamWScheduleFree(ps, lr=1e-3, weight_decay=0.01)
            opt.train()  # schedule-free optimizers must be switched to train mode before stepping
            return opt

        factories["Schedule-Free (AdamWScheduleFree)"] = schedule_free
    except ImportError:
        pass
    try:
        from dog import DoG

        factories["DoG"] = lambda ps: DoG(ps)
    except ImportError:
        pass
    return factories


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor the optimizer keeps: per-parameter state and tensors in param_groups."""

    def tensor_bytes(value) -> int:
        if isinstance(value, torch.Tensor):
            return value.nbytes
        if isinstance(value, (list, tuple)):
            return sum(tensor_bytes(v) for v in value)
        if isinstance(value, dict):
            return sum(tensor_bytes(v) for v in value.values())
        return 0

    total = sum(tensor_bytes(s) for s in optimizer.state.values())
    total += sum(tensor_bytes(v) for g in optimizer.param_groups for k, v in g.items() if k != "params")
    return total


# ----------------------------------------------------------------------------------------------- bench
COPY_FLOOR = "copy floor (copy_, AdamW's bytes)"
GRAD_READ = "one read of the gradients (foreach_norm)"
ADAMW_TENSORS = 7  # AdamW reads p, g, m, v and writes p, m, v


class CopyFloor:
    """Stands in for an optimizer: ``dst.copy_(src)`` moving AdamW's bytes for ``n_params`` parameters."""

    def __init__(self, n_params: int, dtype: torch.dtype, device: str):
        numel = ADAMW_TENSORS * n_params // 2  # read src + write dst = 7 tensors' worth of bytes
        self.src = torch.randn(numel, device=device).to(dtype)
        self.dst = torch.empty_like(self.src)
        self.state: dict = {}
        self.param_groups: list = []

    def step(self) -> None:
        self.dst.copy_(self.src)


class GradRead:
    """Stands in for an optimizer: ``torch._foreach_norm`` of the gradients, what one more pass over them costs (a
    statistics pass before the update, which AdaOpt's fused step does not make)."""

    def __init__(self, params: list[torch.Tensor]):
        self.grads = [p.grad for p in params]
        self.state: dict = {}
        self.param_groups: list = []

    def step(self) -> None:
        torch._foreach_norm(self.grads)


class Runner:
    """One optimizer on its own copy of the parameters (same values and gradients for every optimizer)."""

    def __init__(self, factory, shapes, dtype, device, clock):
        self.clock = clock
        self.params = make_params(shapes, dtype, device)
        self.optimizer = factory(self.params)
        self.first_step_s = None
        self.is_adaopt = isinstance(self.optimizer, AdaOpt)
        self.loss = torch.tensor(2.0, device=device)
        self.sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        self.i = 0

    def step(self) -> float:
        start = time.perf_counter() if self.first_step_s is None else self.clock()
        if self.is_adaopt:  # what AdaOptCallback does: the loss as a device tensor
            self.optimizer.set_loss(self.loss + 0.01 * math.sin(self.i))
        self.optimizer.step()
        self.sync()
        self.i += 1
        if self.first_step_s is None:  # wall time: the compile's worker processes are not this process's CPU
            self.first_step_s = time.perf_counter() - start
            return self.first_step_s
        return self.clock() - start



def step_ratio(times: list[float], reference: list[float]) -> float:
    """The median of the per-step ratios of two interleaved timings (not the ratio of their medians: a load spike
    that hits one step of both cancels in its ratio)."""
    return statistics.median(t / r for t, r in zip(times, reference, strict=True))

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_params", type=float, default=25e6, help="target parameter count (default 25e6)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per optimizer")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (state allocation)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--d_model", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: time.perf_counter; cpu: time.process_time, the CPU time of all this process's "
                        "threads -- steadier than wall time on a machine shared with other jobs (CPU device only)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--only", default=None, help="comma-separated substrings of optimizer names to run "
                        "(the two AdamW rows, the copy floor and the gradient read always run: they are the "
                        "references)")
    parser.add_argument("--output_json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    shapes = model_shapes(args.num_params, args.d_model, args.vocab, max_positions=512)
    factories = optimizer_factories()
    if args.only:
        wanted = [w.strip().lower() for w in args.only.split(",")]
        factories = {k: f for k, f in factories.items() if k.startswith("AdamW (torch") or
                     any(w in k.lower() for w in wanted)}
    if args.clock == "cpu" and args.device != "cpu":
        parser.error("--clock cpu measures host CPU time; use --clock wall with --device " + args.device)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    runners = {name: Runner(factories[name], shapes, dtype, args.device, clock) for name in factories}
    n_params = sum(p.numel() for p in next(iter(runners.values())).params)
    runners[COPY_FLOOR] = Runner(lambda ps: CopyFloor(n_params, dtype, args.device), [], dtype, args.device, clock)
    runners[GRAD_READ] = Runner(GradRead, shapes, dtype, args.device, clock)
    names = list(runners)
    for runner in runners.values():
        for _ in range(args.warmup):
            runner.step()
    # Interleave: step i times every optimizer once (in a rotating order), so that a change in machine load
    # hits all of them alike; the ratio to AdamW is the median of the per-step ratios.
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(args.steps):
        order = names[i % len(names):] + names[:i % len(names)]
        for name in order:
            times[name].append(runners[name].step())
    nbytes = {name: state_bytes(r.optimizer) for name, r in runners.items()}

    fused_ref, foreach_ref = "AdamW (torch, fused)", "AdamW (torch, foreach)"
    adamw_bytes = ADAMW_TENSORS * dtype.itemsize * n_params
    print(f"# {n_params / 1e6:.1f}M parameters in {len(shapes)} tensors (d_model {args.d_model}), {args.dtype}, "
          f"{args.device}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")
    print(f"# {args.steps} timed steps per optimizer, interleaved, after {args.warmup} warmup steps; "
          f"{args.clock} clock; GB/s counts AdamW's {ADAMW_TENSORS * dtype.itemsize} B/param\n")
    header = ("optimizer", "ms/step", "x fused AdamW", "x foreach AdamW", "x floor", "GB/s", "state B/param")
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))

    def ratio(name: str, ref: str) -> float:
        return step_ratio(times[name], times[ref])

    rows = []
    for name in names:
        ms = statistics.median(times[name]) * 1e3
        row = {"optimizer": name, "ms_per_step": ms, "ratio_to_fused_adamw": ratio(name, fused_ref),
               "ratio_to_foreach_adamw": ratio(name, foreach_ref), "ratio_to_copy_floor": ratio(name, COPY_FLOOR),
               "gb_per_s": adamw_bytes / (ms * 1e-3) / 1e9,
               "state_bytes_per_param": nbytes[name] / n_params if name not in (COPY_FLOOR, GRAD_READ) else None}
        if name in ("AdaOpt (default)", "AdaOpt (fused)") and getattr(runners[name].optimizer, "_fused_carry", None):
            row["compile_s"] = runners[name].first_step_s
        rows.append(row)
        state = "" if row["state_bytes_per_param"] is None else f"{row['state_bytes_per_param']:.2f}"
        print(f"| {name} | {ms:.1f} | {row['ratio_to_fused_adamw']:.2f} | {row['ratio_to_foreach_adamw']:.2f} | "
              f"{row['ratio_to_copy_floor']:.2f} | {row['gb_per_s']:.1f} | {state} |")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump({"num_params": n_params, "dtype": args.dtype, "device": args.device, "steps": args.steps,
                       "warmup": args.warmup, "clock": args.clock, "threads": torch.get_num_threads(),
                       "torch": torch.__version__, "adamw_bytes_per_param": ADAMW_TENSORS * dtype.itemsize,
                       "command": "python training_scripts/bench_optimizer_step.py " + shlex.join(
                           argv if argv is not None else sys.argv[1:]),
                       "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
