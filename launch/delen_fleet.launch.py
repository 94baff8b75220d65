"""Launch several delen lifecycle nodes behind ``delen_placer``: one fleet, one ``set_bounds``.

    ros2 launch delen_ros delen_fleet.launch.py                         # 2 nodes /n0 /n1, device auto
    ros2 launch delen_ros delen_fleet.launch.py nodes:=4 model:=efficientnet_lite0 device:=cuda
    ros2 launch delen_ros delen_fleet.launch.py nodes:=4 devices:=cuda:0,cuda:1   # n0, n2 on cuda:0; n1, n3 on cuda:1
    ros2 launch delen_ros delen_fleet.launch.py model:=fashion_mnist device:=cpu

Apps register with ``/delen_placer/set_bounds`` (``delen_client APP --server /delen_placer ...``),
not with a node's own ``~/set_bounds``: the placer puts each app on a node whose admission accepts
it and moves a dead node's apps to the others, and an app a node keeps flagging unschedulable in its
``~/status`` for ``overload_grace_s`` (2 s; 0 = never) to another node that accepts it. Results come on the ``result_topic`` the app asks
for (``/delen_placer/<app_id>/result`` if it asks for none), whichever node serves it.

``nodes:=K`` nodes named ``delen`` in namespaces ``/n0`` .. ``/n{K-1}``, each its own process (on one
H200, four served 32 cameras where one node's single worker could not). Each gets the parameters file (``config/delen.yaml`` or
``params_file``), then ``model``, ``device`` (or node ``j``'s entry of ``devices``, round-robin),
``autostart`` and ``status_period_s`` (0.2 s: the placer finds a node dead after
``liveness_timeout_s``, 1 s, without its ``~/status``, so a live node must publish well within that);
and ``state_file: ''`` whatever the file says, because the placer persists nothing: apps a restarted
node restored from its file would be unknown to the placer, their tokens the old placer's, their
result topics held against a re-registration. Apps register through the placer, so leave the
file's ``apps`` empty.

DDS: every process gets ``config/fastdds_placement.xml`` (``fastdds_profile:=`` to use another): the
loopback profile's 16 MiB shared-memory segments plus a 1 s participant lease, so a dead node's
result topics leave the graph in about 1 s and its apps can move. Cameras and apps outside this
launch should use it too (``FASTDDS_DEFAULT_PROFILES_FILE``). ``ROS_AUTOMATIC_DISCOVERY_RANGE`` is
set to ``LOCALHOST`` unless already set.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

NODE_NAME = 'delen'          # the placer's node_name parameter defaults to it too
PLACER_NAME = 'delen_placer'
MAX_NODES = 64


def fleet_devices(*, nodes: str, device: str, devices: str) -> list[tuple[str, str]]:
    """``(namespace, device)`` of each node: ``/n0`` .. ``/n{K-1}``; the ``devices`` list in turn, else ``device``.

    :param nodes: the launch argument ``nodes`` (an integer from 1 to :data:`MAX_NODES`, as text).
    :param device: the device of every node when ``devices`` is empty.
    :param devices: comma-separated devices (``cuda:0,cuda:1``), node ``j`` on entry ``j mod len``;
        ``''`` = ``device`` for all.
    :raises ValueError: ``nodes`` is not such an integer.
    """
    try:
        count = int(nodes)
    except ValueError:
        raise ValueError(f'nodes must be an integer from 1 to {MAX_NODES}, got {nodes!r}') from None
    if not 1 <= count <= MAX_NODES:
        raise ValueError(f'nodes must be an integer from 1 to {MAX_NODES}, got {nodes!r}')
    listed = [d.strip() for d in devices.split(',') if d.strip()] or [device]
    return [(f'/n{j}', listed[j % len(listed)]) for j in range(count)]


def _positive_seconds(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f'{name} must be a number of seconds, got {text!r}') from None
    if not value > 0:
        raise ValueError(f'{name} must be positive, got {text!r}')
    return value


def _seconds_or_zero(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f'{name} must be a number of seconds, got {text!r}') from None
    if not value >= 0:
        raise ValueError(f'{name} must be 0 or more, got {text!r}')
    return value


def _flag(name: str, text: str) -> bool:
    if text.lower() not in ('true', 'false'):
        raise ValueError(f'{name} must be true or false, got {text!r}')
    return text.lower() == 'true'


def _fleet(context, *args, **kwargs):
    """The nodes and the placer, built once the launch arguments are known (``nodes`` sets how many)."""
    config = context.launch_configurations
    placement = fleet_devices(nodes=config['nodes'], device=config['device'], devices=config['devices'])
    status_period_s = _positive_seconds('status_period_s', config['status_period_s'])
    liveness_timeout_s = _positive_seconds('liveness_timeout_s', config['liveness_timeout_s'])
    check_period_s = _positive_seconds('check_period_s', config['check_period_s'])
    overload_grace_s = _seconds_or_zero('overload_grace_s', config['overload_grace_s'])
    # one late ~/status must not make a live node dead (the e2e bench: 0.2 s against 1 s)
    if status_period_s > liveness_timeout_s / 2:
        raise ValueError(f'status_period_s ({status_period_s:g} s) must be at most half of liveness_timeout_s '
                         f'({liveness_timeout_s:g} s), or the placer may find a live node dead')
    autostart = _flag('autostart', config['autostart'])
    log_args = ['--ros-args', '--log-level', config['log_level']]
    nodes = [
        LifecycleNode(
            package='delen_ros', executable='delen_node', name=NODE_NAME, namespace=namespace, output='screen',
            parameters=[config['params_file'], {
                'model': config['model'], 'device': device, 'autostart': autostart,
                'status_period_s': status_period_s, 'state_file': '',
            }],
            arguments=log_args)
        for namespace, device in placement]
    placer = Node(
        package='delen_ros', executable='delen_placer', name=PLACER_NAME, output='screen',
        parameters=[{'nodes': [namespace for namespace, _ in placement], 'node_name': NODE_NAME,
                     'liveness_timeout_s': liveness_timeout_s, 'check_period_s': check_period_s,
                     'overload_grace_s': overload_grace_s}],
        arguments=log_args)
    return [*nodes, placer]


def generate_launch_description() -> LaunchDescription:
    config = os.path.join(get_package_share_directory('delen_ros'), 'config')
    return LaunchDescription([
        DeclareLaunchArgument('nodes', default_value='2', description=f'how many delen nodes (1 to {MAX_NODES})'),
        DeclareLaunchArgument('model', default_value='cifar10_committee',
                              description='model zoo name (cifar10_committee, cifar10_lite0, cifar10_resnet9, fashion_mnist, ...) or a path'),
        DeclareLaunchArgument('device', default_value='auto', description='auto | cpu | cuda | cuda:N, for every node'),
        DeclareLaunchArgument('devices', default_value='',
                              description="comma-separated devices, one per node in turn (cuda:0,cuda:1); '' = device"),
        DeclareLaunchArgument('params_file', default_value=os.path.join(config, 'delen.yaml'),
                              description="YAML parameters of every delen node (its state_file is replaced by '')"),
        DeclareLaunchArgument('autostart', default_value='true',
                              description='configure + activate at start (false: wait for a lifecycle manager)'),
        DeclareLaunchArgument('status_period_s', default_value='0.2',
                              description="the nodes' ~/status period, s (at most half of liveness_timeout_s)"),
        DeclareLaunchArgument('liveness_timeout_s', default_value='1.0',
                              description="the placer finds a node dead after this long without its ~/status, s"),
        DeclareLaunchArgument('check_period_s', default_value='0.1',
                              description="the placer's liveness check and re-placement period, s"),
        DeclareLaunchArgument('overload_grace_s', default_value='2.0',
                              description='the placer moves an app its node flags unschedulable this long, s '
                                          '(0 = never)'),
        DeclareLaunchArgument('log_level', default_value='info', description='debug | info | warn | error'),
        DeclareLaunchArgument('fastdds_profile', default_value=os.path.join(config, 'fastdds_placement.xml'),
                              description='Fast DDS XML profile (FASTDDS_DEFAULT_PROFILES_FILE)'),
        SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE', LaunchConfiguration('fastdds_profile')),
        SetEnvironmentVariable('ROS_AUTOMATIC_DISCOVERY_RANGE',
                               EnvironmentVariable('ROS_AUTOMATIC_DISCOVERY_RANGE', default_value='LOCALHOST')),
        OpaqueFunction(function=_fleet),
    ])
