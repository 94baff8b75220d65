"""The demo as a launch file: the delen node, three camera players, three apps with different bounds.

    ros2 launch delen_ros demo.launch.py                 # then: ros2 topic echo /delen/navigation/result
    ros2 launch delen_ros demo.launch.py device:=cuda

Every camera replays CIFAR-10 test photos scaled to 320x240 (true labels in ``frame_id``) to the
``cifar10_committee`` model; the ``cifar10`` source needs ``../shared/data/cifar10/cifar10_jpeg.npz`` or
``$DELEN_CIFAR10`` (without it, ``delen_demo`` falls back to fashion_mnist on its own sources):

* ``inspection`` on ``/inspection/image_raw``: an accuracy bound;
* ``navigation`` on ``/front_camera/image_raw``: a latency bound;
* ``battery`` on ``/rear_camera/image_raw``: an energy bound.

The apps come from ``config/demo.yaml`` (the node's ``apps`` parameter). ``delen_demo`` runs the same
set-up without ROS launch and adds a live table, a bound change half-way and a plot.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, SetEnvironmentVariable
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node

# (node name, source, topic, frames per second, size): rates a 2-core CPU serves with cifar10_committee
CAMERAS = (
    ('camera_inspection', 'cifar10', '/inspection/image_raw', 8.0, '320x240'),
    ('camera_navigation', 'cifar10', '/front_camera/image_raw', 8.0, '320x240'),
    ('camera_battery', 'cifar10', '/rear_camera/image_raw', 8.0, '320x240'),
)


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory('delen_ros')
    # demo.yaml instead of delen.yaml: the node's defaults plus the demo apps, and no state file.
    node = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(share, 'launch', 'delen.launch.py')),
        launch_arguments={
            'model': LaunchConfiguration('model'), 'device': LaunchConfiguration('device'),
            'params_file': LaunchConfiguration('demo_params_file'),
        }.items())
    cameras = [
        Node(package='delen_ros', executable='delen_camera', name=name, output='screen',
             arguments=[source, '--topic', topic, '--size', size, '--rate', str(rate)])
        for name, source, topic, rate, size in CAMERAS]
    return LaunchDescription([
        DeclareLaunchArgument('model', default_value='cifar10_committee', description='model zoo name'),
        DeclareLaunchArgument('device', default_value='auto', description='auto | cpu | cuda | cuda:N'),
        DeclareLaunchArgument('demo_params_file', default_value=os.path.join(share, 'config', 'demo.yaml'),
                              description='node parameters with the demo apps (replaces config/delen.yaml)'),
        # The cameras need the same DDS set-up as the node (delen.launch.py sets it for the node).
        SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE', os.path.join(share, 'config', 'fastdds_loopback.xml')),
        SetEnvironmentVariable('ROS_AUTOMATIC_DISCOVERY_RANGE',
                               EnvironmentVariable('ROS_AUTOMATIC_DISCOVERY_RANGE', default_value='LOCALHOST')),
        node, *cameras,
    ])
