"""A device named twice in ``devices`` gets two engines (two workers overlapping on one GPU)."""
from delen_ros.ros.multi_device import device_list


def test_a_device_named_twice_gets_two_engines_and_blanks_are_dropped():
    assert device_list(['cuda:0', ' cuda:0 ', '', 'cuda:1']) == ['cuda:0', 'cuda:0', 'cuda:1']
    assert device_list(['']) == [] and device_list([]) == []
