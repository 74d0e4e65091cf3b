"""Contract: ``head_channels`` names nnU-Net's output channels in the order of nnU-Net's own ``LabelManager``."""

from __future__ import annotations

import pytest
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from nnunet_transfer.core.loading.heads import head_channels

CASES = {
    "plain": ({"background": 0, "liver": 1, "tumor": 2}, None),
    "unordered values": ({"background": 0, "vessel": 3, "liver": 1, "tumor": 2}, None),
    "gap in values": ({"background": 0, "liver": 1, "tumor": 4}, None),
    "one name per value": ({"background": 0, "left": 1, "right": 1, "tumor": 2}, None),
    "one-element lists": ({"background": 0, "liver": [1], "tumor": [2]}, None),
    "ignore label": ({"background": 0, "liver": 1, "tumor": 2, "ignore": 3}, None),
    "regions": ({"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3}, [1, 2, 3]),
    "regions, unordered": ({"background": 0, "enhancing": 3, "core": [3, 2], "whole": [1, 2, 3]}, [3, 2, 1]),
    "regions with ignore": ({"background": 0, "whole": [1, 2], "core": 2, "ignore": 3}, [1, 2]),
    "regions, background as region": ({"background": 0, "empty": [0, 0], "whole": [1, 2], "core": [2]}, [1, 2]),
}


def _expected(labels: dict, manager: LabelManager) -> list[str]:
    """The name of each of LabelManager's channels: the first label name with that value (or region)."""
    def as_key(v):
        return tuple(int(x) for x in v) if isinstance(v, list | tuple) else int(v)

    items = [(k, v) for k, v in labels.items() if k != "ignore"]
    if manager.has_regions:
        return [next(k for k, v in items if as_key(v) == as_key(r)) for r in manager.foreground_regions]
    by_value: dict[int, str] = {}
    for k, v in items:
        for value in (v if isinstance(v, list | tuple) else [v]):
            by_value.setdefault(int(value), k)
    return [by_value[int(value)] for value in manager.all_labels]


@pytest.mark.parametrize("case", list(CASES))
def test_head_channels_match_nnunets_label_manager(case):
    labels, regions_class_order = CASES[case]
    manager = LabelManager(labels, regions_class_order)
    dataset_json = {"labels": labels, **({"regions_class_order": regions_class_order} if regions_class_order else {})}
    for source in (labels, dataset_json):
        heads = head_channels(source)
        assert len(heads.names) == manager.num_segmentation_heads, f"{case}: {heads.names}"
        assert list(heads.names) == _expected(labels, manager), case
        assert heads.regions == manager.has_regions, case
