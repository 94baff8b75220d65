"""``launch/delen_fleet.launch.py``'s own logic, without ROS 2 ``launch`` (it has no PyPI wheels).

The launch file is loaded with stand-ins for ``launch``, ``launch_ros`` and ``ament_index_python``
that record what they are given; its node list is then built as ``OpaqueFunction`` would build it.
What these check is what launch itself cannot: the placer's ``nodes`` are the namespaces the nodes
run in, devices go round-robin, every node publishes ``~/status`` fast enough for the placer's
liveness check and persists nothing, bad arguments fail with their value. That the processes come up
and serve is ``test/test_launch.py``'s job (launch_testing, on a ROS 2 install).
"""
from __future__ import annotations

import importlib.util
import pathlib
import re
import sys
import types

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / 'launch' / 'delen_fleet.launch.py'


class _Recorded:
    """A launch action or substitution that keeps its arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _LaunchDescription(_Recorded):
    def __init__(self, entities):
        super().__init__(entities)
        self.entities = list(entities)


def _module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


@pytest.fixture
def fleet(monkeypatch):
    """The launch file as a module, over the stand-ins (the package share is the repository)."""
    stand_ins = {
        'ament_index_python': _module('ament_index_python'),
        'ament_index_python.packages': _module('ament_index_python.packages',
                                               get_package_share_directory=lambda package: str(REPO)),
        'launch': _module('launch', LaunchDescription=_LaunchDescription),
        'launch.actions': _module('launch.actions', DeclareLaunchArgument=_Recorded, OpaqueFunction=_Recorded,
                                  SetEnvironmentVariable=_Recorded),
        'launch.substitutions': _module('launch.substitutions', EnvironmentVariable=_Recorded,
                                        LaunchConfiguration=_Recorded),
        'launch_ros': _module('launch_ros'),
        'launch_ros.actions': _module('launch_ros.actions', LifecycleNode=_Recorded, Node=_Recorded),
    }
    for name, module in stand_ins.items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location('delen_fleet_launch', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _arguments(description) -> dict[str, str]:
    """The declared launch arguments and their defaults."""
    return {e.args[0]: e.kwargs['default_value'] for e in description.entities
            if isinstance(e, _Recorded) and 'default_value' in e.kwargs and e.args}


def _build(fleet, **overrides: str) -> tuple[list[_Recorded], _Recorded]:
    """The nodes and the placer for the defaults plus ``overrides``, as the launch file's OpaqueFunction makes them."""
    description = fleet.generate_launch_description()
    arguments = _arguments(description)
    unknown = set(overrides) - set(arguments)
    assert not unknown, f'not launch arguments: {unknown}'
    opaque = [e for e in description.entities if 'function' in e.kwargs]
    assert len(opaque) == 1
    context = types.SimpleNamespace(launch_configurations={**arguments, **overrides})
    *nodes, placer = opaque[0].kwargs['function'](context)
    return nodes, placer


@pytest.mark.parametrize('nodes, device, devices, expected', [
    ('2', 'cpu', '', [('/n0', 'cpu'), ('/n1', 'cpu')]),
    ('1', 'auto', '', [('/n0', 'auto')]),
    ('3', 'cpu', 'cuda:0,cuda:1', [('/n0', 'cuda:0'), ('/n1', 'cuda:1'), ('/n2', 'cuda:0')]),
    ('2', 'cpu', ' cuda:1 ,', [('/n0', 'cuda:1'), ('/n1', 'cuda:1')]),
])
def test_fleet_devices(fleet, nodes, device, devices, expected):
    assert fleet.fleet_devices(nodes=nodes, device=device, devices=devices) == expected


@pytest.mark.parametrize('nodes', ['0', '-1', '65', 'two', '1.5', ''])
def test_fleet_devices_refuses_bad_counts(fleet, nodes):
    with pytest.raises(ValueError, match=re.escape(repr(nodes))):
        fleet.fleet_devices(nodes=nodes, device='cpu', devices='')


def test_defaults_two_nodes_behind_the_placer(fleet):
    nodes, placer = _build(fleet)
    namespaces = [n.kwargs['namespace'] for n in nodes]
    assert namespaces == ['/n0', '/n1']
    assert {n.kwargs['name'] for n in nodes} == {'delen'}
    assert {n.kwargs['executable'] for n in nodes} == {'delen_node'}
    assert placer.kwargs['executable'] == 'delen_placer'
    (placer_params,) = placer.kwargs['parameters']
    assert placer_params['nodes'] == namespaces
    assert placer_params['node_name'] == 'delen'
    for node in nodes:
        params_file, overrides = node.kwargs['parameters']
        assert params_file == str(REPO / 'config' / 'delen.yaml')
        assert overrides['state_file'] == ''
        # floats, as the parameters are declared (an int would be refused)
        assert isinstance(overrides['status_period_s'], float)
        assert overrides['status_period_s'] <= placer_params['liveness_timeout_s'] / 2
        assert overrides['autostart'] is True
    assert isinstance(placer_params['liveness_timeout_s'], float)
    assert isinstance(placer_params['check_period_s'], float)


def test_arguments_reach_every_node(fleet):
    nodes, placer = _build(fleet, nodes='3', model='fashion_mnist', devices='cuda:0,cuda:1', autostart='false',
                           params_file='/tmp/mine.yaml', status_period_s='0.25')
    assert [n.kwargs['parameters'][1]['device'] for n in nodes] == ['cuda:0', 'cuda:1', 'cuda:0']
    for node in nodes:
        params_file, overrides = node.kwargs['parameters']
        assert params_file == '/tmp/mine.yaml'
        assert overrides['model'] == 'fashion_mnist'
        assert overrides['autostart'] is False
        assert overrides['status_period_s'] == 0.25
    assert placer.kwargs['parameters'][0]['nodes'] == ['/n0', '/n1', '/n2']


def test_default_dds_profile_is_the_placement_one(fleet):
    """A dead node's result topics must leave the graph in about 1 s for its apps to move."""
    profile = _arguments(fleet.generate_launch_description())['fastdds_profile']
    assert pathlib.Path(profile) == REPO / 'config' / 'fastdds_placement.xml'
    assert pathlib.Path(profile).is_file()


@pytest.mark.parametrize('overrides, message', [
    ({'status_period_s': '0.6'}, 'at most half of liveness_timeout_s'),
    ({'liveness_timeout_s': '0.3'}, 'at most half of liveness_timeout_s'),
    ({'status_period_s': '0'}, "status_period_s must be positive, got '0'"),
    ({'check_period_s': 'fast'}, "check_period_s must be a number of seconds, got 'fast'"),
    ({'autostart': 'yes'}, "autostart must be true or false, got 'yes'"),
    ({'nodes': '0'}, "nodes must be an integer from 1 to 64, got '0'"),
])
def test_bad_arguments_fail_with_their_value(fleet, overrides, message):
    with pytest.raises(ValueError, match=message):
        _build(fleet, **overrides)
