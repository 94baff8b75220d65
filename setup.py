"""pip / venv install of delen_ros with console entry points.

On a robot, `colcon build` uses CMakeLists.txt instead (it also generates the msg/srv);
both install the same `delen_ros` Python package.
"""
from setuptools import find_packages, setup

setup(
    name='delen_ros',
    version='0.1.0',
    description='Multi-tenant, bound-aware multi-exit DNN serving for ROS 2 camera streams',
    license='Apache-2.0',
    packages=find_packages(include=['delen_ros', 'delen_ros.*']),
    python_requires='>=3.10',
    entry_points={
        'console_scripts': [
            'delen_node = delen_ros.ros.node:main',
            'delen_camera = delen_ros.ros.camera_player:main',
            'delen_client = delen_ros.ros.client:main',
            'delen_demo = delen_ros.tools.demo:main',
            'delen_train = delen_ros.tools.train:main',
            'delen_train_cifar = delen_ros.tools.train_cifar:main',
            'delen_profile = delen_ros.tools.profile:main',
            'delen_bench = delen_ros.tools.bench:main',
            'delen_e2e_bench = delen_ros.tools.e2e_bench:main',
            'delen_placer = delen_ros.ros.placer:main',
        ],
    },
)
