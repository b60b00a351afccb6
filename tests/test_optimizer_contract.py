"""The torch optimizer contract, checked for AdaOpt and for torch.optim.AdamW as the control.

What any ``torch.optim.Optimizer`` is expected to do, written in this project's words after the generic tests
of PyTorch (``test/test_optim.py``, ``TestOptimRenewed``, with the Adam/AdamW entries of
``torch.testing._internal.common_optimizers``) and of kozistr/pytorch_optimizer. Every contract test runs
for both optimizers, with ``foreach`` on and off and as built by default (AdaOpt's default on CPU is its fused
step; AdamW's is foreach): a check that AdamW fails is a wrong check. Where the two legitimately differ (a NaN
gradient), the test states what each does.

The last section holds AdaOpt's own fixes (issue 13; issue 10, item 5), each with a test that failed before.

Run: ``OMP_NUM_THREADS=1 python -m pytest -q tests/test_optimizer_contract.py`` (``-m "not slow"`` skips
the inductor compile).
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from hf_adaopt import AdaOpt
from hf_adaopt.core._variants import build as build_variant

OPTIMIZERS = {"AdaOpt": AdaOpt, "AdamW": torch.optim.AdamW}
# Compiled and eager steps may round differently (AdamW's do, by ~1 ulp).
COMPILE_ATOL = 1e-6


@pytest.fixture(params=[(name, foreach) for name in OPTIMIZERS for foreach in (False, True, None)],
                ids=lambda p: f"{p[0]}-{ {False: 'for_loop', True: 'foreach', None: 'default'}[p[1]]}")
def make(request):
    """``make(params, **kwargs)`` builds the optimizer under test; ``make.name`` says which, ``make.foreach`` its
    ``foreach`` (None: not passed, the default)."""
    name, foreach = request.param

    def build(params, **kwargs):
        return OPTIMIZERS[name](params, **({} if foreach is None else {"foreach": foreach}), **kwargs)

    build.name, build.foreach = name, foreach
    return build


def _model(seed=0, dtype=None):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
    return model.to(dtype) if dtype is not None else model


def _train(model, opt, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    for _ in range(steps):
        x = torch.randn(16, 6, generator=g).to(dtype)
        opt.zero_grad()
        model(x).float().pow(2).mean().backward()
        opt.step()


def _round_trip(obj):
    """torch.save, then torch.load(weights_only=True): what Trainer does with optimizer.pt."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _assert_same(a, b, path="state_dict"):
    assert type(a) is type(b), path
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b or (a != a and b != b), path  # nan == nan here


def _params_equal(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


# -------------------------------------------------------------------------------------------- state dict
def test_state_dict_round_trip_continues_in_lockstep(make):
    model_a = _model()
    opt_a = make(model_a.parameters(), weight_decay=0.01)
    _train(model_a, opt_a, steps=6)
    saved = _round_trip({"model": model_a.state_dict(), "opt": opt_a.state_dict()})

    model_b, model_fresh = _model(seed=9), _model(seed=9)
    model_b.load_state_dict(saved["model"])
    model_fresh.load_state_dict(saved["model"])
    opt_b = make(model_b.parameters(), weight_decay=0.01)
    opt_b.load_state_dict(saved["opt"])
    opt_fresh = make(model_fresh.parameters(), weight_decay=0.01)  # same weights, no optimizer state

    for model, opt in ((model_a, opt_a), (model_b, opt_b), (model_fresh, opt_fresh)):
        _train(model, opt, steps=4, seed=2)
    assert _params_equal(model_a, model_b)
    assert not _params_equal(model_a, model_fresh)  # the loaded state mattered


def test_state_dict_survives_a_weights_only_reload_unchanged(make):
    model = _model()
    opt = make(model.parameters())
    _train(model, opt, steps=3)
    _assert_same(_round_trip(opt.state_dict()), opt.state_dict())


def test_state_dict_of_a_fresh_optimizer_loads(make):
    model = _model()
    opt = make(model.parameters())
    opt.load_state_dict(_round_trip(make(_model().parameters()).state_dict()))
    _train(model, opt, steps=2)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_same_optimizer_loads_a_state_dict_twice(make):
    """As on a second resume (torch's __setstate__ adds keys to ``defaults`` on the first load)."""
    model = _model()
    opt = make(model.parameters())
    _train(model, opt, steps=2)
    saved = _round_trip(opt.state_dict())
    opt.load_state_dict(saved)
    opt.load_state_dict(saved)
    _assert_same(_round_trip(opt.state_dict()), saved)


def test_deepcopy_steps_like_the_original_and_shares_nothing(make):
    model = _model()
    opt = make(model.parameters())
    _train(model, opt, steps=3)
    model_copy, opt_copy = copy.deepcopy((model, opt))
    assert all(p is q for p, q in zip(model_copy.parameters(), opt_copy.param_groups[0]["params"]))
    before = copy.deepcopy(model.state_dict())

    _train(model_copy, opt_copy, steps=3, seed=5)
    assert all(torch.equal(p, before[k]) for k, p in model.state_dict().items())  # the original untouched
    _train(model, opt, steps=3, seed=5)
    assert _params_equal(model, model_copy)


# ------------------------------------------------------------------------------------------------- hooks
def test_step_hooks_run_before_and_after_each_step(make):
    model = _model()
    opt = make(model.parameters())
    calls = []
    pre = opt.register_step_pre_hook(lambda o, args, kwargs: calls.append(("pre", o is opt)))
    post = opt.register_step_post_hook(lambda o, args, kwargs: calls.append(("post", o is opt)))
    _train(model, opt, steps=2)
    assert calls == [("pre", True), ("post", True)] * 2
    pre.remove()
    post.remove()
    _train(model, opt, steps=1)
    assert len(calls) == 4


def test_state_dict_hooks_see_the_optimizer_and_may_replace_the_dict(make):
    model = _model()
    opt = make(model.parameters())
    _train(model, opt, steps=1)
    calls = []
    opt.register_state_dict_pre_hook(lambda o: calls.append(o is opt))
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "note": "added by a hook"})
    sd = opt.state_dict()
    assert calls == [True]
    assert sd["note"] == "added by a hook" and set(sd) == {"state", "param_groups", "note"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_load_state_dict_loads_what_the_pre_hook_returns(make, dtype):
    model = _model(dtype=dtype)
    opt = make(model.parameters())
    _train(model, opt, steps=3)
    saved = _round_trip(opt.state_dict())

    def double_exp_avg(optimizer, sd):
        state = {pid: {**s, "exp_avg": 2 * s["exp_avg"]} for pid, s in sd["state"].items()}
        return {**sd, "state": state}

    opt2 = make(model.parameters())
    opt2.register_load_state_dict_pre_hook(double_exp_avg)
    opt2.load_state_dict(saved)
    for pid, p in enumerate(model.parameters()):
        loaded = opt2.state[p]["exp_avg"]
        assert torch.equal(loaded, (2 * saved["state"][pid]["exp_avg"]).to(loaded.dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_load_state_dict_keeps_the_post_hooks_edits(make, dtype):
    model = _model(dtype=dtype)
    opt = make(model.parameters())
    _train(model, opt, steps=3)
    saved = _round_trip(opt.state_dict())
    calls = []

    def reset_exp_avg(optimizer):
        calls.append(optimizer is opt2)
        for state in optimizer.state.values():
            state["exp_avg"] = torch.full_like(state["exp_avg"], 7.0)

    opt2 = make(model.parameters())
    opt2.register_load_state_dict_post_hook(reset_exp_avg)
    opt2.load_state_dict(saved)
    assert calls == [True]
    assert all(torch.all(opt2.state[p]["exp_avg"] == 7.0) for p in model.parameters())


# ------------------------------------------------------------------------------------------------ groups
def test_param_group_added_later_is_trained(make):
    model = _model()
    opt = make(model[0].parameters())
    _train(model, opt, steps=2)
    head = list(model[2].parameters())
    before = [p.detach().clone() for p in head]
    opt.add_param_group({"params": head})
    assert opt.param_groups[1]["lr"] == opt.defaults["lr"]  # the defaults fill the new group
    _train(model, opt, steps=2)
    assert all(not torch.equal(p, b) and p in opt.state for p, b in zip(head, before))


def _two_vectors(dtype=torch.float64):
    p = nn.Parameter(torch.linspace(1.0, 2.0, 16, dtype=dtype))
    q = nn.Parameter(torch.linspace(1.0, 2.0, 16, dtype=dtype))
    return p, q


def _step_with_same_gradients(opt, params, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        grad = torch.randn(params[0].shape, generator=g, dtype=params[0].dtype)
        for p in params:
            p.grad = grad.clone()
        opt.step()


def test_per_group_lrs_keep_their_ratio(make):
    p, q = _two_vectors()
    opt = make([{"params": [p], "lr": 1e-2}, {"params": [q], "lr": 1e-3}], weight_decay=0.0)
    p0, q0 = p.detach().clone(), q.detach().clone()
    _step_with_same_gradients(opt, [p, q], steps=5)
    assert (p - p0).abs().max() > 1e-6
    torch.testing.assert_close(p - p0, 10.0 * (q - q0), rtol=1e-9, atol=0.0)


def test_group_with_lr_zero_and_group_with_tiny_lr_do_not_move(make):
    p, q = _two_vectors()
    r = nn.Parameter(torch.linspace(1.0, 2.0, 16, dtype=torch.float64))
    opt = make([{"params": [p], "lr": 1e-3}, {"params": [q], "lr": 0.0}, {"params": [r], "lr": 1e-28}],
               weight_decay=0.1)
    q0, r0 = q.detach().clone(), r.detach().clone()
    _step_with_same_gradients(opt, [p, q, r], steps=3)
    assert torch.equal(q, q0)
    assert (r - r0).abs().max() < 1e-20


def test_per_group_weight_decay_shrinks_only_its_group(make):
    p, q = _two_vectors()
    opt = make([{"params": [p], "weight_decay": 0.5}, {"params": [q], "weight_decay": 0.0}])
    p0 = p.detach().clone()
    _step_with_same_gradients(opt, [p, q], steps=1)
    # the same gradient and lr: the groups differ by the decay alone, -lr_eff * wd * p0
    ratio = (p - q) / p0
    assert ratio.max() < 0.0
    torch.testing.assert_close(ratio, torch.full_like(ratio, ratio.mean().item()), rtol=1e-6, atol=0.0)


# -------------------------------------------------------------------------------------------- step calls
def test_closure_is_called_once_with_gradients_enabled_and_its_loss_returned(make):
    model = _model()
    opt = make(model.parameters())
    x = torch.randn(4, 6)
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert calls == [True]
    assert isinstance(loss, torch.Tensor) and loss.requires_grad


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad(make, set_to_none):
    model = _model()
    opt = make(model.parameters())
    model(torch.randn(4, 6)).sum().backward()
    opt.zero_grad(set_to_none=set_to_none)
    for p in model.parameters():
        assert p.grad is None if set_to_none else torch.equal(p.grad, torch.zeros_like(p))


def test_parameter_without_gradient_is_untouched_and_has_no_state(make):
    model = _model()
    unused = nn.Parameter(torch.ones(3))
    opt = make([*model.parameters(), unused], weight_decay=0.1)
    _train(model, opt, steps=3)
    assert torch.equal(unused, torch.ones(3)) and unused not in opt.state


def test_zero_gradients_leave_the_parameters_unchanged(make):
    model = _model()
    opt = make(model.parameters(), weight_decay=0.0)
    before = copy.deepcopy(model.state_dict())
    for _ in range(3):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
    assert all(torch.equal(p, before[k]) for k, p in model.state_dict().items())


# What each does with a NaN gradient: AdaOpt's foreach and reference steps skip the whole step, its fused step (the
# default on CPU) leaves that element as it was and takes the rest of the step; AdamW writes the NaN into the weights.
def test_nan_gradient(make):
    model = _model()
    opt = make(model.parameters())
    _train(model, opt, steps=2)
    before = copy.deepcopy(model.state_dict())
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    model[0].weight.grad[0, 0] = float("nan")
    opt.step()
    if make.name == "AdamW":
        assert torch.isnan(model[0].weight[0, 0])
    elif make.foreach is None:  # fused
        assert model[0].weight[0, 0] == before["0.weight"][0, 0] and torch.isfinite(model[0].weight).all()
        assert not torch.equal(model[0].weight[0, 1:], before["0.weight"][0, 1:])
    else:
        assert all(torch.equal(p, before[k]) for k, p in model.state_dict().items())


def test_zero_size_and_zero_dim_parameters(make):
    empty, empty_2d, scalar = (nn.Parameter(torch.zeros(0)), nn.Parameter(torch.zeros(0, 3)),
                               nn.Parameter(torch.tensor(1.5)))
    opt = make([empty, empty_2d, scalar])
    for _ in range(3):
        empty.grad, empty_2d.grad, scalar.grad = torch.zeros(0), torch.zeros(0, 3), torch.tensor(0.3)
        opt.step()
    assert empty.shape == (0,) and empty_2d.shape == (0, 3)
    assert scalar.item() < 1.5 and math.isfinite(scalar.item())
    assert all(opt.state[p]["exp_avg"].shape == p.shape for p in (empty, empty_2d, scalar))


def test_mixed_dtypes_in_one_optimizer(make):
    dtypes = (torch.float32, torch.float64, torch.bfloat16)
    params = [nn.Parameter(torch.linspace(1.0, 2.0, 8, dtype=d)) for d in dtypes]
    before = [p.detach().clone() for p in params]
    opt = make(params, lr=0.05)  # steps above bf16's resolution at 1.0 (2**-7)
    for _ in range(3):
        for p in params:
            p.grad = torch.full_like(p, 0.5)
        opt.step()
    for p, b, d in zip(params, before, dtypes):
        assert p.dtype == d and torch.isfinite(p).all() and not torch.equal(p, b)


@pytest.fixture
def default_float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def test_default_dtype_float64(make, default_float64):
    model = _model()
    opt = make(model.parameters())
    before = copy.deepcopy(model.state_dict())
    _train(model, opt, steps=3)
    for k, p in model.state_dict().items():
        assert p.dtype == torch.float64 and not torch.equal(p, before[k])
        assert opt.state[dict(model.named_parameters())[k]]["exp_avg"].dtype == torch.float64


def _cpu_grad_scaler():
    try:
        return torch.amp.GradScaler("cpu", enabled=True)
    except (RuntimeError, TypeError, AttributeError) as err:  # older torch: CUDA only
        pytest.skip(f"no CPU GradScaler in torch {torch.__version__}: {err}")


def test_grad_scaler_skips_the_step_on_an_inf_gradient(make):
    model = _model()
    opt = make(model.parameters())
    scaler = _cpu_grad_scaler()
    steps = []
    opt.register_step_pre_hook(lambda o, args, kwargs: steps.append(1))
    before = copy.deepcopy(model.state_dict())
    scale = scaler.get_scale()

    scaler.scale(model(torch.randn(4, 6)).pow(2).mean()).backward()
    model[0].weight.grad[0, 0] = float("inf")
    scaler.step(opt)
    scaler.update()
    assert steps == [] and scaler.get_scale() < scale
    assert all(torch.equal(p, before[k]) for k, p in model.state_dict().items())

    opt.zero_grad()
    scaler.scale(model(torch.randn(4, 6)).pow(2).mean()).backward()
    scaler.step(opt)
    scaler.update()
    assert steps == [1] and not _params_equal(model, _model())


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_step_equals_eager(make, backend):
    if backend == "inductor" and not make.foreach:
        pytest.skip("inductor is compiled once per optimizer (foreach on) to keep the file fast")
    torch._dynamo.reset()
    eager_model = _model()
    compiled_model = copy.deepcopy(eager_model)
    eager_opt, compiled_opt = make(eager_model.parameters()), make(compiled_model.parameters())
    compiled_step = torch.compile(compiled_opt.step, backend=backend)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        x = torch.randn(8, 6, generator=g)
        for model in (eager_model, compiled_model):
            model.zero_grad()
            model(x).pow(2).mean().backward()
        eager_opt.step()
        compiled_step()
    for p, q in zip(eager_model.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(q, p, atol=COMPILE_ATOL, rtol=0.0)
    assert not _params_equal(eager_model, _model())
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------------ error inputs
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"lr": -1.0}, ValueError, "Invalid learning rate: -1.0"),
        ({"lr": float("nan")}, ValueError, "Invalid learning rate: nan"),
        ({"betas": (1.0, 0.999)}, ValueError, "Invalid beta parameter at index 0: 1.0"),
        ({"betas": (0.9, 1.0)}, ValueError, "Invalid beta parameter at index 1: 1.0"),
        ({"eps": -1e-8}, ValueError, "Invalid epsilon value: -1e-08"),
        ({"weight_decay": -0.1}, ValueError, "Invalid weight_decay value: -0.1"),
        ({"momentum": 0.9}, TypeError, "momentum"),
    ],
)
def test_invalid_arguments_are_refused(make, kwargs, error, match):
    with pytest.raises(error, match=match):
        make(_model().parameters(), **kwargs)


def test_lr_as_a_tensor_is_refused_on_the_foreach_path(make):
    if not make.foreach:
        pytest.skip("AdamW accepts a Tensor lr on its for-loop path; AdaOpt's refusal is tested below")
    with pytest.raises(ValueError, match="lr as a Tensor is not supported"):
        make(_model().parameters(), lr=torch.tensor(1e-3))


@pytest.mark.parametrize(
    "params, error, match",
    [
        (lambda: nn.Parameter(torch.ones(2)), TypeError, "iterable of Tensors or dicts"),
        (lambda: [{"params": {nn.Parameter(torch.ones(2))}}], TypeError, "ordered collections"),
        (lambda: [], ValueError, "empty parameter list"),
        (lambda: [torch.ones(2, requires_grad=True) * 2], ValueError, "non-leaf"),
        (lambda: (lambda p: [{"params": [p]}, {"params": [p]}])(nn.Parameter(torch.ones(2))), ValueError,
         "more than one parameter group"),
    ],
    ids=["one_tensor", "set", "empty", "non_leaf", "param_in_two_groups"],
)
def test_invalid_params_are_refused(make, params, error, match):
    with pytest.raises(error, match=match):
        make(params())


def test_add_param_group_refuses_a_non_dict(make):
    opt = make(_model().parameters())
    with pytest.raises(TypeError, match="param_group must be a dict"):
        opt.add_param_group([nn.Parameter(torch.ones(2))])


def test_load_state_dict_refuses_another_group_count(make):
    model = _model()
    opt = make(model.parameters())
    other = make([{"params": model[0].parameters()}, {"params": model[2].parameters()}])
    with pytest.raises(ValueError, match="different number of parameter groups"):
        opt.load_state_dict(other.state_dict())


def test_sparse_gradient_is_refused_at_step(make):
    emb = nn.Embedding(10, 4, sparse=True)
    opt = make(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="[Ss]parse"):
        opt.step()


# ===================================================================================================
# AdaOpt's own fixes (issue 13; issue 10, item 5): each test failed before the fix
# ===================================================================================================
def test_base_scale_starts_at_the_largest_group_lr():
    p, q = _two_vectors()
    opt = AdaOpt([{"params": [p], "lr": 1e-5}, {"params": [q], "lr": 1e-3}])
    assert opt.diagnostics()["base_scale"] == 1e-3
    _step_with_same_gradients(opt, [p, q], steps=1)
    assert opt.param_groups[0]["reference_lr"] == 1e-3
    assert opt.param_groups[0]["effective_lr"] == pytest.approx(opt.param_groups[1]["effective_lr"] / 100)


def test_equal_group_lrs_step_exactly_like_one_group():
    """The Trainer's decay / no-decay groups: splitting the parameters changes nothing."""
    a, b = _model(), _model()
    one = AdaOpt(a.parameters())
    two = AdaOpt([{"params": a_part} for a_part in (b[0].parameters(), b[2].parameters())])
    _train(a, one, steps=8)
    _train(b, two, steps=8)
    assert _params_equal(a, b)


def test_group_added_after_the_first_step_keeps_its_lr_ratio():
    model = _model()
    opt = AdaOpt(model[0].parameters(), lr=1e-3)
    _train(model, opt, steps=3)
    opt.add_param_group({"params": model[2].parameters(), "lr": 1e-4})
    _train(model, opt, steps=1)
    first, added = opt.param_groups
    assert added["reference_lr"] == 1e-3
    assert added["effective_lr"] == pytest.approx(first["effective_lr"] / 10)


def test_checkpoint_without_reference_lr_loads_and_steps():
    """Checkpoints saved before the reference lr existed: it is set from the groups' lrs at the next step."""
    model = _model()
    opt = AdaOpt([{"params": model[0].parameters(), "lr": 1e-3}, {"params": model[2].parameters(), "lr": 1e-4}])
    _train(model, opt, steps=3)
    saved = _round_trip(opt.state_dict())
    for group in saved["param_groups"]:
        del group["reference_lr"]
    opt2 = AdaOpt([{"params": model[0].parameters(), "lr": 1e-3}, {"params": model[2].parameters(), "lr": 1e-4}])
    opt2.load_state_dict(saved)
    _train(model, opt2, steps=1)
    assert [g["reference_lr"] for g in opt2.param_groups] == [1e-3, 1e-3]


@pytest.mark.parametrize("where", ["constructor", "add_param_group"])
def test_complex_parameters_are_refused_up_front(where):
    z = nn.Parameter(torch.ones(3, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"complex parameters \(got dtype torch.complex64.*view_as_real"):
        if where == "constructor":
            AdaOpt([z])
        else:
            AdaOpt([nn.Parameter(torch.ones(3))]).add_param_group({"params": [z]})


def test_load_state_dict_hooks_apply_and_bf16_state_stays_fp32():
    model = _model(dtype=torch.bfloat16)
    opt = AdaOpt(model.parameters())
    _train(model, opt, steps=3)
    saved = _round_trip(opt.state_dict())
    opt2 = AdaOpt(model.parameters())
    opt2.register_load_state_dict_pre_hook(
        lambda o, sd: {**sd, "state": {k: {**s, "exp_avg_sq": s["exp_avg_sq"] / 3} for k, s in sd["state"].items()}})
    opt2.load_state_dict(saved)
    for pid, p in enumerate(model.parameters()):
        assert opt2.state[p]["exp_avg_sq"].dtype == torch.float32
        assert torch.equal(opt2.state[p]["exp_avg_sq"], saved["state"][pid]["exp_avg_sq"] / 3)  # fp32, exact


@pytest.mark.parametrize("foreach", [False, True])
def test_lr_as_a_tensor_is_a_value_error(foreach):
    with pytest.raises(ValueError, match="lr as a Tensor is not supported"):
        AdaOpt(_model().parameters(), lr=torch.tensor(1e-3), foreach=foreach)


@pytest.mark.parametrize("lr", [float("inf"), float("nan"), -1.0])
def test_non_finite_or_negative_lr_is_refused_in_the_constructor(lr):
    with pytest.raises(ValueError, match=f"Invalid learning rate: {lr}"):
        AdaOpt(_model().parameters(), lr=lr)


@pytest.mark.parametrize("lr", [-1.0, float("nan"), float("inf"), torch.tensor(1e-3)], ids=str)
def test_add_param_group_refuses_a_bad_lr_before_adding_the_group(lr):
    model = _model()
    opt = AdaOpt(model[0].parameters())
    with pytest.raises(ValueError, match="learning rate|lr as a Tensor"):
        opt.add_param_group({"params": model[2].parameters(), "lr": lr})
    assert len(opt.param_groups) == 1
    _train(model, opt, steps=1)  # the optimizer is still whole


def test_state_of_another_model_is_refused_at_load():
    small, large = nn.Linear(4, 3), nn.Linear(10, 7)
    opt = AdaOpt(small.parameters())
    small(torch.randn(2, 4)).sum().backward()
    opt.step()
    with pytest.raises(ValueError, match=r"parameter 0 \(shape \(7, 10\)\) has exp_avg of shape \(3, 4\)"):
        AdaOpt(large.parameters()).load_state_dict(opt.state_dict())


@pytest.mark.parametrize("stepped", [False, True])
def test_state_of_another_optimizer_is_refused_at_load(stepped):
    model = nn.Linear(4, 3)
    adam = torch.optim.Adam(model.parameters())
    if stepped:
        model(torch.randn(2, 4)).sum().backward()
        adam.step()
    with pytest.raises(ValueError, match=r"lacks \['adapt_rate'.*not a state dict of AdaOpt"):
        AdaOpt(model.parameters()).load_state_dict(adam.state_dict())


def test_state_without_adaopt_keys_is_refused_at_load():
    """A state dict edited into AdaOpt's group layout but still holding Adam's per-parameter state."""
    model = nn.Linear(4, 3)
    adam = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    adam.step()
    opt = AdaOpt(model.parameters())
    sd = {"state": adam.state_dict()["state"], "param_groups": opt.state_dict()["param_groups"]}
    with pytest.raises(ValueError, match=r"parameter 0 lacks \['direction', 'pre'\]"):
        opt.load_state_dict(sd)


@pytest.mark.parametrize(
    "setting",
    [{"adapt_rate": 0.3}, {"warmup_steps": 2}, {"loss_spike_threshold": None}, {"foreach": True},
     {"initial_decrease": 0.1}, {"progress_power": None}, {"betas": (0.8, 0.999)}],
    ids=lambda s: next(iter(s)),
)
def test_optimizer_wide_setting_in_a_group_is_refused(setting):
    model = _model()
    key = "betas\\[0\\]" if "betas" in setting else next(iter(setting))
    with pytest.raises(ValueError, match=f"{key}=.* is optimizer-wide"):
        build_variant([{"params": model[0].parameters()}, {"params": model[2].parameters(), **setting}],
                      foreach=False)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("own", [0, 1], ids=["first-group", "second-group"])
def test_eps_is_read_per_group(foreach, own):
    """Two groups, the same gradient, one with eps 1: Adam's first direction g / (|g| + eps) is that group's own
    (read from the other group, both would move alike)."""
    p, q = _two_vectors()
    eps = [1e-8, 1e-8]
    eps[own] = 1.0
    opt = AdaOpt([{"params": [p], "eps": eps[0]}, {"params": [q], "eps": eps[1]}], weight_decay=0.0,
                 foreach=foreach)
    p0, q0 = p.detach().clone(), q.detach().clone()
    _step_with_same_gradients(opt, [p, q], steps=1)
    g = p.grad
    moves = (p - p0, q - q0)
    # the first step: m_hat = g, v_hat = g^2, the same step size for both (equal lrs, the gate open)
    torch.testing.assert_close(moves[own] * (g.abs() + eps[own]), moves[1 - own] * (g.abs() + eps[1 - own]),
                               rtol=1e-9, atol=0.0)
    assert not torch.allclose(moves[0], moves[1], rtol=1e-3)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("own", [0, 1], ids=["first-group", "second-group"])
def test_variance_power_is_read_per_group(foreach, own):
    """After warmup the gate phi ~ share^p moves the step between tensors: with the same gradients, the group with
    p = 1 steps share times as far as the group with p = 0 (read from the other group, both would step alike)."""
    p, q = _two_vectors()
    powers = [0.0, 0.0]
    powers[own] = 1.0
    opt = AdaOpt([{"params": [p], "variance_power": powers[0]}, {"params": [q], "variance_power": powers[1]}],
                 weight_decay=0.0, warmup_steps=3, foreach=foreach)
    _step_with_same_gradients(opt, [p, q], steps=6)
    p0, q0 = p.detach().clone(), q.detach().clone()
    _step_with_same_gradients(opt, [p, q], steps=1, seed=1)
    moves = (p - p0, q - q0)
    share = opt.diagnostics()["variance_factor"]  # both tensors read the same share: their gradients are equal
    assert 0.0 < share < 0.9
    torch.testing.assert_close(moves[own], share * moves[1 - own], rtol=1e-9, atol=0.0)


def test_group_settings_that_are_per_group_are_accepted():
    model = _model()
    opt = AdaOpt([{"params": model[0].parameters()},
                  {"params": model[2].parameters(), "betas": (0.9, 0.99), "eps": 1e-6, "weight_decay": 0.1,
                   "variance_power": 0.5}])
    _train(model, opt, steps=2)
    assert opt.param_groups[1]["betas"] == (0.9, 0.99)


# torch's per-group behaviour flags (test_optim's test_param_groups_weight_decay passes its kwargs in every group)
@pytest.mark.parametrize("flags", [{"foreach": None, "fused": None}, {"maximize": False}, {"capturable": False},
                                   {"differentiable": False}], ids=lambda f: "-".join(f))
def test_a_per_group_flag_equal_to_what_adaopt_does_is_accepted(flags):
    model = _model()
    opt = AdaOpt([{"params": model[0].parameters()}, {"params": model[2].parameters(), "weight_decay": 0.0, **flags}])
    _train(model, opt, steps=2)
    assert all(opt.param_groups[1].get(key) is None for key in flags)  # None, or dropped: AdaOpt has no maximize


@pytest.mark.parametrize("foreach", [False, True])
def test_the_optimizers_own_foreach_and_fused_are_accepted_in_every_group(foreach):
    """As torch's test passes them: the optimizer's kwargs repeated in each group."""
    model = _model()
    kwargs = {"foreach": foreach, "fused": False, "maximize": False}
    opt = AdaOpt([{"params": model[0].parameters(), **kwargs}, {"params": model[2].parameters(), **kwargs}],
                 foreach=foreach, fused=False)
    _train(model, opt, steps=2)
    assert [g["foreach"] for g in opt.param_groups] == [foreach, foreach]


@pytest.mark.parametrize("setting, match", [
    ({"foreach": True}, "foreach=True in param group 1: foreach is optimizer-wide .*here None"),
    ({"fused": False}, "fused=False in param group 1: fused is optimizer-wide .*here None"),
    ({"maximize": True}, r"maximize=True in param group 1: AdaOpt has no maximize \(only maximize=False"),
    ({"capturable": True}, "capturable=True in param group 1: AdaOpt has no capturable"),
    ({"differentiable": True}, "differentiable=True in param group 1: AdaOpt has no differentiable"),
], ids=lambda s: next(iter(s)) if isinstance(s, dict) else None)
def test_a_per_group_flag_adaopt_cannot_honour_is_refused_naming_the_group(setting, match):
    model = _model()
    with pytest.raises(ValueError, match=match):
        AdaOpt([{"params": model[0].parameters()}, {"params": model[2].parameters(), **setting}])


def test_add_param_group_names_the_index_the_group_would_have():
    model = _model()
    opt = AdaOpt(model[0].parameters())
    with pytest.raises(ValueError, match="maximize=True in param group 1"):
        opt.add_param_group({"params": model[2].parameters(), "maximize": True})
    assert len(opt.param_groups) == 1
