"""The ``delen`` lifecycle node: one multi-exit model served to many camera streams under bounds.

Lifecycle duties (``autostart:=true``, the default, walks configure -> activate at start):

* ``__init__``: declare parameters (with descriptors) only.
* ``configure``: read parameters, load the model, its profile and the energy meter, build the
  :class:`~delen_ros.core.engine.Engine`, create the services ``~/set_bounds``, ``~/remove_app``,
  ``~/get_profile``, restore apps from the ``apps`` parameter and then the state file (the state
  file is newer: it wins for an app id in both).
* ``activate``: start the engine, subscribe to every camera topic an app uses (one callback group
  per camera, services in another, a multi-threaded executor), enable the result / status /
  diagnostics publishers, start the status timer.
* ``deactivate``: unsubscribe, stop the timer and the engine. Apps stay registered.
* ``cleanup``: destroy services and publishers, free the model (and CUDA memory).

An image callback converts the frame once and enqueues it for every app on that topic
(``engine.submit``); inference happens on the engine's worker, never in a callback. Results are
published from the worker on each app's result topic. Bad images are counted and warned about
(throttled, per topic) and the node keeps serving.
"""
from __future__ import annotations

import dataclasses
import gc
import math
import os
import pathlib
import re
import sys
import threading
import time
from typing import Any, Sequence

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.time import Time
from sensor_msgs.msg import Image

from delen_ros.msg import AppStatus, InferenceResult
from delen_ros.srv import GetProfile, RemoveApp, SetBounds

from .apps import AppConfig, load_state, parse_apps_param, save_state
from .camera_player import label_from_frame_id
from .conversions import ImageFormatError, image_to_array
from .qos import IMAGE_QOS_NAMES, RESULT_QOS, image_qos
from .stats import CameraCounters, ResultStats

__all__ = ['DelenNode', 'NODE_NAME', 'resolve_device', 'main']

NODE_NAME = 'delen'
_WARN_PERIOD_NS = 5_000_000_000  # at most one conversion warning per topic per 5 s
_QUICK_EVAL_IMAGES = 500         # held-out images for a quick profile's accuracy and calibration


def resolve_device(device: str) -> str:
    """``'auto'`` -> ``'cuda'`` if available else ``'cpu'``; checks ``cpu``, ``cuda``, ``cuda:N``.

    :raises ValueError: unknown spelling, or a CUDA device that is not there.
    """
    import torch
    if device == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if device == 'cpu':
        return device
    match = re.fullmatch(r'cuda(?::(\d+))?', device)
    if not match:
        raise ValueError(f'device must be auto, cpu, cuda or cuda:N, got {device!r}')
    if not torch.cuda.is_available():
        raise ValueError(f'device {device!r} asked for, but CUDA is not available here')
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise ValueError(f'device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here')
    return device


def _rcl_message(exc: Exception) -> str:
    """An rcl error without its C source location."""
    return re.sub(r', at /\S+:\d+\s*$', '', str(exc).strip())


def _nan_to_zero(value: float) -> float:
    return 0.0 if math.isnan(value) else float(value)


@dataclasses.dataclass
class _App:
    """A registered application as the node runs it (topics resolved)."""

    config: AppConfig
    plan: Any
    stats: ResultStats
    frames_in: int = 0          # since registration
    results_out: int = 0
    dropped: int = 0
    frames_reported: int = 0    # frames_in at the last status message


@dataclasses.dataclass
class _Camera:
    """One subscribed camera topic and the apps it feeds (``app_ids`` is replaced, never mutated)."""

    topic: str
    app_ids: tuple[str, ...]
    group: MutuallyExclusiveCallbackGroup
    counters: CameraCounters
    subscription: Any = None
    last_warning_ns: int = 0


class DelenNode(LifecycleNode):
    """Serves a multi-exit model to many apps on many camera topics (see the module docstring).

    :param node_name: ROS node name.
    :param kwargs: passed to :class:`rclpy.lifecycle.LifecycleNode` (``namespace``,
        ``parameter_overrides``, ``context``, ...).
    """

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any):
        super().__init__(node_name, **kwargs)
        self._declare_parameters()
        # Attribute names must not collide with rclpy.Node's own (it has _services, _timers, ...).
        self._lock = threading.RLock()   # apps, cameras, publishers: services vs transitions vs worker
        self._apps: dict[str, _App] = {}
        self._cameras: dict[str, _Camera] = {}
        self._result_publishers: dict[str, Any] = {}   # result topic -> lifecycle publisher
        self._active = False
        self._engine = None
        self._model = None
        self._profile = None
        self._profile_source = ''
        self._meter = None
        self._device = ''
        self._max_apps = 0
        self._idle_power_w = 0.0
        self._delen_services: list[Any] = []
        self._status_publisher = None
        self._diagnostics_publisher = None
        self._status_timer = None
        self._last_status_ns = 0
        self._service_group = MutuallyExclusiveCallbackGroup()
        self._timer_group = MutuallyExclusiveCallbackGroup()

    # --- parameters ------------------------------------------------------------------------------------
    def _declare_parameters(self) -> None:
        def string(name: str, default: str, description: str, *, read_only: bool = False) -> None:
            self.declare_parameter(name, default, ParameterDescriptor(description=description, read_only=read_only))

        def integer(name: str, default: int, description: str, low: int, high: int) -> None:
            self.declare_parameter(name, default, ParameterDescriptor(
                description=description, integer_range=[IntegerRange(from_value=low, to_value=high, step=1)]))

        later = ' Read at configure: a change takes effect at the next configure.'
        self.declare_parameter('autostart', True, ParameterDescriptor(
            description='Configure and activate at start (true), or wait for lifecycle transitions (false).',
            read_only=True))
        string('model', 'fashion_mnist', "Model name in the model zoo ('fashion_mnist', 'efficientnet_lite0') "
               'or a path to its .json / .pt.' + later)
        string('device', 'auto', "'auto' (CUDA if available, else CPU), 'cpu', 'cuda' or 'cuda:N'." + later)
        string('profile', '', "Profile JSON file; '' = the committed profile of this model on this device "
               '(models/profiles/<model>__<device>.json) if present, else a quick on-device measurement.' + later)
        string('energy_meter', 'auto', "'auto', 'jetson', 'nvml', 'rapl' or 'estimate' (from the profile)." + later)
        string('policy', 'delen', "Exit policy: 'delen' (predictive) or a baseline ('always_final', "
               "'static_exit', 'check_after_stage', 'fixed_confidence')." + later)
        string('image_qos', 'sensor_data', "Camera subscriptions: 'sensor_data' (best effort) or 'reliable'; "
               'keep-last 1.' + later)
        integer('queue_depth', 1, 'Newest frames kept per application; older ones are dropped and counted.' + later,
                1, 64)
        integer('max_batch', 8, 'Most frames run as one batch, across applications.' + later, 1, 1024)
        string('state_file', '', "YAML file where registered apps persist across restarts ('~' expands); "
               "'' = no persistence." + later)
        string('apps', '', 'Apps to register at configure: a YAML list of {app_id, image_topic, max_latency_ms, '
               'min_accuracy, max_energy_mj, objective, result_topic}; a bound is a number (0 = unbounded) or '
               '"exit:K" / "exit:K*F": exit K\'s p99 time, accuracy or energy on this device (times F).' + later)
        integer('max_apps', 64, 'Most registered apps; SetBounds for a new app beyond it is rejected (memory and '
                'subscriptions stay bounded whatever clients do).' + later, 1, 4096)
        integer('torch_threads', 0, 'CPU threads for torch (intra-op); 0 = torch\'s default (all cores). A small '
                'model on a shared CPU is fastest with 1.' + later, 0, 256)
        self.declare_parameter('cuda_graphs', True, ParameterDescriptor(
            description='On CUDA: capture every stage and head as a CUDA graph per batch size at configure and '
                        'replay them (small batches are launch-bound without). False: eager.' + later))
        self.declare_parameter('executor', 'single', ParameterDescriptor(
            description="rclpy executor: 'single' (default: one thread takes messages and runs services; inference "
                        "and publication run on the engine's worker), 'events' (rclpy.experimental.EventsExecutor) or "
                        "'multi' (MultiThreadedExecutor: busy-spins when callback groups are busy, for comparison).",
            read_only=True))
        self.declare_parameter('status_period_s', 1.0, ParameterDescriptor(
            description='Period of ~/status and /diagnostics, seconds.' + later,
            floating_point_range=[FloatingPointRange(from_value=0.1, to_value=60.0, step=0.0)]))

    def _param(self, name: str) -> Any:
        return self.get_parameter(name).value

    # --- lifecycle -------------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
        except Exception as exc:  # noqa: BLE001 - a failed configure must leave the node unconfigured, not crash it
            self.get_logger().error(f'configure failed: {type(exc).__name__}: {exc}')
            self._release()
            return TransitionCallbackReturn.FAILURE
        return super().on_configure(state)

    def _configure(self) -> None:
        from delen_ros.core.energy import make_meter, measure_idle_power_w
        from delen_ros.core.engine import Engine
        from delen_ros.core.zoo import load_model

        qos = self._param('image_qos')
        if qos not in IMAGE_QOS_NAMES:
            raise ValueError(f'image_qos must be one of {list(IMAGE_QOS_NAMES)}, got {qos!r}')
        self._device = resolve_device(self._param('device'))
        if self._param('torch_threads') > 0:
            import torch
            torch.set_num_threads(self._param('torch_threads'))
        started = time.perf_counter()
        self._model = load_model(self._param('model'), device=self._device)
        self._meter = make_meter(self._param('energy_meter'), device=self._device)
        self._profile, self._profile_source = self._load_profile()
        if self._profile.num_exits != self._model.num_exits:
            raise ValueError(f'profile {self._profile_source} has {self._profile.num_exits} exits, the model '
                             f'{self._model.num_exits}')
        self._max_apps = self._param('max_apps')
        initial = parse_apps_param(self._param('apps'), figure=self._profile_figure,
                                   num_exits=self._profile.num_exits)
        cuda = self._device.startswith('cuda')
        self._idle_power_w = measure_idle_power_w(self._meter) if cuda else 0.0
        self._engine = Engine(self._model, self._profile, device=self._device, policy=self._param('policy'),
                              meter=self._meter, queue_depth=self._param('queue_depth'),
                              max_batch=self._param('max_batch'), on_result=self._on_result,
                              runner_options={'cuda_graphs': bool(self._param('cuda_graphs'))} if cuda else None,
                              idle_power_w=self._idle_power_w)
        self._engine.warm_up()   # graph capture and kernel choice now, not on the first frames
        self._status_publisher = self.create_lifecycle_publisher(AppStatus, '~/status', RESULT_QOS)
        self._diagnostics_publisher = self.create_lifecycle_publisher(DiagnosticArray, '/diagnostics', RESULT_QOS)
        self._delen_services = [
            self.create_service(SetBounds, '~/set_bounds', self._on_set_bounds, callback_group=self._service_group),
            self.create_service(RemoveApp, '~/remove_app', self._on_remove_app, callback_group=self._service_group),
            self.create_service(GetProfile, '~/get_profile', self._on_get_profile,
                                callback_group=self._service_group),
        ]
        self._restore_apps(initial)
        self.get_logger().info(
            f'configured in {time.perf_counter() - started:.1f} s: model {self._model.info.name} '
            f'({self._model.num_exits} exits) on {self._device}, profile {self._profile_source}, '
            f'energy {self._meter.source} ({self._meter.detail}), policy {self._param("policy")}, '
            f'{len(self._apps)} app(s)')

    def _load_profile(self):
        """The profile named by the parameter, else the committed one, else a quick measurement."""
        from delen_ros.core.profile import Profile, device_slug, profile_filename
        from delen_ros.core.zoo import models_dir

        path = str(self._param('profile'))
        if path:
            path = os.path.expanduser(path)
            return Profile.load(path), path
        name = self._model.info.name
        folder = models_dir() / 'profiles'
        committed = folder / profile_filename(name, device_slug(self._device))
        if committed.is_file():
            return Profile.load(committed), str(committed)
        from delen_ros.tools.profile import quick_profile
        others = sorted(folder.glob(profile_filename(name, '*')))
        reference = Profile.load(others[0]) if others else None
        evaluation = None
        if reference is None:  # accuracy and calibration need held-out data (device-independent otherwise)
            try:
                from delen_ros.core.datasets import eval_set
                evaluation = eval_set(name, limit=_QUICK_EVAL_IMAGES)
            except (KeyError, OSError, ValueError) as exc:
                self.get_logger().warning(f'no held-out data for {name} ({exc}): accuracy from the model file, '
                                          'no confidence calibration (no per-input early exits)')
        self.get_logger().info(
            f'no committed profile {committed.name}: measuring a quick one on {self._device}'
            + (f' (accuracy and calibration from {others[0].name})' if reference is not None else
               f' (accuracy and calibration on {len(evaluation.images)} held-out images)' if evaluation else ''))
        started = time.perf_counter()
        profile = quick_profile(self._model, device=self._device, max_batch=self._param('max_batch'),
                                reference=reference, eval_set=evaluation,
                                meter=self._meter if self._meter.measured else None)
        return profile, f'quick measurement on {self._device} ({time.perf_counter() - started:.1f} s)'

    def _profile_figure(self, field: str, k: int) -> float:
        """Exit ``k``'s figure for a bound written ``exit:K`` in the ``apps`` parameter."""
        if field == 'max_latency_ms':
            return self._profile.exit_latency_ms(k, p99=True)
        if field == 'min_accuracy':
            return self._profile.accuracy(k)
        return self._profile.exit_energy_mj(k)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            with self._lock:
                self._engine.start(warm_up=False)   # warmed up at configure
                result = super().on_activate(state)  # enables every lifecycle publisher, before frames come
                self._active = True
                for camera in self._cameras.values():
                    self._subscribe(camera)
                self._last_status_ns = time.monotonic_ns()
                self._status_timer = self.create_timer(self._param('status_period_s'), self._publish_status,
                                                       callback_group=self._timer_group)
        except Exception as exc:  # noqa: BLE001
            self.get_logger().error(f'activate failed: {type(exc).__name__}: {exc}')
            self._deactivate()
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(f'active: {len(self._apps)} app(s) on {len(self._cameras)} camera topic(s)')
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        return super().on_deactivate(state)

    def _deactivate(self) -> None:
        with self._lock:
            self._active = False
            for camera in self._cameras.values():
                if camera.subscription is not None:
                    self.destroy_subscription(camera.subscription)
                    camera.subscription = None
            if self._status_timer is not None:
                self.destroy_timer(self._status_timer)
                self._status_timer = None
        if self._engine is not None:
            self._engine.stop()

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.close()
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.close()
        return super().on_error(state)

    def close(self) -> None:
        """Stop serving and free everything, whatever the state (idempotent; for shutdown paths)."""
        self._deactivate()
        self._release()

    def _release(self) -> None:
        """Undo configure: engine, services, publishers, apps, meter, model (and its CUDA memory)."""
        if self._engine is not None:
            self._engine.stop()   # first: its worker publishes results on the publishers destroyed below
        with self._lock:
            for service in self._delen_services:
                self.destroy_service(service)
            self._delen_services = []
            for publisher in [*self._result_publishers.values(), self._status_publisher, self._diagnostics_publisher]:
                if publisher is not None:
                    self.destroy_lifecycle_publisher(publisher)
            self._result_publishers.clear()
            self._status_publisher = self._diagnostics_publisher = None
            for camera in self._cameras.values():
                if camera.subscription is not None:
                    self.destroy_subscription(camera.subscription)
            self._apps.clear()
            self._cameras.clear()
            self._engine = None
        if self._meter is not None:
            self._meter.close()
        self._meter = self._model = self._profile = None
        gc.collect()
        if self._device.startswith('cuda'):
            import torch
            torch.cuda.empty_cache()

    # --- apps ----------------------------------------------------------------------------------------
    def _resolve(self, config: AppConfig) -> AppConfig:
        """``config`` with absolute topic names (remappings applied); ``ValueError`` for invalid names."""
        result_topic = config.result_topic or f'~/{config.app_id}/result'
        resolved = {}
        for field, name in (('image_topic', config.image_topic), ('result_topic', result_topic)):
            try:
                resolved[field] = self.resolve_topic_name(name)
            except Exception as exc:  # noqa: BLE001 - rclpy raises RCLError for invalid names
                raise ValueError(f'{field} {name!r} is not a valid topic name: {_rcl_message(exc)}') from None
        return dataclasses.replace(config, **resolved)

    def _register(self, config: AppConfig, *, persist: bool = True):
        """Add or update an app (``config`` resolved). Raises (changing nothing) if the engine refuses."""
        with self._lock:
            if config.app_id not in self._apps and len(self._apps) >= self._max_apps:
                raise ValueError(f'{len(self._apps)} apps are registered, the most this node serves (max_apps); '
                                 'remove one first')
            plan = self._engine.set_app(config.app_id, config.bounds)   # InfeasibleBounds / ValueError
            old = self._apps.get(config.app_id)
            if old is None:
                self._apps[config.app_id] = _App(config=config, plan=plan,
                                                 stats=ResultStats(num_exits=self._model.num_exits))
            else:
                old.config, old.plan = config, plan
            self._ensure_result_publisher(config.result_topic)
            self._rebuild_cameras()
            self._drop_unused_result_publishers()
            if persist:
                self._save_state()
        return plan

    def _unregister(self, app_id: str) -> bool:
        with self._lock:
            if app_id not in self._apps:
                return False
            self._engine.remove_app(app_id)
            del self._apps[app_id]
            self._rebuild_cameras()
            self._drop_unused_result_publishers()
            self._save_state()
        return True

    def _ensure_result_publisher(self, topic: str) -> None:
        if topic in self._result_publishers:
            return
        publisher = self.create_lifecycle_publisher(InferenceResult, topic, RESULT_QOS)
        if self._active:  # lifecycle publishers start disabled; the node is already past activate
            publisher.on_activate(None)
        self._result_publishers[topic] = publisher

    def _drop_unused_result_publishers(self) -> None:
        used = {app.config.result_topic for app in self._apps.values()}
        for topic in [t for t in self._result_publishers if t not in used]:
            self.destroy_lifecycle_publisher(self._result_publishers.pop(topic))

    def _rebuild_cameras(self) -> None:
        """Make the camera table match the apps: new topics subscribed (when active), unused ones dropped."""
        wanted: dict[str, list[str]] = {}
        for app_id, app in self._apps.items():
            wanted.setdefault(app.config.image_topic, []).append(app_id)
        for topic in [t for t in self._cameras if t not in wanted]:
            camera = self._cameras.pop(topic)
            if camera.subscription is not None:
                self.destroy_subscription(camera.subscription)
            self.get_logger().info(f'unsubscribed from {topic}: no app uses it any more')
        for topic, app_ids in wanted.items():
            camera = self._cameras.get(topic)
            if camera is None:
                camera = self._cameras[topic] = _Camera(topic=topic, app_ids=tuple(sorted(app_ids)),
                                                        group=MutuallyExclusiveCallbackGroup(),
                                                        counters=CameraCounters())
                if self._active:
                    self._subscribe(camera)
            else:
                camera.app_ids = tuple(sorted(app_ids))

    def _subscribe(self, camera: _Camera) -> None:
        if camera.subscription is None:
            camera.subscription = self.create_subscription(
                Image, camera.topic, lambda msg, c=camera: self._on_image(msg, c),
                image_qos(self._param('image_qos')), callback_group=camera.group)
            self.get_logger().info(f'subscribed to {camera.topic} for {", ".join(camera.app_ids)}')

    def _restore_apps(self, initial: Sequence[AppConfig]) -> None:
        """Register the ``apps`` parameter's apps, then the state file's (which win on the same id)."""
        path = self._state_path()
        saved: list[AppConfig] = []
        if path is not None:
            try:
                saved = load_state(path)
            except (ValueError, OSError) as exc:
                self.get_logger().error(f'ignoring state file: {exc}')
        by_id = {a.app_id: a for a in [*initial, *saved]}
        for config in by_id.values():
            try:
                plan = self._register(self._resolve(config), persist=False)
                self.get_logger().info(f'app {config.app_id} on {config.image_topic}: {config.describe()} -> '
                                       f'exit {plan.exit_index} planned')
            except ValueError as exc:
                self.get_logger().error(f'app {config.app_id} not restored: {exc}')
        if path is not None and by_id:
            self._save_state()

    def _state_path(self) -> pathlib.Path | None:
        text = str(self._param('state_file'))
        return pathlib.Path(os.path.expandvars(os.path.expanduser(text))) if text else None

    def _save_state(self) -> None:
        path = self._state_path()
        if path is None:
            return
        try:
            save_state(path, [app.config for app in self._apps.values()])
        except OSError as exc:  # serving goes on; the next change tries again
            self.get_logger().error(f'could not write state file {path}: {exc}')

    # --- services ------------------------------------------------------------------------------------
    def _fill_feasible(self, response, feasible=None) -> None:
        feasible = feasible or self._engine.feasible_range()
        response.feasible_latency_ms = [float(v) for v in feasible.latency_ms]
        response.feasible_accuracy = [float(v) for v in feasible.accuracy]
        response.feasible_energy_mj = [float(v) for v in feasible.energy_mj]

    def _on_set_bounds(self, request: SetBounds.Request, response: SetBounds.Response) -> SetBounds.Response:
        from delen_ros.core.bounds import InfeasibleBounds

        response.accepted, response.planned_exit = False, -1
        try:
            self._fill_feasible(response)
            config = self._resolve(AppConfig(
                app_id=request.app_id, image_topic=request.image_topic, max_latency_ms=request.max_latency_ms,
                min_accuracy=request.min_accuracy, max_energy_mj=request.max_energy_mj,
                objective=int(request.objective), result_topic=request.result_topic))
            plan = self._register(config)
        except InfeasibleBounds as exc:
            self._fill_feasible(response, exc.feasible)
            response.message = str(exc)
        except ValueError as exc:
            response.message = str(exc)
        except Exception as exc:  # noqa: BLE001 - answer (rejected, with the reason): never leave the caller hanging
            self.get_logger().error(f'set_bounds({request.app_id!r}) failed: {type(exc).__name__}: {exc}')
            response.message = f'internal error: {type(exc).__name__}: {exc}'
        else:
            response.accepted = True
            response.result_topic = config.result_topic
            response.planned_exit = int(plan.exit_index)
            response.expected_latency_ms = float(plan.latency_ms)
            response.expected_accuracy = float(plan.accuracy)
            response.expected_energy_mj = float(plan.energy_mj)
            self.get_logger().info(
                f'app {config.app_id} on {config.image_topic}: {config.describe()} -> exit {plan.exit_index} '
                f'(~{plan.latency_ms:.2f} ms, accuracy {plan.accuracy:.3f}, {plan.energy_mj:.3f} mJ); '
                f'results on {config.result_topic}')
            return response
        self.get_logger().warning(f'set_bounds({request.app_id!r}) rejected: {response.message}')
        return response

    def _on_remove_app(self, request: RemoveApp.Request, response: RemoveApp.Response) -> RemoveApp.Response:
        try:
            response.removed = self._unregister(request.app_id)
        except Exception as exc:  # noqa: BLE001
            self.get_logger().error(f'remove_app({request.app_id!r}) failed: {type(exc).__name__}: {exc}')
            response.removed, response.message = False, f'internal error: {type(exc).__name__}: {exc}'
            return response
        if response.removed:
            response.message = f'removed {request.app_id}'
            self.get_logger().info(response.message)
        else:
            response.message = f'no app {request.app_id!r}; registered: {sorted(self._apps)}'
        return response

    def _on_get_profile(self, request: GetProfile.Request, response: GetProfile.Response) -> GetProfile.Response:
        profile = self._profile
        if profile is None:  # cleaned up while the request waited
            return response
        exits = range(profile.num_exits)
        response.model = profile.model
        response.device = f'{self._device} ({profile.device})'
        response.energy_source = profile.energy_source
        response.accuracy_note = profile.accuracy_note
        response.exit_names = [e.name for e in profile.exits]
        response.latency_ms = [float(profile.exit_latency_ms(k)) for k in exits]
        response.latency_p99_ms = [float(profile.exit_latency_ms(k, p99=True)) for k in exits]
        response.energy_mj = [float(profile.exit_energy_mj(k)) for k in exits]
        response.accuracy = [float(profile.accuracy(k)) for k in exits]
        return response

    # --- data path -----------------------------------------------------------------------------------
    def _on_image(self, msg: Image, camera: _Camera) -> None:
        arrival_ns = time.perf_counter_ns()  # the engine's clock: latency bounds run from here
        if not self._active:
            return
        camera.counters.frame()
        try:
            image = image_to_array(msg, copy=False)   # a view of msg.data: the one copy is the upload
        except ImageFormatError as exc:
            errors = camera.counters.error()
            if arrival_ns - camera.last_warning_ns >= _WARN_PERIOD_NS:
                camera.last_warning_ns = arrival_ns
                self.get_logger().warning(f'{camera.topic}: dropping a malformed image ({exc}); '
                                          f'{errors} conversion error(s) on this topic so far')
            return
        app_ids = camera.app_ids
        engine = self._engine
        if engine is None or not app_ids:
            return
        try:
            engine.submit(app_ids, image, arrival_ns=arrival_ns, tag=(msg.header, camera.topic))
        except Exception as exc:  # noqa: BLE001 - e.g. an app removed between lookup and submit, or engine stopping
            self.get_logger().warning(f'{camera.topic}: frame not queued: {exc}', throttle_duration_sec=5.0)
            return
        for app_id in app_ids:
            app = self._apps.get(app_id)
            if app is not None:
                app.frames_in += 1

    def _on_result(self, result) -> None:
        """Called by the engine's worker thread for every finished inference."""
        try:
            self._publish_result(result)
        except Exception as exc:  # noqa: BLE001 - never kill the worker over one result
            self.get_logger().error(f'could not publish a result for {result.app_id}: {type(exc).__name__}: {exc}',
                                    throttle_duration_sec=5.0)

    def _publish_result(self, result) -> None:
        app = self._apps.get(result.app_id)
        if app is None:  # removed while its frame was in flight
            return
        publisher = self._result_publishers.get(app.config.result_topic)
        if publisher is None:
            return
        header, topic = result.tag
        msg = InferenceResult()
        msg.header = header
        msg.app_id, msg.image_topic = result.app_id, topic
        msg.class_id, msg.label, msg.confidence = int(result.class_id), str(result.label), float(result.confidence)
        msg.exit_index, msg.num_exits = int(result.exit_index), int(result.num_exits)
        msg.expected_accuracy = float(result.expected_accuracy)
        msg.queue_ms, msg.compute_ms = float(result.queue_ms), float(result.compute_ms)
        msg.energy_mj, msg.energy_measured = float(result.energy_mj), bool(result.energy_measured)
        msg.energy_source = str(result.energy_source)
        now = self.get_clock().now()
        msg.stamp_latency_ms = (now.nanoseconds - Time.from_msg(header.stamp).nanoseconds) / 1e6
        # Latency up to publication, on the engine's clock (the bound covers the whole path).
        latency_ms = (time.perf_counter_ns() - result.arrival_ns) / 1e6
        bound = app.config.max_latency_ms
        msg.latency_ms = latency_ms
        msg.bounds_met = bool(result.bounds_met) and (bound <= 0 or latency_ms <= bound)
        publisher.publish(msg)
        app.results_out += 1
        label = label_from_frame_id(header.frame_id)
        app.stats.add(latency_ms=latency_ms, energy_mj=msg.energy_mj, expected_accuracy=msg.expected_accuracy,
                      exit_index=msg.exit_index, bounds_met=msg.bounds_met,
                      correct=None if label is None else label == msg.class_id)

    # --- status and diagnostics ------------------------------------------------------------------------
    def _publish_status(self) -> None:
        try:
            self._publish_status_now()
        except Exception as exc:  # noqa: BLE001 - a status hiccup must not stop the timer
            self.get_logger().error(f'status: {type(exc).__name__}: {exc}', throttle_duration_sec=10.0)

    def _publish_status_now(self) -> None:
        now_ns = time.monotonic_ns()
        period_s = max(1e-3, (now_ns - self._last_status_ns) / 1e9)
        self._last_status_ns = now_ns
        stamp = self.get_clock().now().to_msg()
        engine = self._engine
        if engine is None:
            return
        with self._lock:
            apps = dict(self._apps)
            cameras = dict(self._cameras)
        per_camera: dict[str, list[tuple[_App, Any, int, int]]] = {}
        for app_id, app in apps.items():
            summary = app.stats.take()
            try:
                dropped_total = int(engine.stats(app_id).dropped)
            except Exception:  # noqa: BLE001 - removed meanwhile
                dropped_total = app.dropped
            dropped_period, app.dropped = max(0, dropped_total - app.dropped), dropped_total
            frames_in = app.frames_in
            frames_period, app.frames_reported = frames_in - app.frames_reported, frames_in
            c = app.config
            msg = AppStatus(stamp=stamp, app_id=app_id, image_topic=c.image_topic, result_topic=c.result_topic,
                            max_latency_ms=c.max_latency_ms, min_accuracy=c.min_accuracy,
                            max_energy_mj=c.max_energy_mj,
                            rate_in_hz=frames_period / period_s, rate_out_hz=summary.results / period_s,
                            frames_in=app.frames_in, results_out=app.results_out, dropped=app.dropped,
                            attainment=_nan_to_zero(summary.attainment),
                            latency_p50_ms=_nan_to_zero(summary.latency_p50_ms),
                            latency_p99_ms=_nan_to_zero(summary.latency_p99_ms),
                            mean_energy_mj=_nan_to_zero(summary.mean_energy_mj),
                            mean_expected_accuracy=_nan_to_zero(summary.mean_expected_accuracy),
                            exit_counts=list(summary.exit_counts))
            if self._status_publisher is not None:
                self._status_publisher.publish(msg)
            per_camera.setdefault(c.image_topic, []).append((app, summary, frames_period, dropped_period))
        self._publish_diagnostics(stamp, cameras, per_camera, period_s)

    def _publish_diagnostics(self, stamp, cameras: dict[str, _Camera], per_camera, period_s: float) -> None:
        if self._diagnostics_publisher is None:
            return
        array = DiagnosticArray()
        array.header.stamp = stamp
        meter = self._meter
        source = meter.source if meter is not None else 'none'
        hardware = f'{self._device}'
        prefix = self.get_fully_qualified_name()
        for topic, camera in cameras.items():
            frames, errors = camera.counters.take()
            rows = per_camera.get(topic, [])
            results = sum(s.results for _, s, _, _ in rows)
            met = sum(s.bounds_met for _, s, _, _ in rows)
            dropped = sum(d for _, _, _, d in rows)
            energy_mj = sum(s.energy_mj for _, s, _, _ in rows)
            attainment = met / results if results else float('nan')
            level, summary = DiagnosticStatus.OK, 'serving'
            if errors:
                level, summary = DiagnosticStatus.WARN, f'{errors} malformed image(s) this period'
            elif results and attainment < 0.9:
                level, summary = DiagnosticStatus.WARN, f'bounds met for {attainment:.0%} of results'
            elif frames == 0:
                level, summary = DiagnosticStatus.WARN, 'no frames this period'
            values = {
                'apps': ','.join(camera.app_ids),
                'rate_in_hz': f'{frames / period_s:.2f}',
                'rate_out_hz': f'{results / period_s:.2f}',
                'dropped': str(dropped),
                'attainment': f'{attainment:.3f}' if results else 'n/a',
                'energy_per_result_mj': f'{energy_mj / results:.4f}' if results else 'n/a',
                'power_w': f'{energy_mj / 1000.0 / period_s:.4f}',
                'energy_source': source,
                'energy_measured': str(bool(meter is not None and meter.measured)).lower(),
                'conversion_errors': str(errors),
                'conversion_errors_total': str(camera.counters.errors_total),
                'frames_total': str(camera.counters.frames_total),
            }
            array.status.append(DiagnosticStatus(
                level=level, name=f'{prefix}: {topic}', message=summary, hardware_id=hardware,
                values=[KeyValue(key=k, value=v) for k, v in values.items()]))
        array.status.append(DiagnosticStatus(
            level=DiagnosticStatus.OK, name=f'{prefix}: engine', message='active' if self._active else 'inactive',
            hardware_id=hardware, values=[KeyValue(key=k, value=str(v)) for k, v in {
                'model': self._model.info.name if self._model is not None else '',
                'device': self._device, 'policy': self._param('policy'), 'profile': self._profile_source,
                'energy_source': source, 'energy_detail': meter.detail if meter is not None else '',
                'idle_power_w': f'{self._idle_power_w:.1f}',
                'apps': len(self._apps), 'cameras': len(cameras)}.items()]))
        self._diagnostics_publisher.publish(array)


def make_executor(kind: str):
    """The executor named by the ``executor`` parameter.

    ``single`` is the default because the node's callbacks are short (an image callback takes the
    message and queues a view of its bytes; inference and publication run on the engine's worker):
    one thread keeps up, while rclpy's ``MultiThreadedExecutor`` spins on entities whose callback
    group is busy and, through the GIL, starves the worker (0-0.2 answered frames/s on 16 cores).
    """
    if kind == 'single':
        return SingleThreadedExecutor()
    if kind == 'multi':
        return MultiThreadedExecutor(num_threads=8)
    if kind == 'events':
        from rclpy.experimental import EventsExecutor
        return EventsExecutor()
    raise ValueError(f"executor must be 'single', 'events' or 'multi', got {kind!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the node (``delen_node``) until Ctrl-C / SIGTERM. Returns the exit status.

    With ``autostart`` true (default) a failed configure or activate exits with status 1.
    """
    args = list(sys.argv if argv is None else argv)
    rclpy.init(args=args)
    node = DelenNode()
    try:
        executor = make_executor(node.get_parameter('executor').value)
    except (ValueError, ImportError) as exc:
        node.get_logger().fatal(str(exc))
        node.destroy_node()
        rclpy.try_shutdown()
        return 1
    executor.add_node(node)
    status = 0
    try:
        if node.get_parameter('autostart').value:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().fatal('configure failed; exiting (autostart)')
                return 1
            if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().fatal('activate failed; exiting (autostart)')
                return 1
        else:
            node.get_logger().info('waiting for lifecycle transitions (autostart false)')
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        try:
            node.close()
        except Exception as exc:  # noqa: BLE001 - shutting down anyway
            print(f'delen_node: shutdown: {exc}', file=sys.stderr)
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return status


if __name__ == '__main__':
    sys.exit(main())
