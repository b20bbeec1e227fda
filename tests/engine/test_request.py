"""engine.request: the map spec every engine gets (items, sizes) and its checks."""

from __future__ import annotations

import pytest

from plait import InputError, Pipeline, node
from plait.engine.request import MapSpec, map_items


def spec(mode: str, **columns: object) -> MapSpec:
    return MapSpec.of(columns, list(columns), mode)  # type: ignore[arg-type]  # a MapMode


def test_size_hint_of_a_zip_map_is_its_first_sized_input() -> None:
    assert spec("zip", x=[1, 2, 3]).size_hint() == 3
    assert spec("zip", x=iter([1, 2]), y="ab").size_hint() == 2
    assert spec("zip", x=iter([1, 2])).size_hint() is None


def test_size_hint_of_a_product_map_multiplies_the_sizes() -> None:
    assert spec("product", x=[1, 2, 3], y="ab").size_hint() == 6
    assert spec("product", x=[1, 2, 3]).size_hint() == 3
    assert spec("product", x=[], y="ab").size_hint() == 0
    # One input of unknown length: so is the product.
    assert spec("product", x=[1, 2, 3], y=iter("ab")).size_hint() is None


def test_map_items_names_each_items_mapped_inputs() -> None:
    inputs = {"x": [1, 2], "y": "ab", "k": 9}
    assert list(map_items(inputs, ["x", "y"], "zip")) == [{"x": 1, "y": "a"}, {"x": 2, "y": "b"}]
    assert list(map_items(inputs, ["x", "y"], "product")) == [
        {"x": 1, "y": "a"},
        {"x": 1, "y": "b"},
        {"x": 2, "y": "a"},
        {"x": 2, "y": "b"},
    ]


def test_zip_inputs_of_different_lengths_are_refused_with_the_whole_message() -> None:
    pipe = Pipeline([node(lambda x, y: x, output_name="z", name="first")])
    with pytest.raises(InputError) as info:
        pipe.map({"x": [1, 2, 3], "y": [1]}, map_over=["x", "y"])
    assert str(info.value) == (
        "map_mode='zip' needs mapped inputs of one length: 'x' has 3 items, 'y' has 1 item. "
        "Make them equal, or use map_mode='product' for every combination."
    )
