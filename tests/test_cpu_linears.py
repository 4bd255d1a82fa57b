"""oneDNN linear layers on the CPU (`cpu_linears.py`): the op against `F.linear` (its reference), the scoped swap of
`nn.Linear.forward` and its limits, and that DSpark generation and its cost profile run through it."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_same_greedy, primed_drafter, tiny_target
from torch import nn

from dspark_hf import env
from dspark_hf.decoding import profile
from dspark_hf.decoding.profile import profile_path
from dspark_hf.kernels import cpu_linears
from dspark_hf.kernels.cpu_linears import (
    MIN_WEIGHT_ELEMENTS,
    linear,
    onednn_available,
    onednn_linear,
    onednn_linears,
    pack_weight,
    uses_onednn,
)

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN (mkldnn) linear op"),
]


def swapped(module: nn.Module) -> bool:
    return "forward" in module.__dict__


@pytest.fixture
def small_layers_routed(monkeypatch):
    """Route the tiny test layers too (by default only weights of `MIN_WEIGHT_ELEMENTS` entries and up are)."""
    monkeypatch.setattr(cpu_linears, "MIN_WEIGHT_ELEMENTS", 0)


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8, 17, 64])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_onednn_linear_matches_f_linear_on_fresh_inputs(rows, bias, packed):
    gen = torch.Generator().manual_seed(1000 * rows + 10 * bias + packed)
    layer = nn.Linear(96, 300, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(300, 96, generator=gen))
    weight, b = layer.weight.detach(), layer.bias
    for shape in ((rows, 96), (1, rows, 96), (2, rows, 96)):
        x = torch.randn(*shape, generator=gen)
        with torch.no_grad():
            out = onednn_linear(x, pack_weight(weight) if packed else weight, b)
        assert out.shape == (*shape[:-1], 300) and out.dtype == torch.float32
        torch.testing.assert_close(out, F.linear(x, weight, b), rtol=1e-5, atol=1e-4)  # fp32, other summation order


def test_each_block_computes_from_the_weights_as_they_are_then(small_layers_routed):
    """The packed copy lives for one block: a weight changed between blocks without PyTorch's version counter knowing
    (a fused optimizer step, a `.data` write such as an adapter merge) is still what the next block computes with."""
    layer = nn.Linear(64, 32)
    x = torch.randn(5, 64)
    with torch.no_grad():
        with onednn_linears(layer):
            torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
        version = layer.weight._version
        layer.weight.data.mul_(2)
        assert layer.weight._version == version  # invisible to the version counter
        with onednn_linears(layer):
            torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


def test_linear_keeps_autograd_and_other_dtypes_on_the_default_path(small_layers_routed):
    """oneDNN's op has no backward: with a graph to build (training), and for non-fp32 inputs, `linear` is F.linear."""
    layer = nn.Linear(16, 8)
    x = torch.randn(3, 16)
    out = linear(x, layer.weight, layer.bias)
    assert out.grad_fn is not None and "Addmm" in type(out.grad_fn).__name__
    out.sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.shape == (8, 16)
    with torch.no_grad():
        assert linear(x, layer.weight, layer.bias).grad_fn is None
        half = linear(x.bfloat16(), layer.weight.bfloat16())
        assert half.dtype == torch.bfloat16
        torch.testing.assert_close(half, F.linear(x.bfloat16(), layer.weight.bfloat16()))
    with onednn_linears(layer):  # a swapped layer still trains
        layer(x).sum().backward()


def test_swap_is_scoped_selective_nested_and_restored_on_error(small_layers_routed):
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4, bias=False), nn.Linear(4, 4).bfloat16())
    subclass = type("QuantLinear", (nn.Linear,), {})(4, 4)  # a subclass (e.g. a quantized layer) keeps its forward
    model.append(subclass)
    x = torch.randn(3, 8)
    with torch.no_grad():
        reference = model[:3](x)
        with onednn_linears(model) as routed:
            assert routed == 2 and swapped(model[0]) and swapped(model[2])
            assert not swapped(model[3]) and not swapped(subclass)  # bf16 and the subclass stay
            torch.testing.assert_close(model[:3](x), reference, rtol=1e-5, atol=1e-5)
            with onednn_linears(model) as inner:  # already swapped: the inner block neither swaps nor restores
                assert inner == 0
            assert swapped(model[0])
        assert not any(swapped(m) for m in model)
        with pytest.raises(RuntimeError, match="boom"), onednn_linears(model):
            raise RuntimeError("boom")
        assert not any(swapped(m) for m in model)


def test_only_weights_large_enough_to_repay_the_call_go_to_onednn(monkeypatch):
    side = int(MIN_WEIGHT_ELEMENTS**0.5)
    model = nn.Sequential(nn.Linear(side, side), nn.Linear(side, side // 2), nn.Linear(side // 2, side))
    x = torch.randn(2, side)
    with torch.no_grad():
        reference = model(x)
        with onednn_linears(model) as routed:
            assert routed == 1 and swapped(model[0]) and not swapped(model[1]) and not swapped(model[2])
            torch.testing.assert_close(model(x), reference, rtol=1e-5, atol=1e-4)
        assert uses_onednn(model) and not uses_onednn(model[1:])
        calls = []
        monkeypatch.setattr(cpu_linears, "onednn_linear", lambda *a: calls.append(a[1].shape) or onednn_linear(*a))
        for layer in model:
            torch.testing.assert_close(
                linear(x[:, : layer.in_features], layer.weight),
                layer(x[:, : layer.in_features]) - layer.bias,
                rtol=1e-5,
                atol=1e-4,
            )
        assert calls == [(side, side)]


def test_env_turns_it_off(monkeypatch):
    model = nn.Linear(8, 8)
    monkeypatch.setenv(env.ONEDNN, "0")
    assert not onednn_available() and not uses_onednn(model)
    with onednn_linears(model) as routed:
        assert routed == 0 and not swapped(model)


def test_generation_routes_target_and_drafter_and_profiles_as_it_runs(tmp_path, monkeypatch, small_layers_routed):
    monkeypatch.setenv("DSPARK_HF_CACHE", str(tmp_path))
    monkeypatch.setenv(env.ONEDNN, "1")  # routed whatever this machine would measure
    target = tiny_target(seed=4, sharp=4.0)
    prompt = torch.randint(0, 32, (1, 6), generator=torch.Generator().manual_seed(4))
    drafter = primed_drafter(target, prompt)
    seen = []
    hooks = [
        m.register_forward_pre_hook(lambda m, _: seen.append(swapped(m)))
        for m in (target.lm_head, target.model.layers[0].mlp.down_proj, drafter.markov_out)
    ]
    assert_same_greedy(target, drafter, prompt, max_new_tokens=40, gating="scheduler")
    assert drafter.stats.tau > 1.5, "drafts must be accepted for verification forwards of several tokens to run"
    plain_calls = seen.index(True)  # plain generate() ran first (assert_same_greedy): its forwards were not routed
    assert plain_calls > 0 and not any(seen[:plain_calls]) and all(seen[plain_calls:]), "all of the DSpark call"
    assert not any(swapped(m) for m in (*target.modules(), *drafter.modules()))  # restored after generate()
    for hook in hooks:
        hook.remove()
    # the cost profile is measured as generation runs, so the two settings keep separate files, under the same
    # names inside the routing block (where generation builds its scheduler) as outside
    routed_path = profile_path(target)
    with onednn_linears(target):
        assert profile_path(target) == routed_path
    assert [p.name for p in (tmp_path / "profiles").iterdir()] == [routed_path.name]  # what generate() measured
    monkeypatch.setenv(env.ONEDNN, "0")
    assert profile_path(target) != routed_path
    assert_same_greedy(target, drafter, prompt, max_new_tokens=40, gating="scheduler")
    assert profile_path(target).exists()


def test_a_bf16_target_is_not_routed():
    target = tiny_target(seed=2).bfloat16()
    assert not uses_onednn(target)
    with onednn_linears(target) as routed:
        assert routed == 0 and not any(swapped(m) for m in target.modules())


@pytest.mark.parametrize(
    "faster, rows",
    [("oooooooo", 1), ("dddooooo", 4), ("dodooooo", 4), ("oooooood", None), ("dddddddd", None)],
)
def test_auto_routes_forwards_of_as_many_tokens_as_onednn_was_measured_faster_for(
    tmp_path, monkeypatch, small_layers_routed, faster, rows
):
    """`auto` (the default) times the target's forwards of 1..8 tokens both ways once, caches the verdict, and
    generate() computes with oneDNN the forwards of at least that many tokens. The timings are made to disagree in a
    known pattern (`faster[n - 1]`: which way is faster at n tokens): real ones on a tiny model say nothing."""
    monkeypatch.setenv("DSPARK_HF_CACHE", str(tmp_path))
    monkeypatch.delenv(env.ONEDNN, raising=False)
    measured = []

    def timed(target, batch_sizes, max_tokens, repeats, progress, onednn):
        measured.append(onednn)
        return {1: [0.001 if (way == "o") == onednn else 0.002 for way in faster[:max_tokens]]}

    monkeypatch.setattr(profile, "measure_verify", timed)
    monkeypatch.setattr(profile, "measure_call", lambda target, rows, onednn: 1.0 if onednn else 2.0)
    monkeypatch.setattr(profile, "_ONEDNN_ROWS", {})
    packed, computed_rows = set(), []  # rows of the products swapped layers computed on their packed weights

    def pack(weight):
        packed.add(id(out := pack_weight(weight)))
        return out

    def recorded(x, weight, bias=None):
        if id(weight) in packed:
            computed_rows.append(x.numel() // x.shape[-1])
        return onednn_linear(x, weight, bias)

    monkeypatch.setattr(cpu_linears, "pack_weight", pack)
    monkeypatch.setattr(cpu_linears, "onednn_linear", recorded)
    target = tiny_target(seed=4, sharp=4.0)
    prompt = torch.randint(0, 32, (1, 6), generator=torch.Generator().manual_seed(4))
    drafter = primed_drafter(target, prompt)
    packs = cpu_linears.packs_made()
    assert_same_greedy(target, drafter, prompt, max_new_tokens=20, gating="fixed")
    assert measured == [True, False, True, False]  # both ways, in turn, once
    assert (cpu_linears.packs_made() > packs) == (rows is not None)  # counted: a round that packs is not timed
    if rows is None:
        assert computed_rows == []
    else:  # the prompt's forward (6 tokens) at least, and never a forward of fewer tokens than measured to pay
        assert computed_rows and min(computed_rows) >= rows
    assert rows != 1 or 1 in computed_rows  # one-token forwards too where oneDNN was faster at every count
    assert not any(swapped(m) for m in target.modules())
    cached = [p for p in (tmp_path / "profiles").iterdir() if p.name.startswith("onednn-")]
    assert len(cached) == 1 and json.loads(cached[0].read_text())["from_tokens"] == rows
    monkeypatch.setattr(profile, "_ONEDNN_ROWS", {})  # a new process reads the verdict from disk
    assert profile.onednn_rows(target) == rows and len(measured) == 4
    monkeypatch.setenv(env.ONEDNN, "sometimes")
    with pytest.raises(ValueError, match="DSPARK_ONEDNN must be auto, 1 or 0"):
        profile.onednn_rows(target)


def test_auto_never_routes_where_a_calls_worth_of_forwards_ran_slower(tmp_path, monkeypatch, small_layers_routed):
    """Faster forwards alone are not enough: on a 2-core Xeon the forwards of 4-8 tokens were faster each, yet a
    call's worth of them, packing included, took longer. Then generate() packs nothing."""
    monkeypatch.setenv("DSPARK_HF_CACHE", str(tmp_path))
    monkeypatch.delenv(env.ONEDNN, raising=False)

    def timed(target, batch_sizes, max_tokens, repeats, progress, onednn):
        return {1: [0.001 if onednn else 0.002] * max_tokens}  # oneDNN faster at every count

    calls = []

    def call(target, rows, onednn):
        calls.append((rows, onednn))
        return 2.0 if onednn else 1.0

    monkeypatch.setattr(profile, "measure_verify", timed)
    monkeypatch.setattr(profile, "measure_call", call)
    monkeypatch.setattr(profile, "_ONEDNN_ROWS", {})
    target = tiny_target(seed=4, sharp=4.0)
    assert profile.onednn_rows(target) is None
    assert calls == [(1, True), (1, False), (1, True), (1, False)]  # both ways, in turn, from the counts' verdict
    (cached,) = [p for p in (tmp_path / "profiles").iterdir() if p.name.startswith("onednn-")]
    record = json.loads(cached.read_text())
    assert record["from_tokens"] is None and (record["call_onednn_s"], record["call_default_s"]) == (2.0, 1.0)
    prompt = torch.randint(0, 32, (1, 6), generator=torch.Generator().manual_seed(4))
    drafter = primed_drafter(target, prompt)
    packs = cpu_linears.packs_made()
    assert_same_greedy(target, drafter, prompt, max_new_tokens=20, gating="fixed")
    assert cpu_linears.packs_made() == packs


def test_the_measurement_itself_times_both_ways_and_caches_its_verdict(tmp_path, monkeypatch, small_layers_routed):
    monkeypatch.setenv("DSPARK_HF_CACHE", str(tmp_path))
    monkeypatch.delenv(env.ONEDNN, raising=False)
    monkeypatch.setattr(profile, "_ONEDNN_ROWS", {})
    rows = profile.onednn_rows(tiny_target(seed=1))
    (cached,) = [p for p in (tmp_path / "profiles").iterdir() if p.name.startswith("onednn-")]
    record = json.loads(cached.read_text())
    onednn_s, default_s = record["onednn_s"], record["default_s"]
    assert len(onednn_s) == len(default_s) == profile.ONEDNN_TOKENS and min(onednn_s + default_s) > 0
    faster = [a < b for a, b in zip(onednn_s, default_s, strict=True)]
    assert record["from_tokens"] == rows
    if rows is None:  # slower at 8 tokens, or over a call's worth of forwards
        assert not faster[-1] or record["call_onednn_s"] >= record["call_default_s"]
    else:  # faster from `rows` tokens on, not at one token fewer, and over a call
        assert all(faster[rows - 1 :]) and (rows == 1 or not faster[rows - 2])
        assert record["call_onednn_s"] < record["call_default_s"]


def test_a_calls_worth_of_forwards_is_timed_packing_once_per_block(small_layers_routed):
    target = tiny_target(seed=1)
    packs = cpu_linears.packs_made()
    assert profile.measure_call(target, 4, onednn=False) > 0 and cpu_linears.packs_made() == packs
    assert profile.measure_call(target, 4, onednn=True) > 0
    once = cpu_linears.packs_made() - packs
    assert once == sum(1 for m in target.modules() if type(m) is nn.Linear)  # every layer, once
    profile.measure_call(target, 4, onednn=True)
    assert cpu_linears.packs_made() - packs == 2 * once  # packed afresh in each block, as each call packs
