"""CUDA graphs die only at known points: no reference cycle holds them (their owners go by reference counting alone),
a capture collects garbage first and keeps the collector off, and graphs whose owner dies while a capture is open are
kept until it ends. On the CPU the release logic runs with stand-ins for the graph objects (CUDA graphs do not exist
here); on a GPU, `bench/graph_release.py` shows the same with real graphs and `bench/soak.py` on the whole package."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from helpers import primed_drafter, tiny_target

from dspark_hf.decoding import graphs as graphs_module
from dspark_hf.decoding import round as round_module
from dspark_hf.decoding.graphs import GraphSet, capture_window, parked_graphs
from dspark_hf.decoding.round import DraftingGraphs, DraftSettings
from dspark_hf.decoding.static_target import StaticTarget

pytestmark = pytest.mark.compat


class Stand_in:  # noqa: N801 - named for what it stands for: a captured graph
    """What a captured graph is to its set: an object that must stay alive until released."""


@pytest.fixture()
def collector_off():
    """Cyclic garbage collection off for the test (restored after): what dies now died by reference counting."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    yield
    if enabled:
        gc.enable()


def test_drafting_graphs_die_with_their_drafter_without_the_collector(collector_off):
    target = tiny_target(seed=1)
    prompt = torch.randint(0, 32, (1, 6), generator=torch.Generator().manual_seed(1))
    drafter = primed_drafter(target, prompt)
    kept = DraftingGraphs(drafter, capacity=64, rows=8, capture=False).use(DraftSettings.of(drafter, False, None), 8)
    drafter._dspark_drafting_graphs = kept  # as `drafting_graphs` keeps them across calls
    alive = weakref.ref(kept)
    del kept
    assert alive() is not None
    drafter = None
    assert alive() is None, "a reference cycle keeps the drafting graphs until the garbage collector runs"


def test_the_static_target_dies_with_its_target_without_the_collector(collector_off):
    target = tiny_target(seed=2)
    static = StaticTarget.for_target(target, 40)
    assert target._dspark_static_target is static
    alive = weakref.ref(static)
    del static
    target = None
    assert alive() is None, "a reference cycle keeps the static target's graphs until the garbage collector runs"


def test_a_capture_window_collects_first_and_keeps_the_collector_off():
    enabled = gc.isenabled()
    gc.enable()
    try:
        garbage = [Stand_in()]
        garbage.append(garbage)  # a cycle: only the collector frees it
        alive = weakref.ref(garbage[0])
        del garbage
        assert alive() is not None
        with capture_window():
            assert alive() is None  # collected at the safe point before the capture
            assert not gc.isenabled()
            with capture_window():  # nested (another capture open): still off
                assert not gc.isenabled()
            assert not gc.isenabled()
        assert gc.isenabled()
        gc.disable()  # a caller that had the collector off keeps it off
        with capture_window():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable() if enabled else gc.disable()


def test_graphs_of_a_set_that_dies_during_a_capture_wait_for_the_release_point():
    graph = Stand_in()
    alive = weakref.ref(graph)
    owner = GraphSet(torch.device("cpu"))
    owner.graphs["draft"] = (graph, None)
    del graph
    with capture_window():
        with capture_window():
            owner = None  # dies while two captures are open
            assert alive() is not None and parked_graphs() == 1
        assert alive() is not None  # one capture is still open
    assert alive() is None and parked_graphs() == 0
    assert graphs_module._open["captures"] == 0


def test_graphs_of_a_set_that_dies_outside_any_capture_go_at_once():
    graph = Stand_in()
    alive = weakref.ref(graph)
    owner = GraphSet(torch.device("cpu"))
    owner.graphs["draft"] = (graph, None)
    del graph, owner
    assert alive() is None and parked_graphs() == 0


def test_drafting_graphs_are_captured_once_per_shape_and_kept_across_calls(monkeypatch, tmp_path):
    """Calls that differ in sampling, prompt lookup and length: one kept `DraftingGraphs` per drafter, growing when a
    call needs more context, and each graph (append width, draft settings) captured once; outputs stay plain's. CUDA
    graphs do not exist on the CPU: here a "capture" records its key and a "replay" runs the step again."""
    monkeypatch.setenv("DSPARK_HF_CACHE", str(tmp_path))
    monkeypatch.setenv("DSPARK_STATIC_LOOP", "1")
    monkeypatch.setenv("DSPARK_KERNEL", "triton")  # the drafting round is captured only with the fused kernel
    monkeypatch.setattr(round_module, "capture_graphs", lambda device: True)
    monkeypatch.setattr(round_module, "GRAPH_CAPACITY_STEP", 64)
    captured = []

    def capture(self, key, step, warmup=2):
        captured.append(key)
        self.graphs[key] = (step, None)
        return step()

    monkeypatch.setattr(GraphSet, "capture", capture)
    monkeypatch.setattr(GraphSet, "replay", lambda self, key: self.graphs[key][0]())
    target = tiny_target(seed=3, sharp=4.0)
    prompt = torch.randint(1, 32, (1, 6), generator=torch.Generator().manual_seed(3))
    drafter = primed_drafter(target, prompt)
    calls = [  # (new tokens, settings); the third needs more context than the first two
        (20, dict(do_sample=False)), (20, dict(do_sample=True, temperature=0.7)), (90, dict(do_sample=False)),
        (20, dict(do_sample=False, prompt_lookup_num_tokens=9)), (20, dict(do_sample=True, temperature=0.7)),
        (20, dict(do_sample=False)),
    ]  # fmt: skip
    kept, keys = [], []
    for new, settings in calls:
        out = target.generate(prompt, assistant_model=drafter, max_new_tokens=new, gating="fixed", **settings)
        assert drafter.stats.loop == "static" and drafter.stats.fallbacks == []
        if not settings["do_sample"]:
            assert out.tolist() == target.generate(prompt, max_new_tokens=new, do_sample=False).tolist()
        kept.append(drafter._dspark_drafting_graphs)
        keys.append(kept[-1].keys)
    assert kept[0] is kept[1] and kept[2] is not kept[1] and kept[2:] == [kept[2]] * 4
    assert kept[0].capacity == 64 and kept[2].capacity == 128
    greedy, sampled, lookup = keys[0][1], keys[1][1], ("append", 10)
    assert greedy != sampled and keys[3] == (lookup, greedy)
    # per object: each key once; the grown object recaptures what its calls use, and the last two calls nothing
    assert captured == [("append", 8), greedy, sampled, ("append", 8), greedy, lookup, sampled]
    assert drafter.stats.captures == 0
