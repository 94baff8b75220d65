"""Launch the delen lifecycle node with its parameters file.

    ros2 launch delen_ros delen.launch.py                       # cifar10_committee, device auto
    ros2 launch delen_ros delen.launch.py model:=efficientnet_lite0 device:=cuda namespace:=robot1
    ros2 launch delen_ros delen.launch.py params_file:=/path/to/my_delen.yaml autostart:=false

Parameters come from ``config/delen.yaml`` (or ``params_file``); ``model`` and ``device`` override
it. With ``autostart:=true`` the node configures and activates itself; with ``false`` it waits for a
lifecycle manager (``ros2 lifecycle set /delen configure``).

DDS: the node gets the package's Fast DDS profile (16 MiB shared-memory segments, so best-effort
640x480 images are not lost; ``fastdds_profile:=`` to use another) and
``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` unless that variable is already set.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description() -> LaunchDescription:
    config = os.path.join(get_package_share_directory('delen_ros'), 'config')
    return LaunchDescription([
        DeclareLaunchArgument('model', default_value='cifar10_committee',
                              description='model zoo name (cifar10_committee, cifar10_lite0, cifar10_resnet9, fashion_mnist, efficientnet_lite0) or a path'),
        DeclareLaunchArgument('device', default_value='auto', description='auto | cpu | cuda | cuda:N'),
        DeclareLaunchArgument('namespace', default_value='', description='namespace of the node'),
        DeclareLaunchArgument('params_file', default_value=os.path.join(config, 'delen.yaml'),
                              description='YAML parameters of the delen node'),
        DeclareLaunchArgument('autostart', default_value='true',
                              description='configure + activate at start (false: wait for a lifecycle manager)'),
        DeclareLaunchArgument('log_level', default_value='info', description='debug | info | warn | error'),
        DeclareLaunchArgument('fastdds_profile', default_value=os.path.join(config, 'fastdds_loopback.xml'),
                              description='Fast DDS XML profile (FASTDDS_DEFAULT_PROFILES_FILE)'),
        SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE', LaunchConfiguration('fastdds_profile')),
        SetEnvironmentVariable('ROS_AUTOMATIC_DISCOVERY_RANGE',
                               EnvironmentVariable('ROS_AUTOMATIC_DISCOVERY_RANGE', default_value='LOCALHOST')),
        LifecycleNode(
            package='delen_ros', executable='delen_node', name='delen',
            namespace=LaunchConfiguration('namespace'), output='screen',
            parameters=[LaunchConfiguration('params_file'), {
                'model': ParameterValue(LaunchConfiguration('model'), value_type=str),
                'device': ParameterValue(LaunchConfiguration('device'), value_type=str),
                'autostart': ParameterValue(LaunchConfiguration('autostart'), value_type=bool),
            }],
            arguments=['--ros-args', '--log-level', LaunchConfiguration('log_level')]),
    ])
