"""One source per parameter range: the core config fields, read by the node's ParameterDescriptors."""

from __future__ import annotations

import dataclasses

import pytest

from tscm_ros.config_ranges import RANGE, field_range
from tscm_ros.features import FeatureConfig
from tscm_ros.loop_closure import LoopClosureConfig
from tscm_ros.recognition import RecognitionConfig
from tscm_ros.sequence import SequenceConfig
from tscm_ros.verification import VerifierConfig

CONFIGS = (LoopClosureConfig, VerifierConfig, SequenceConfig, FeatureConfig, RecognitionConfig)
NODE_NAMES = {"max_image_side": "feature_max_side"}  # node parameters not named like their field
PARTNER = {"min_speed": "max_speed", "max_speed": "min_speed"}  # min_speed <= max_speed: move both


def ranged_fields(config_class: type) -> list[dataclasses.Field]:
    return [item for item in dataclasses.fields(config_class) if RANGE in item.metadata]


def make(config_class: type, name: str, value: float):
    values = {name: value}
    if name in PARTNER:
        values[PARTNER[name]] = value
    return config_class(**values)


@pytest.mark.parametrize("config_class", CONFIGS)
def test_core_config_accepts_its_range_and_rejects_values_outside(config_class):
    assert ranged_fields(config_class), config_class
    for item in ranged_fields(config_class):
        low, high = field_range(config_class, item.name)
        kind = type(item.default)
        make(config_class, item.name, kind(low))
        make(config_class, item.name, kind(high))
        too_big = high + 1 if kind is int else high * 1.5
        values = {item.name: too_big, **({"max_speed": too_big} if item.name == "min_speed" else {})}
        with pytest.raises(ValueError, match=item.name):
            config_class(**values)


def test_node_descriptors_use_the_core_ranges():
    pytest.importorskip("rclpy")
    from tscm_ros.ros.parameters import PARAMETERS_BY_NAME

    checked = 0
    for config_class in CONFIGS:
        prefix = "sequence_" if config_class is SequenceConfig else ""
        for item in ranged_fields(config_class):
            name = NODE_NAMES.get(item.name, prefix + item.name)
            descriptor = PARAMETERS_BY_NAME[name].descriptor()
            (bounds,) = descriptor.integer_range or descriptor.floating_point_range
            assert (bounds.from_value, bounds.to_value) == field_range(config_class, item.name), item.name
            checked += 1
    assert checked == 21
