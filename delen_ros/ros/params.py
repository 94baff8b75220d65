"""The node's parameters: declared with descriptors and ranges, read and validated in one place.

:func:`declare` runs in the node's ``__init__``; :func:`read` at configure returns a frozen
:class:`NodeParams` or raises :class:`ParameterError` with one line naming the parameter, its value
and what it may be. Out-of-range overrides (``queue_depth:=-1``) already fail at declaration in
rclpy; :func:`describe_error` turns rclpy's exceptions into the same one line, so ``delen_node``
exits 1 with that line and no traceback.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable, Sequence

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

__all__ = ['NodeParams', 'ParameterError', 'declare', 'read', 'describe_error', 'asks_for_help', 'format_usage', 'usage', 'EXECUTORS', 'IMAGE_QOS',
           'CUDNN_TRIALS', 'CONV_KERNELS', 'PRECISIONS']

EXECUTORS = ('single', 'events', 'multi')
IMAGE_QOS = ('sensor_data', 'reliable')
LATENCY_FROM = ('stamp', 'arrival')
CUDNN_TRIALS = ('serving', 'configure')   # the default first
CONV_KERNELS = ('cudnn', 'matmul')   # core.pointwise.CONV_KERNELS (this module stays torch-free)
PRECISIONS = ('auto', 'float32', 'float16', 'bfloat16')   # core.runner.PRECISIONS
CHOICE_YIELDS = ('waiting', 'pressed', 'demand', 'never')   # core.engine.CHOICE_YIELDS, the default first
_LATER = ' Read at configure: a change takes effect at the next configure.'


class ParameterError(ValueError):
    """A parameter value the node cannot run with (the message is one line)."""


# name -> (default, description, range or choices, read_only)
_SPECS: dict[str, tuple[Any, str, Any, bool]] = {
    'autostart': (True, 'Configure and activate at start (true), or wait for lifecycle transitions (false).',
                  None, True),
    'model': ('cifar10_committee', "Model name in the model zoo ('cifar10_committee', 'cifar10_lite0', 'cifar10_lite2', 'cifar10_resnet9', 'fashion_mnist', ...) or a path "
              'to its .json / .pt.' + _LATER, None, False),
    'device': ('auto', "'auto' (CUDA if available, else CPU), 'cpu', 'cuda' or 'cuda:N'." + _LATER, None, False),
    'devices': ([''], "Several accelerators of this host, e.g. ['cuda:0', 'cuda:1']: one engine each, apps (with "
                "their camera) placed where admission leaves the most headroom and moved when load changes or a "
                "device fails; [''] = the device parameter alone. Not for heavy loads yet: on two H200s one node "
                'answered 93-96 % of 64 cameras\' frames (energy estimated: energy_meter auto does so on several '
                'GPUs; with NVML meters 30-71 %) where one node per GPU (launch/delen_fleet.launch.py) answered '
                'all of them in time (benchmarks/h200/multi_gpu_session19).' + _LATER, None, False),
    'profile': ('', "Profile JSON file; '' = the committed profile of this model on this device if present, else a "
                'quick on-device measurement.' + _LATER, None, False),
    'energy_meter': ('auto', "'auto', 'jetson', 'nvml', 'rapl' or 'estimate' (from the profile). 'auto' on several "
                     "GPUs (devices) estimates: one NVML meter per GPU held one node's workers up "
                     '(benchmarks/h200/multi_gpu_session19).' + _LATER,
                     None, False),
    'policy': ('delen', "Exit policy: 'delen' (predictive) or a baseline ('always_final', 'static_exit', "
               "'check_after_stage', 'fixed_confidence')." + _LATER, None, False),
    'image_qos': ('sensor_data', "Camera subscriptions: 'sensor_data' (best effort) or 'reliable'; keep-last 4 "
                  '(the engine keeps the newest queue_depth and counts the rest).' + _LATER, IMAGE_QOS, False),
    'queue_depth': (1, 'Newest frames kept per application; older ones are dropped and counted.' + _LATER,
                    (1, 64), False),
    'max_batch': (8, 'Most frames run as one batch, across applications.' + _LATER, (1, 1024), False),
    'state_file': ('', "YAML file where registered apps persist across restarts ('~' expands); '' = no "
                   'persistence.' + _LATER, None, False),
    'apps': ('', 'Apps to register at configure: a YAML list of {app_id, image_topic, max_latency_ms, min_accuracy, '
             'max_energy_mj, objective, result_topic, late_policy}; a bound is a number (0 = unbounded) or '
             '"exit:K" / "exit:K*F". Such apps belong to the operator: clients change them only with '
             'allow_takeover. Admitted on the profile alone, then judged again at the measured costs once the '
             'node has served for 2 s (one that does not fit is served after the others, told why).' + _LATER,
             None, False),
    'max_apps': (64, 'Most registered apps; SetBounds for a new app beyond it is rejected.' + _LATER,
                 (1, 4096), False),
    'allow_takeover': (False, 'Any client may update or remove any app (no token needed). False: only the client '
                       'holding the token returned at registration.' + _LATER, None, False),
    'service_queue_depth': (1000, 'Requests kept per service before the node answers them (a burst from one client '
                            'beyond this is lost).' + _LATER, (1, 100000), False),
    'torch_threads': (0, "CPU threads for torch (intra-op); 0 = auto: on a CPU device half the cores, at least one "
                      "(torch's threads wait for each other at every operator, and on all cores any other busy "
                      "thread stalls them: this 2-core VM ran cifar10_committee's full depth in 58 ms p50, "
                      "241 ms p90 beside one busy process on two threads, 30 ms on one; core/cpu_threads.py); "
                      "on CUDA torch's default." + _LATER,
                      (0, 256), False),
    'worker_nice': (0, "The engine worker thread's nice value; 0 leaves it at the process's. Negative puts its steps "
                    'ahead of the cameras, the DDS threads and other processes on the same cores (on a 2-core VM a '
                    "20 ms app's late frames were its own steps stretched 3-8x: benchmarks/cpu/"
                    'e2e_admission_session44; there -10 made no difference the runs could show, their late frames '
                    "coming with the hypervisor's theft: benchmarks/cpu/worker_nice_session44). Lowering it needs "
                    'CAP_SYS_NICE or an RLIMIT_NICE that allows it '
                    '(ulimit -e); where not permitted the node logs a warning and serves at the process\'s.'
                    + _LATER, (-20, 19), False),
    'precision': ('auto', "Weights and activations: 'auto' (default) float16 on CUDA; on a CPU bfloat16 where it "
                  "has AMX tiles (Intel Xeon since Sapphire Rapids), else float32; or 'float32', 'float16' (CUDA "
                  "only), 'bfloat16'. On this project's Xeon bfloat16 ran cifar10_committee's full depth in 0.77x "
                  "the time at batch 1 and ResNet-9 in 0.26x at batch 8, top-1 within 0.1 points "
                  "(benchmarks/cpu/bfloat16). The committed profile of that precision is used where there is "
                  "one (models/profiles/<model>__<device>__bfloat16.json), else the plain one." + _LATER,
                  PRECISIONS, False),
    'cuda_graphs': (True, 'On CUDA: capture every stage and head as a CUDA graph at configure, for batch 1, '
                    'max_batch and the sizes in between worth padding to (by the profile): first with PyTorch\'s own '
                    'convolutions (milliseconds), then the larger sizes again with cuDNN, keeping the faster graph '
                    '(batch 1 stays native: cuDNN wins little there); then replay them. False: eager.' + _LATER,
                    None, False),
    'conv_kernels': ('cudnn', "On CUDA, the convolutions' kernels. 'cudnn' (default): PyTorch's own first, then "
                     'cuDNN tried for the larger batch sizes (cudnn_trials). \'matmul\': 1x1 convolutions as cuBLAS '
                     "matrix products, the others on PyTorch's kernels, no cuDNN: nothing to set up, so cifar10_lite0 "
                     'configures in 2.6 s on an H200 instead of 6.4-6.7 s, but its steps run 1.5-1.9x slower at batch '
                     '8-32, and 10 ms apps beside accuracy cascades at 16 cameras met their bound for 45-78 % of frames '
                     "against 91 % (benchmarks/h200/conv_kernels_session20). For robots that restart often and run "
                     'loose bounds.' + _LATER, CONV_KERNELS, False),
    'cudnn_trials': ('serving', "With cuda_graphs and conv_kernels 'cudnn': when the larger batch sizes' graphs "
                     "are tried on cuDNN. 'serving' (default, session 21): in the background once active; until "
                     "then those sizes replay graphs captured without cuDNN (1x1 convolutions as matrix products: "
                     "1.7 against 1.0 ms full depth at batch 32 for cifar10_lite0 on an H200), for ~2 s; configure "
                     "-> first result 0.4-0.6 s, the node's configure from a cold start 2.2-3.1 s. 'configure': before "
                     "serving, 2.6-3.4 s and 4.3-9.5 s (benchmarks/h200/fold_session21). At 32 cameras x 30 Hz 2 of 8 "
                     "runs with 'serving' lost 0.4-0.5 % of frames while the trials ran, none of 4 with 'configure' "
                     "(benchmarks/h200/admission_confirm_session22); in sessions 18-19, with ~6 ms native batch-32 "
                     "graphs and ~5 s of trials, 2 of 8 lost 0.2-1 s of frames." + _LATER, CUDNN_TRIALS, False),
    'fuse_steps': (True, 'Run the steps whose exits the policy decides without a confidence (latency or energy bounds '
                   'alone, always_final) back to back: one head and one device sync per worker turn, not one per '
                   'exit. False: one step per turn (A/B).' + _LATER, None, False),
    'arrival_lookahead': (False, 'Hold a step back for a frame that a regular camera is about to send, due sooner, '
                          'that would otherwise wait behind it (steps are not preempted); runs of fused steps end '
                          'before such a frame must start. This CPU, a 10 ms app beside a 20 ms app on drifting '
                          'cameras: see benchmarks/cpu/arrival_lookahead_session29. Admission does not count on it '
                          'yet. Off by default: on the H200 (16 cameras, mixed bounds) it met the bounds as often '
                          'as without and gave up 0.7 points of accuracy (benchmarks/h200/session43).' + _LATER,
                          None, False),
    'executor': ('single', "rclpy executor: 'single' (default; callbacks only hand work over), 'events' "
                 "(rclpy.experimental.EventsExecutor: with rclpy 9.1.2 it did not answer the services created at "
                 "configure) or 'multi' (MultiThreadedExecutor: busy-spins; both kept for comparison).",
                 EXECUTORS, True),
    'gil_switch_interval_ms': (0.0, "Python's GIL switch interval, ms; 0 = the interpreter's default (5 ms). The "
                               "executor taking frames and the engine's worker share the GIL: shorter hand-overs "
                               "helped 8 cameras on a 2-core CPU, but one H200 run at 0.2 ms served 16 cameras "
                               "worse (benchmarks/h200/e2e_raw_switch), so the default is left alone.",
                               (0.0, 100.0), True),
    'latency_from': ('stamp', "Where a frame's latency (and its bound) starts: 'stamp' = the image's header.stamp, "
                     'so what the camera-to-node transport took counts, as a subscriber sees it (clocks of one '
                     "host or synchronised; a stamp in the future or over 1 s old falls back to arrival); 'arrival' "
                     '= when the node took the frame.' + _LATER, LATENCY_FROM, False),
    'delivery_allowance_ms': (1.0, 'Time kept after a result is published for it to reach its subscriber, ms (the '
                              'node cannot measure that hop; over loopback DDS: 0.4-0.8 ms p50 / 0.7-1.2 ms p99 on the H200 '
                              'host, benchmarks/h200/e2e; 1 ms p50 / 1.7-2.3 ms p99 on a 2-core VM, '
                              'benchmarks/cpu/e2e_mixed_allowance). Frames are planned to be published by their latency '
                              'bound less this (the scheduler\'s deadline, and since session 27 the policy\'s limit for '
                              'going deeper); feasible ranges, GetProfile and admission count it. The published '
                              'latency_ms / bounds_met stay the node-side figures.' + _LATER, (0.0, 1000.0), False),
    'admission_control': (True, 'Refuse a set_bounds request (or an app in the apps parameter) that would make an '
                          'admitted app unschedulable, and re-check the apps once a second. False: admit every '
                          'request whose bounds some exit can meet end to end, with no re-check and no demotion '
                          '(for a benchmark that runs refused requests anyway).' + _LATER, None, False),
    'admission_headroom': (0.1, 'The share of each latency bound a set_bounds request must leave free to be admitted '
                           '(0-0.9); the once-a-second re-check keeps none, so the measured tails may grow that much '
                           'before an admitted app is told it is at risk. With none, an H200 admitted a 5 ms app with '
                           'no slack that then met its bound for 75 % of its frames (benchmarks/h200/e2e_session10).'
                           + _LATER, (0.0, 0.9), False),
    'admission_headroom_min_ms': (1.0, 'The least of any latency bound admission keeps free, ms (admission_headroom '
                                  'is a share, but the tails grow by absolute amounts as load is admitted: H200, 16 '
                                  'cameras, frame age and serving overhead grew 1.1 ms from a 5 ms app\'s admission to '
                                  'full load, and kept 0.5 ms it met its bound for 84 % of its frames; '
                                  'benchmarks/h200/e2e_session13). 0 = the share alone.' + _LATER, (0.0, 1000.0), False),
    'admission_settle_s': (1.0, 'Longest a set_bounds request is held, s, while apps admitted in the 2 s before it '
                           'have had no frames served: judged then, their load is in the costs (this CPU: a 10 ms '
                           'app judged before its neighbour\'s frames priced exit 0 at the warm-up\'s 1.47 ms instead '
                           'of the 3.1-3.9 ms measured under load, was admitted, and met its bound for 92-93 % of '
                           'frames). The executor serves everything else meanwhile. 0 = judge at once.' + _LATER,
                           (0.0, 10.0), False),
    'choice_headroom': (0.1, 'For the delen policy: the share of an app\'s latency bound that a step it takes by '
                        'choice keeps free before the deadline (0-0.9): an app as accurate as its bound allows goes '
                        'deeper only while the step is predicted to end this early; steps its bounds need are '
                        'planned to the deadline. Planned to the deadline, such steps made 10 ms apps miss on an '
                        'H200 (benchmarks/h200/choice_headroom_session28). 0 = to the deadline. Each such app '
                        'also keeps a margin it learns from its own late results (core/choice_margin.py).' + _LATER,
                        (0.0, 0.9), False),
    'choice_yields': ('waiting', 'When a frame whose bounds are already met at an exit stops there rather than go '
                      "deeper by choice, for other apps' on-time frames waiting: 'waiting' = whenever any wait (as "
                      "'pressed' for an app that asked for MAX_ACCURACY itself); 'pressed' = where the step would "
                      "end after they must start; 'demand' = after they must start to make their deadlines "
                      "together, batched; 'never' = it always goes on. On an H200 (16 cameras, 10 ms and 33 ms "
                      "apps) 'waiting' had every app at 99 % or more in 8 of 10 interleaved runs, 'pressed' and "
                      "'demand' in 5 of 10, and cost the apps with no accuracy bound 3 points of accuracy "
                      '(benchmarks/h200/session41).' + _LATER, CHOICE_YIELDS, False),
    'transport_prior_ms': (2.0, "The frames' age on arrival (stamp -> node) assumed until it is measured, ms: an app "
                           "registered before its camera's first frames reach the node is judged against it (measured "
                           'p99 at 640x480: 2.3-3.5 ms on the H200 hosts and a 2-core VM). 0 = judge such apps on compute '
                           'alone.' + _LATER, (0.0, 1000.0), False),
    'rate_prior_hz': (30.0, "A new app's camera frame rate assumed by admission until it is measured, Hz (set it to "
                      'your cameras\' rate: a 30 Hz guess refuses apps that fit at 8 Hz).' + _LATER, (0.1, 1000.0), False),
    'ingress_processes': (-1, 'Receiver processes that take camera frames outside the node\'s GIL and hand them over '
                          'through shared memory (delen_ros/ros/ingress.py): 0 = the node\'s own executor takes them; '
                          '-1 = auto (from 8 cores a quarter of them, at most 8; below 8 cores one where the C '
                          'receiver is built, else none).' + _LATER,
                          (-1, 64), False),
    'result_outlet': ('auto', "Who publishes the results: 'auto' = the C outlet process where it was built "
                      "(delen_ros/ros/outlet.py: the DDS writes outside the node's GIL; the result topics' publisher "
                      "is then its hidden node _delen_outlet_*), else the node; 'node' = the node itself. The outlet's "
                      "measured lag from hand-over to publication (p99) is kept in every latency bound beside "
                      "delivery_allowance_ms." + _LATER,
                      ('auto', 'node'), False),
    'status_period_s': (1.0, 'Period of ~/status and /diagnostics, seconds.' + _LATER, (0.1, 60.0), False),
    'energy_window_s': (1.0, 'How often the energy meter is read while serving, seconds (the measured energy is '
                        'summed over 10 s before it is split over results, so a longer window loses nothing but '
                        'how soon the split follows a change). An NVML read takes the driver\'s lock for 3 ms '
                        '(up to 15 ms) on an H200 host, and the CUDA calls of the worker wait behind it: 0.1 s '
                        'windows, as before session 31, read it ten times a second.' + _LATER, (0.05, 60.0), False),
}


@dataclasses.dataclass(frozen=True)
class NodeParams:
    """The parameters as read at configure (see ``_SPECS`` for meanings)."""

    autostart: bool
    model: str
    device: str
    devices: list[str]
    profile: str
    energy_meter: str
    policy: str
    image_qos: str
    queue_depth: int
    max_batch: int
    state_file: str
    apps: str
    max_apps: int
    allow_takeover: bool
    service_queue_depth: int
    torch_threads: int
    worker_nice: int
    precision: str
    cuda_graphs: bool
    conv_kernels: str
    cudnn_trials: str
    fuse_steps: bool
    arrival_lookahead: bool
    executor: str
    gil_switch_interval_ms: float
    latency_from: str
    delivery_allowance_ms: float
    admission_control: bool
    admission_headroom: float
    admission_headroom_min_ms: float
    admission_settle_s: float
    choice_headroom: float
    choice_yields: str
    transport_prior_ms: float
    rate_prior_hz: float
    ingress_processes: int
    result_outlet: str
    status_period_s: float
    energy_window_s: float


def declare(node) -> None:
    """Declare every parameter on ``node`` with its descriptor (ranges for numbers)."""
    for name, (default, description, limits, read_only) in _SPECS.items():
        # A float parameter takes an integer too (`delivery_allowance_ms:=2`): rclpy would refuse it
        # by type; read() checks the type and range and converts.
        descriptor = ParameterDescriptor(description=description, read_only=read_only,
                                         dynamic_typing=isinstance(default, float))
        if isinstance(limits, tuple) and len(limits) == 2 and isinstance(default, int) \
                and not isinstance(default, bool):
            descriptor.integer_range = [IntegerRange(from_value=limits[0], to_value=limits[1], step=1)]
        elif isinstance(limits, tuple) and isinstance(default, float):
            descriptor.floating_point_range = [FloatingPointRange(from_value=limits[0], to_value=limits[1], step=0.0)]
        node.declare_parameter(name, default, descriptor)


def read(node) -> NodeParams:
    """The declared parameters, validated; :class:`ParameterError` names the first bad one."""
    values = {name: node.get_parameter(name).value for name in _SPECS}
    for name, (default, _, limits, _) in _SPECS.items():
        value = values[name]
        if type(value) is not type(default) and not (isinstance(default, float) and type(value) is int):
            raise ParameterError(f'parameter {name}: expected {type(default).__name__}, got {value!r}')
        if isinstance(limits, tuple) and limits and isinstance(limits[0], str):
            if value not in limits:
                raise ParameterError(f'parameter {name}: must be one of {", ".join(limits)}; got {value!r}')
        elif isinstance(limits, tuple) and not limits[0] <= value <= limits[1]:
            raise ParameterError(f'parameter {name}: must be in [{limits[0]}, {limits[1]}]; got {value!r}')
    for name, (default, *_) in _SPECS.items():
        if isinstance(default, float):
            values[name] = float(values[name])
    devices = [d for d in values['devices'] if d] or [values['device']]
    if values['precision'] == 'float16' and 'cpu' in devices:
        raise ParameterError(f"parameter precision: float16 needs a CUDA device, got device {values['device']!r}"
                             f"{' in devices' if values['devices'] != [''] else ''} (float32 or bfloat16 on a CPU)")
    return NodeParams(**values)


def describe_error(exc: BaseException) -> str:
    """One line for a parameter error from rclpy (declaration with a bad override) or from :func:`read`."""
    text = ' '.join(str(exc).split())
    text = re.sub(r',?\s*at\s+/\S+:\d+', '', text)
    match = re.search(r"parameter '?([A-Za-z_][\w.]*)'?", text, re.IGNORECASE)
    name = match.group(1) if match else ''
    spec = _SPECS.get(name)
    if spec is not None and isinstance(spec[2], tuple) and not isinstance(spec[2][0], str):
        return f'bad parameter {name}: must be in [{spec[2][0]}, {spec[2][1]}] ({text})'
    return f'bad parameter: {text}'


def asks_for_help(argv: Sequence[str]) -> bool:
    """Whether a program's own arguments (after its name, before ``--ros-args``) ask for ``-h`` / ``--help``."""
    own = argv[1:argv.index('--ros-args')] if '--ros-args' in argv else argv[1:]
    return '-h' in own or '--help' in own


def format_usage(program: str, about: Sequence[str],
                 rows: Iterable[tuple[str, Any, str, Any, bool]]) -> str:
    """A ROS program's ``--help``: how to set a parameter, ``about``, then per ``(name, default, description,
    limits, read_only)`` row its default, its range or choices and its meaning."""
    import textwrap
    lines = [f'usage: {program} [--ros-args (-p NAME:=VALUE | --params-file FILE.yaml) ...]', '', *about, '']
    for name, default, description, limits, read_only in rows:
        facts = [f'default {str(default).lower() if isinstance(default, bool) else repr(default)}']
        if isinstance(limits, tuple) and limits and isinstance(limits[0], str):
            facts.append(f'one of: {", ".join(limits)}')
        elif isinstance(limits, tuple):
            facts.append(f'in [{limits[0]}, {limits[1]}]')
        if read_only:
            facts.append('read-only')
        lines.append(f'  {name} ({"; ".join(facts)})')
        lines += textwrap.wrap(description, width=100, initial_indent='      ', subsequent_indent='      ')
    return '\n'.join(lines) + '\n'


def usage() -> str:
    """``delen_node --help``: how to set a parameter, then each one's default, limits and meaning."""
    return format_usage('delen_node', [
        'The delen lifecycle node: one multi-exit network served to many camera topics, each app under',
        'its own latency / accuracy / energy bounds (register them with the ~/set_bounds service).',
        'Parameters (config/delen.yaml lists them too):'], ((name, *spec) for name, spec in _SPECS.items()))
