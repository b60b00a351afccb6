"""The optimizer registry: errors, settings, the step each optimizer applies, and that every installed one trains."""

from __future__ import annotations

import sys

import pytest
import torch
from fixtures.torch_threads import one_thread  # noqa: F401 (autouse)

from hf_adaopt import AdaOpt
from hf_adaopt.lab import registry
from hf_adaopt.lab.registry import available_optimizers, build_optimizer


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    x = torch.randn(64, 8, generator=g)
    y = (x @ torch.randn(8, 3, generator=g)).argmax(-1)
    return model, x, y


def test_optimizers_without_a_package_are_always_available():
    assert set(registry.BUILTIN) <= set(available_optimizers())
    assert "adaopt" in registry.BUILTIN


def test_unknown_name_raises_value_error_listing_the_names():
    model, _, _ = _problem()
    with pytest.raises(ValueError, match="Unknown optimizer 'lamb'.*adaopt, adaopt-plain, sgd, adam"):
        build_optimizer("lamb", model.parameters(), lr=1e-3)


def test_non_positive_lr_is_rejected():
    model, _, _ = _problem()
    with pytest.raises(ValueError, match="learning rate.*0"):
        build_optimizer("adam", model.parameters(), lr=0.0)


def test_missing_peer_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "prodigyopt", None)  # makes `import prodigyopt` raise ImportError
    model, _, _ = _problem()
    with pytest.raises(ImportError, match=r"pip install 'hf-adaopt\[peers\]'"):
        build_optimizer("prodigy", model.parameters(), lr=1.0)


def test_classes_and_settings():
    model, _, _ = _problem()
    params = list(model.parameters())
    sgd = build_optimizer("sgd", params, lr=0.1)
    assert type(sgd) is torch.optim.SGD and sgd.defaults["momentum"] == 0.9
    adam = build_optimizer("adam", params, lr=1e-3)
    assert type(adam) is torch.optim.Adam
    assert adam.defaults["betas"] == (0.9, 0.999) and adam.defaults["eps"] == 1e-8
    assert type(build_optimizer("adamw", params, lr=1e-3, weight_decay=0.1)) is torch.optim.AdamW
    assert type(build_optimizer("rmsprop", params, lr=1e-3)) is torch.optim.RMSprop
    assert isinstance(build_optimizer("adaopt", params, lr=1e-3), AdaOpt)
    # keyword arguments reach the constructor
    assert build_optimizer("sgd", params, lr=0.1, momentum=0.5, nesterov=True).defaults["nesterov"] is True


@pytest.mark.parametrize("name", available_optimizers())
def test_training_arguments_reach_the_optimizers_that_take_them(name):
    from types import SimpleNamespace

    spec = registry.get(name)
    args = SimpleNamespace(learning_rate=spec.default_lr, weight_decay=0.01, adam_beta1=0.8, adam_beta2=0.95,
                           adam_epsilon=1e-7)
    model, _, _ = _problem()
    opt = build_optimizer(name, model.parameters(), **spec.training_kwargs(args))  # no TypeError: all are taken
    assert opt.defaults["lr"] == spec.default_lr and opt.defaults["weight_decay"] == 0.01
    if spec.takes_betas:
        assert tuple(opt.defaults["betas"]) == (0.8, 0.95)
    if spec.takes_eps:
        assert opt.defaults["eps"] == 1e-7


@pytest.mark.parametrize(
    ("name", "group", "expected"),
    [
        ("adam", {"lr": 1e-3, "d": 2.0}, 1e-3),  # a learning rate is the step, whatever else the group holds
        ("prodigy", {"lr": 0.5, "d": 2e-4}, 1e-4),  # lr is a multiplier of the estimate d
        ("dadapt", {"lr": 0.5, "d": 2e-4}, 1e-4),
        ("ppsf", {"lr": 0.5, "d": 2e-4}, 1e-4),
        ("dog", {"lr": 1.0, "eta": [torch.tensor(3e-5)]}, 3e-5),
        ("dog", {"lr": 1.0, "eta": []}, 1.0),  # before its first step
        ("schedulefree", {"lr": 1e-3, "scheduled_lr": 2.5e-4}, 2.5e-4),  # during its warmup
    ],
)
def test_step_size_is_the_step_the_optimizer_applies(name, group, expected):
    assert registry.get(name).step_size(group) == pytest.approx(expected)


def test_step_size_of_an_optimizer_not_in_the_table_is_its_lr():
    opt = torch.optim.Adagrad([torch.nn.Parameter(torch.zeros(1))], lr=0.3)
    assert registry.step_size(opt, opt.param_groups[0]) == 0.3


def test_every_optimizer_has_one_display_name_used_by_the_reports():
    labels = [registry.label(name) for name in registry.OPTIMIZERS]
    assert len(set(labels)) == len(labels) and all(labels)
    assert registry.label("adaopt") == "AdaOpt" and registry.label("dadapt") == "D-Adaptation"
    assert registry.label("not-in-the-table") == "not-in-the-table"


def test_param_groups_keep_their_own_weight_decay():
    model, _, _ = _problem()
    groups = [
        {"params": [model[0].weight, model[2].weight], "weight_decay": 0.1},
        {"params": [model[0].bias, model[2].bias], "weight_decay": 0.0},
    ]
    opt = build_optimizer("adamw", groups, lr=1e-3, weight_decay=0.5)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


@pytest.mark.parametrize("name", available_optimizers())
def test_every_available_optimizer_lowers_the_loss(name):
    torch.manual_seed(0)
    model, x, y = _problem()
    opt = build_optimizer(name, model.parameters(), lr=registry.get(name).default_lr if name != "sgd" else 0.05)
    if hasattr(opt, "train"):
        opt.train()  # schedule-free: Trainer calls train()/eval() itself
    loss_fn = torch.nn.functional.cross_entropy
    first = loss_fn(model(x), y).item()
    for _ in range(50):
        loss = loss_fn(model(x), y)
        if hasattr(opt, "set_loss"):
            opt.set_loss(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    if hasattr(opt, "eval"):
        opt.eval()
    last = loss_fn(model(x), y).item()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert last < first, (name, first, last)
