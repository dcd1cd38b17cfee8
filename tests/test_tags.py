"""txpika._tags.TagSet: unit tests and a model-based test against a sorted list."""

from __future__ import annotations

import bisect

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from txpika._tags import TagSet


def tagset(*tags: int) -> TagSet:
    tags_ = TagSet()
    for tag in tags:
        tags_.add(tag)
    return tags_


def members(tags: TagSet, upto: int = 50) -> list[int]:
    return [t for t in range(upto + 1) if t in tags]


def test_empty():
    tags = TagSet()
    assert len(tags) == 0 and not tags
    assert 0 not in tags and 1 not in tags
    assert tags.pop_all() == []
    assert tags.pop_through(100) == []
    assert tags.discard(1) is False


def test_add_must_increase():
    tags = tagset(1, 2, 5)
    with pytest.raises(ValueError):
        tags.add(5)
    with pytest.raises(ValueError):
        tags.add(3)
    tags.add(6)
    assert members(tags) == [1, 2, 5, 6]
    assert len(tags) == 4 and tags


def test_add_must_increase_even_past_a_settled_last_tag():
    tags = tagset(1, 5)
    assert tags.discard(5)
    with pytest.raises(ValueError):
        tags.add(5)
    tags.add(6)
    assert members(tags) == [1, 6]


def test_contains_with_gaps():
    tags = tagset(2, 4, 7, 8, 20, 21, 30)
    assert members(tags) == [2, 4, 7, 8, 20, 21, 30]
    assert 3 not in tags and 19 not in tags and 31 not in tags and 1 not in tags


def test_discard_first_middle_last():
    tags = tagset(1, 2, 3, 4, 5)
    assert tags.discard(3)
    assert members(tags) == [1, 2, 4, 5] and len(tags) == 4
    assert tags.discard(1)
    assert members(tags) == [2, 4, 5]
    assert tags.discard(5)
    assert members(tags) == [2, 4]
    assert not tags.discard(5)
    assert not tags.discard(3)
    assert not tags.discard(9)
    assert len(tags) == 2
    assert tags.discard(2)
    assert tags.discard(4)
    assert not tags and len(tags) == 0 and members(tags) == []


def test_discard_the_first_trims_settled_tags_behind_it():
    tags = tagset(1, 2, 3, 4)
    tags.discard(2)
    tags.discard(3)
    tags.discard(1)
    assert members(tags) == [4]
    assert len(tags) == 1
    assert tags.pop_through(3) == []
    assert tags.pop_through(4) == [4]
    assert not tags


def test_pop_through_skips_settled_tags():
    tags = tagset(1, 2, 3, 4, 5, 6)
    tags.discard(2)
    tags.discard(4)
    assert tags.pop_through(4) == [1, 3]
    assert members(tags) == [5, 6]
    assert tags.pop_through(4) == []
    assert tags.pop_through(0) == []
    assert tags.pop_through(100) == [5, 6]
    assert not tags


def test_pop_through_between_tags():
    tags = tagset(10, 20, 30)
    assert tags.pop_through(25) == [10, 20]
    assert members(tags, 40) == [30]


def test_pop_all():
    tags = tagset(1, 3, 5)
    tags.discard(3)
    assert tags.pop_all() == [1, 5]
    assert not tags and len(tags) == 0
    assert tags.pop_all() == []
    tags.add(7)
    assert members(tags) == [7]


def test_many_tags_stay_correct():
    tags = TagSet()
    for tag in range(1, 10001):
        tags.add(tag)
    for tag in range(2, 10001, 2):
        assert tags.discard(tag)
    assert len(tags) == 5000
    assert 5001 in tags and 5000 not in tags
    assert tags.pop_through(5000) == list(range(1, 5000, 2))
    assert len(tags) == 2500


class TagSetModel(RuleBasedStateMachine):
    """TagSet against a sorted list of outstanding tags."""

    def __init__(self) -> None:
        super().__init__()
        self.tags = TagSet()
        self.model: list[int] = []
        self.highest = 0  # every tag added so far is <= this

    @rule(step=st.integers(min_value=1, max_value=5))
    def add(self, step: int) -> None:
        tag = self.highest + step
        self.tags.add(tag)
        self.highest = tag
        self.model.append(tag)

    @precondition(lambda self: self.highest > 0)
    @rule(step=st.integers(min_value=0, max_value=5))
    def add_not_above(self, step: int) -> None:
        # Only refused while some tag is still held (outstanding or settled in the middle);
        # the contract forbids it regardless, so the model never records it.
        tag = max(self.highest - step, 0)
        if self.model and tag <= self.model[-1]:
            with pytest.raises(ValueError):
                self.tags.add(tag)

    @rule(data=st.data())
    def discard(self, data: st.DataObject) -> None:
        tag = data.draw(st.integers(min_value=0, max_value=self.highest + 2))
        expected = tag in self.model
        assert self.tags.discard(tag) is expected
        if expected:
            self.model.remove(tag)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def discard_outstanding(self, data: st.DataObject) -> None:
        tag = data.draw(st.sampled_from(self.model))
        assert self.tags.discard(tag) is True
        self.model.remove(tag)

    @rule(data=st.data())
    def pop_through(self, data: st.DataObject) -> None:
        bound = data.draw(st.integers(min_value=0, max_value=self.highest + 2))
        cut = bisect.bisect_right(self.model, bound)
        expected, self.model = self.model[:cut], self.model[cut:]
        assert self.tags.pop_through(bound) == expected

    @rule()
    def pop_all(self) -> None:
        assert self.tags.pop_all() == self.model
        self.model = []

    @invariant()
    def same_size(self) -> None:
        assert len(self.tags) == len(self.model)
        assert bool(self.tags) is bool(self.model)

    @invariant()
    def same_members(self) -> None:
        assert [t for t in range(self.highest + 3) if t in self.tags] == self.model


TagSetModel.TestCase.settings = settings(max_examples=300, stateful_step_count=60,
                                         deadline=None)
test_tagset_model = TagSetModel.TestCase
