"""Learning-rate and sparsity schedules against their closed-form values."""
import copy
import math

import pytest
import torch

from kit.train.schedule import ScheduleConfig, lr_multiplier, make_scheduler, sparsity_multiplier


@pytest.mark.parametrize("decay", ["linear", "cosine", "constant"])
def test_lr_multiplier_key_points(decay):
    cfg = ScheduleConfig(total_steps=1000, warmup_steps=50, decay=decay, min_lr_ratio=0.1)
    floor = {"linear": 0.1, "cosine": 0.1, "constant": 1.0}[decay]
    assert lr_multiplier(0, cfg) == pytest.approx(1 / 50)
    assert lr_multiplier(49, cfg) == pytest.approx(1.0)  # last warmup step
    assert lr_multiplier(50, cfg) == pytest.approx(1.0)  # decay starts from the peak
    assert lr_multiplier(1000, cfg) == pytest.approx(floor)
    assert lr_multiplier(5000, cfg) == pytest.approx(floor)
    halfway = {"linear": 1 - 0.9 * 0.5, "cosine": 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)),
               "constant": 1.0}[decay]
    assert lr_multiplier(525, cfg) == pytest.approx(halfway)


@pytest.mark.parametrize("decay", ["linear", "cosine"])
def test_lr_rises_then_decays_monotonically(decay):
    cfg = ScheduleConfig(total_steps=300, warmup_steps=30, decay=decay)
    values = [lr_multiplier(s, cfg) for s in range(320)]
    assert all(a < b for a, b in zip(values[:30], values[1:30]))
    assert all(a >= b for a, b in zip(values[30:], values[31:]))
    assert values[-1] == pytest.approx(cfg.min_lr_ratio)


def test_defaults_resolve_to_five_percent_and_cosine_to_ten_percent():
    cfg = ScheduleConfig(total_steps=2000)
    assert cfg.n_warmup == 100 and cfg.n_sparsity_warmup == 100
    assert lr_multiplier(2000, cfg) == pytest.approx(0.1)
    assert ScheduleConfig(total_steps=10, warmup_steps=0).n_warmup == 0
    assert lr_multiplier(0, ScheduleConfig(total_steps=10, warmup_steps=0)) == pytest.approx(1.0)


def test_warmup_over_the_whole_run_still_ends_at_the_floor():
    cfg = ScheduleConfig(total_steps=10, warmup_steps=10, decay="linear", min_lr_ratio=0.2)
    assert lr_multiplier(9, cfg) == pytest.approx(1.0)
    assert lr_multiplier(10, cfg) == pytest.approx(0.2)


def test_sparsity_multiplier_is_linear_warmup_from_zero():
    cfg = ScheduleConfig(total_steps=100, sparsity_warmup_steps=20)
    assert [sparsity_multiplier(s, cfg) for s in (0, 5, 19, 20, 99)] == pytest.approx([0, 0.25, 0.95, 1, 1])
    assert sparsity_multiplier(0, ScheduleConfig(total_steps=100, sparsity_warmup_steps=0)) == 1.0


@pytest.mark.parametrize("kw, message", [
    (dict(total_steps=0), "total_steps must be a positive int"),
    (dict(total_steps=10, warmup_steps=11), "warmup_steps must be None or an int"),
    (dict(total_steps=10, decay="step"), "decay must be one of"),
    (dict(total_steps=10, min_lr_ratio=1.5), "min_lr_ratio must be in"),
    (dict(total_steps=10, lr=0.0), "lr must be > 0"),
])
def test_config_rejects_bad_values(kw, message):
    with pytest.raises(ValueError, match=message):
        ScheduleConfig(**kw)


def optimizer_and_scheduler(cfg):
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.Adam([param], lr=cfg.lr)
    return param, optimizer, make_scheduler(optimizer, cfg)


def train_steps(param, optimizer, scheduler, n):
    lrs = []
    for _ in range(n):
        param.grad = torch.ones_like(param)
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def test_scheduler_sets_lr_times_multiplier():
    cfg = ScheduleConfig(total_steps=40, warmup_steps=4, lr=1e-3)
    param, optimizer, scheduler = optimizer_and_scheduler(cfg)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(cfg.lr * lr_multiplier(0, cfg))
    lrs = train_steps(param, optimizer, scheduler, 40)
    assert lrs == pytest.approx([cfg.lr * lr_multiplier(s, cfg) for s in range(1, 41)])


def test_scheduler_state_dict_round_trip_continues_identically():
    cfg = ScheduleConfig(total_steps=40, warmup_steps=4, lr=1e-3)
    param, optimizer, scheduler = optimizer_and_scheduler(cfg)
    train_steps(param, optimizer, scheduler, 15)
    # state_dict() shares tensors with the live optimizer, so copy before training on.
    saved = copy.deepcopy((param.detach(), optimizer.state_dict(), scheduler.state_dict()))
    expected = train_steps(param, optimizer, scheduler, 20)

    param2, optimizer2, scheduler2 = optimizer_and_scheduler(cfg)
    with torch.no_grad():
        param2.copy_(saved[0])
    optimizer2.load_state_dict(saved[1])
    scheduler2.load_state_dict(saved[2])
    assert train_steps(param2, optimizer2, scheduler2, 20) == expected
    assert torch.equal(param2, param)


def test_make_scheduler_rejects_optimizer_with_other_lr():
    cfg = ScheduleConfig(total_steps=10, lr=1e-3)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="build the optimizer with lr=cfg.lr"):
        make_scheduler(optimizer, cfg)
