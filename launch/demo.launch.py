"""The demo as a launch file: the delen node, three camera players, three apps with different bounds.

    ros2 launch delen_ros demo.launch.py                 # then: ros2 topic echo /delen/navigation/result
    ros2 launch delen_ros demo.launch.py device:=cuda

* ``inspection``: Fashion-MNIST frames on ``/inspection/image_raw`` (true labels in ``frame_id``),
  an accuracy bound;
* ``navigation``: ``vtest`` pedestrians (320x240) on ``/front_camera/image_raw``, a latency bound;
* ``battery``: a ViSP robot-camera sequence on ``/rear_camera/image_raw``, an energy bound.

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

# (node name, source, topic, frames per second, size)
CAMERAS = (
    ('camera_inspection', 'fashion_mnist', '/inspection/image_raw', 10.0, 'native'),
    ('camera_navigation', 'vtest', '/front_camera/image_raw', 15.0, '320x240'),
    ('camera_battery', 'visp_mbt_cube', '/rear_camera/image_raw', 10.0, 'native'),
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
        DeclareLaunchArgument('model', default_value='fashion_mnist', description='model zoo name'),
        DeclareLaunchArgument('device', default_value='auto', description='auto | cpu | cuda | cuda:N'),
        DeclareLaunchArgument('demo_params_file', default_value=os.path.join(share, 'config', 'demo.yaml'),
                              description='node parameters with the demo apps (replaces config/delen.yaml)'),
        # The cameras need the same DDS set-up as the node (delen.launch.py sets it for the node).
        SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE', os.path.join(share, 'config', 'fastdds_loopback.xml')),
        SetEnvironmentVariable('ROS_AUTOMATIC_DISCOVERY_RANGE',
                               EnvironmentVariable('ROS_AUTOMATIC_DISCOVERY_RANGE', default_value='LOCALHOST')),
        node, *cameras,
    ])
