"""The ablation's other remedies for flat groups (baselines.py), on hand-built rollouts (no model)."""
import random

import torch

from baselines import dynamic_sampling, group_replay, split_groups
from rollout import Rollout

G = 2


def rollout_of(accuracies, tag):
    """A rollout with one answer per accuracy value; texts name the rollout and the row."""
    n = len(accuracies)
    return Rollout(input_ids=torch.arange(n * 3).view(n, 3), attention_mask=torch.ones(n, 3, dtype=torch.long),
                   completion_mask=torch.ones(n, 1, dtype=torch.long), visual={},
                   texts=[f"{tag}{i}" for i in range(n)], accuracy=torch.tensor(accuracies, dtype=torch.float),
                   format=torch.ones(n))


def test_split_groups_keeps_order_and_separates_flat_groups():
    informative, flat = split_groups(rollout_of([1, 0, 1, 1, 0, 1, 0, 0], "a"), G)
    assert [g.texts for g in informative] == [["a0", "a1"], ["a4", "a5"]]
    assert [g.texts for g in flat] == [["a2", "a3"], ["a6", "a7"]]


def test_dynamic_sampling_tops_up_with_informative_groups_then_flat_ones():
    fresh = iter([rollout_of([1, 1, 0, 1, 0, 1], "b"), rollout_of([0, 1, 0, 1, 0, 1], "c")])
    calls = []
    out, n_extra = dynamic_sampling(rollout_of([1, 0, 1, 1, 0, 0], "a"), G, rounds=2,
                                    sample_fresh=lambda: calls.append(1) or next(fresh),
                                    any_rank=bool)
    assert out.texts == ["a0", "a1", "b2", "b3", "b4", "b5"]   # the batch's own, then fresh informative ones
    assert n_extra == 6 and len(calls) == 1                   # full after one round: the second is not drawn
    out, n_extra = dynamic_sampling(rollout_of([0, 0, 1, 1, 0, 0], "a"), G, rounds=2,
                                    sample_fresh=lambda: rollout_of([0, 0, 0, 1, 0, 0], "d"), any_rank=bool)
    assert out.texts == ["d2", "d3", "d2", "d3", "a0", "a1"] and n_extra == 12  # then flat spares fill it


def test_group_replay_replaces_flat_groups_from_the_store_and_caps_it():
    store, rng = [], random.Random(0)
    out = group_replay(rollout_of([1, 0, 1, 1], "a"), G, store, capacity=2, rng=rng)
    assert out.texts == ["a0", "a1", "a0", "a1"]               # the flat group replaced by the stored one
    group_replay(rollout_of([0, 1, 1, 0], "b"), G, store, capacity=2, rng=rng)
    assert [g.texts for g in store] == [["b0", "b1"], ["b2", "b3"]]   # newest `capacity` kept
    out = group_replay(rollout_of([0, 0, 0, 0], "c"), G, [], capacity=2, rng=rng)
    assert out.texts == ["c0", "c1", "c2", "c3"]               # empty store: flat groups stay
