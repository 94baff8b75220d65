"""launch_testing tests of ``launch/delen.launch.py``, ``launch/demo.launch.py`` and
``launch/delen_fleet.launch.py``.

Each launch file is brought up once (``launch_testing.parametrize``); active tests talk to the node
(for the fleet: to the placer in front of two nodes, and to each node) over DDS (loopback, a domain
of this run) and a post-shutdown test checks every process exited cleanly. Run by pytest with
launch_testing's plugin (``colcon test`` on a ROS 2 install) or by ``launch_test test/test_launch.py``.
Where ROS 2 ``launch_testing`` is not installed (it has no PyPI wheels: the venv set-up lacks it) the
module is skipped.
"""
from __future__ import annotations

import os
import pathlib
import tempfile
import time
import unittest

import pytest

launch_testing = pytest.importorskip(
    'launch_testing', reason='ROS 2 launch_testing is not installed (no PyPI wheels); it runs under colcon test '
    'on a ROS 2 install')
pytest.importorskip('launch_ros', reason='ROS 2 launch_ros is not installed (no PyPI wheels)')

import launch  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
import numpy as np  # noqa: E402
import rclpy  # noqa: E402
import rclpy.executors  # noqa: E402
import yaml  # noqa: E402
from launch.actions import IncludeLaunchDescription, SetEnvironmentVariable  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from rcl_interfaces.srv import GetParameters  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from delen_ros.msg import InferenceResult  # noqa: E402
from delen_ros.ros.conversions import array_to_image  # noqa: E402
from delen_ros.srv import GetProfile, SetBounds  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH_DIR = REPO / 'launch'
DOMAIN_ID = int(os.environ.get('DELEN_TEST_DOMAIN_ID') or 1 + (os.getpid() + 50) % 100)
START_TIMEOUT = 180.0   # torch import, model load, maybe a quick profile on an unknown CPU
DEMO_APPS = ('inspection', 'navigation', 'battery')
FLEET = 'delen_fleet.launch.py'
FLEET_NODES = ('/n0/delen', '/n1/delen')   # nodes:=2
# The model each launch file serves (demo.launch.py: its default; the others: the test's fashion_mnist).
MODELS = {'delen.launch.py': 'fashion_mnist', 'demo.launch.py': 'cifar10_committee', FLEET: 'fashion_mnist'}

# This process (the tests' rclpy) and the launched ones share the domain and stay on loopback.
os.environ.update({'ROS_DOMAIN_ID': str(DOMAIN_ID), 'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
                   'FASTDDS_DEFAULT_PROFILES_FILE': str(REPO / 'config' / 'fastdds_loopback.xml')})


def _delen_params_file() -> str:
    """delen.yaml's test variant: CPU, estimated energy, no state file (nothing written to $HOME)."""
    params = {'model': 'fashion_mnist', 'device': 'cpu', 'energy_meter': 'estimate', 'state_file': '',
              'status_period_s': 0.5, 'torch_threads': 1}
    path = pathlib.Path(tempfile.mkdtemp(prefix='delen_launch_test_')) / 'delen.yaml'
    path.write_text(yaml.safe_dump({'/**': {'ros__parameters': params}}))
    return str(path)


@pytest.mark.launch_test
@launch_testing.parametrize('launch_file', ['delen.launch.py', 'demo.launch.py', FLEET])
def generate_test_description(launch_file):
    arguments = {'device': 'cpu'}
    if launch_file in ('delen.launch.py', FLEET):   # the model argument overrides the file's
        arguments.update(params_file=_delen_params_file(), model=MODELS[launch_file])
    if launch_file == FLEET:   # the file's status_period_s (0.5) gives way to the fleet's (0.2)
        arguments['nodes'] = str(len(FLEET_NODES))
    return launch.LaunchDescription([
        SetEnvironmentVariable('ROS_DOMAIN_ID', str(DOMAIN_ID)),
        IncludeLaunchDescription(PythonLaunchDescriptionSource(str(LAUNCH_DIR / launch_file)),
                                 launch_arguments=arguments.items()),
        launch_testing.actions.ReadyToTest(),
    ])


class TestServing(unittest.TestCase):
    """Runs while the launched processes are up."""

    @classmethod
    def setUpClass(cls):
        cls.context = rclpy.Context()
        rclpy.init(context=cls.context, domain_id=DOMAIN_ID)
        cls.node = rclpy.create_node('delen_launch_test', context=cls.context)
        cls.executor = rclpy.executors.SingleThreadedExecutor(context=cls.context)
        cls.executor.add_node(cls.node)

    @classmethod
    def tearDownClass(cls):
        cls.executor.shutdown()
        cls.node.destroy_node()
        rclpy.try_shutdown(context=cls.context)

    def _call(self, srv_type, name, request, *, timeout):
        client = self.node.create_client(srv_type, name)
        self.assertTrue(client.wait_for_service(timeout_sec=timeout), f'{name} did not appear')
        future = client.call_async(request)
        self.executor.spin_until_future_complete(future, timeout_sec=timeout)
        self.assertTrue(future.done(), f'{name} did not answer')
        return future.result()

    def test_node_reports_active(self, proc_output, launch_file):
        proc_output.assertWaitFor('active:', timeout=START_TIMEOUT)
        if launch_file == FLEET:   # the placer saw every node come up
            for node in FLEET_NODES:
                proc_output.assertWaitFor(f'{node} is up', timeout=START_TIMEOUT)

    def test_get_profile_answers(self, launch_file):
        for node in FLEET_NODES if launch_file == FLEET else ('/delen',):
            profile = self._call(GetProfile, f'{node}/get_profile', GetProfile.Request(), timeout=START_TIMEOUT)
            self.assertEqual(profile.model, MODELS[launch_file], node)
            self.assertGreater(len(profile.accuracy), 1)
            self.assertEqual(len(profile.latency_ms), len(profile.accuracy))

    def test_fleet_node_parameters(self, launch_file):
        """Each fleet node publishes ~/status at the fleet's period (the placer's liveness needs it, whatever
        the params file says) and persists nothing (the placer could not take its restored apps back)."""
        if launch_file != FLEET:
            self.skipTest('fleet only')
        for node in FLEET_NODES:
            answer = self._call(GetParameters, f'{node}/get_parameters',
                                GetParameters.Request(names=['status_period_s', 'state_file', 'device']),
                                timeout=START_TIMEOUT)
            period, state_file, device = answer.values
            self.assertAlmostEqual(period.double_value, 0.2, msg=node)
            self.assertEqual(state_file.string_value, '', node)
            self.assertEqual(device.string_value, 'cpu', node)

    def test_results_flow(self, launch_file):
        received: dict[str, int] = {}

        def counter(app_id):
            def on_result(msg):
                received[app_id] = received.get(app_id, 0) + 1
            return on_result

        if launch_file == 'demo.launch.py':   # the cameras and apps come with the launch file
            apps = DEMO_APPS
            for app_id in apps:
                self.node.create_subscription(InferenceResult, f'/delen/{app_id}/result', counter(app_id), 10)
            publisher, frame = None, None
        else:                                 # register an app (through the placer for the fleet) and be its camera
            apps = ('launch_test',)
            service, result_topic = '/delen/set_bounds', ''
            if launch_file == FLEET:          # the placer keeps the topic asked for, whichever node serves
                service, result_topic = '/delen_placer/set_bounds', '/launch_test/result'
                for node in FLEET_NODES:      # placed among all of them, not on the first one up
                    self.assertTrue(self.node.create_client(SetBounds, f'{node}/set_bounds').wait_for_service(
                        timeout_sec=START_TIMEOUT), f'{node}/set_bounds did not appear')
            response = self._call(SetBounds, service, SetBounds.Request(
                app_id='launch_test', image_topic='/launch_test/image_raw', result_topic=result_topic),
                timeout=START_TIMEOUT)
            self.assertTrue(response.accepted, response.message)
            if result_topic:
                self.assertEqual(response.result_topic, result_topic)
            self.node.create_subscription(InferenceResult, response.result_topic, counter('launch_test'), 10)
            publisher = self.node.create_publisher(Image, '/launch_test/image_raw', 10)
            frame = array_to_image(np.zeros((28, 28), np.uint8), encoding='mono8')
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline and not all(received.get(a, 0) >= 3 for a in apps):
            if publisher is not None:
                frame.header.stamp = self.node.get_clock().now().to_msg()
                publisher.publish(frame)
            self.executor.spin_once(timeout_sec=0.1)
        for app_id in apps:
            self.assertGreaterEqual(received.get(app_id, 0), 3, f'results of {app_id}: {received}')


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    """Runs after launch has stopped everything (SIGINT)."""

    def test_every_process_exited_cleanly(self, proc_info, launch_file):
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0])
