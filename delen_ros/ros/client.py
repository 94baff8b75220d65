"""``delen_client``: register an application with the delen node and watch its results live.

Examples::

    delen_client navigation --topic /front_camera/image_raw --max-latency-ms 40
    delen_client inspection --topic /arm_camera/image_raw --min-accuracy 0.9 --count 50
    delen_client battery --topic /rear_camera/image_raw --max-energy-mj 2 --objective min_energy
    delen_client navigation --remove
    delen_client --profile

A bound of 0 means unbounded (as in ``SetBounds``). Results print one line each: class, exit
(``k/last``, 0 = earliest), confidence, latency against the bound, energy (``~`` marks an estimate
rather than a measurement), and whether every bound was met.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Sequence

__all__ = ['OBJECTIVES', 'LATE_POLICIES', 'DelenClient', 'format_result', 'main']

# Objective names -> SetBounds constants (same order as the .srv).
OBJECTIVES: dict[str, int] = {'default': 0, 'max_accuracy': 1, 'min_latency': 2, 'min_energy': 3}
LATE_POLICIES: dict[str, int] = {'serve_fastest': 0, 'drop': 1}
_SERVICE_DEPTH = 1000   # a client's own response queue must hold the answers of a burst (rclpy's default: 10)


class DelenClient:
    """Service calls to a delen node from an rclpy node of the caller's.

    :param node: the caller's node (it must be spun by the caller or by :meth:`call`).
    :param server: the delen node's fully qualified name, e.g. ``'/delen'``.
    """

    def __init__(self, node, *, server: str = '/delen'):
        from delen_ros.srv import GetProfile, RemoveApp, SetBounds
        self.node = node
        server = server.rstrip('/')
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=_SERVICE_DEPTH, reliability=ReliabilityPolicy.RELIABLE)
        self.set_bounds = node.create_client(SetBounds, f'{server}/set_bounds', qos_profile=qos)
        self.remove_app = node.create_client(RemoveApp, f'{server}/remove_app', qos_profile=qos)
        self.get_profile = node.create_client(GetProfile, f'{server}/get_profile', qos_profile=qos)
        self.tokens: dict[str, str] = {}   # app -> ownership token from its registration (needed to change it)

    def call(self, client, request, *, timeout_s: float = 10.0):
        """Call a service and wait for the answer, spinning the node.

        :param timeout_s: for the service to appear and for the answer, each.
        :raises TimeoutError: the service did not appear or did not answer in time.
        """
        import rclpy
        if not client.wait_for_service(timeout_sec=timeout_s):
            raise TimeoutError(f'service {client.srv_name} not available after {timeout_s:g} s '
                               '(is the delen node running and active?)')
        future = client.call_async(request)
        rclpy.spin_until_future_complete(self.node, future, timeout_sec=timeout_s)
        if not future.done():
            client.remove_pending_request(future)
            raise TimeoutError(f'service {client.srv_name} did not answer within {timeout_s:g} s')
        return future.result()

    def register(self, app_id: str, *, image_topic: str, max_latency_ms: float = 0.0,
                 min_accuracy: float = 0.0, max_energy_mj: float = 0.0, objective: str = 'default',
                 result_topic: str = '', late_policy: str = 'serve_fastest', token: str | None = None,
                 timeout_s: float = 10.0):
        """``SetBounds``: register ``app_id`` or update its bounds (0 = unbounded). Returns the response.

        :param token: the app's ownership token; ``None``: the one this client got at registration.
        """
        from delen_ros.srv import SetBounds
        if objective not in OBJECTIVES:
            raise ValueError(f'objective must be one of {sorted(OBJECTIVES)}, got {objective!r}')
        request = SetBounds.Request(app_id=app_id, image_topic=image_topic, max_latency_ms=float(max_latency_ms),
                                    min_accuracy=float(min_accuracy), max_energy_mj=float(max_energy_mj),
                                    objective=OBJECTIVES[objective], result_topic=result_topic,
                                    late_policy=LATE_POLICIES[late_policy],
                                    token=self.tokens.get(app_id, '') if token is None else token)
        response = self.call(self.set_bounds, request, timeout_s=timeout_s)
        if response.accepted:
            self.tokens[app_id] = response.token
        return response

    def remove(self, app_id: str, *, token: str | None = None, timeout_s: float = 10.0):
        """``RemoveApp`` (``token``: ``None`` = the one from this client's registration). Returns the response."""
        from delen_ros.srv import RemoveApp
        request = RemoveApp.Request(app_id=app_id, token=self.tokens.get(app_id, '') if token is None else token)
        return self.call(self.remove_app, request, timeout_s=timeout_s)

    def profile(self, *, timeout_s: float = 10.0):
        """``GetProfile``: the model's per-exit profile on the node's device."""
        from delen_ros.srv import GetProfile
        return self.call(self.get_profile, GetProfile.Request(), timeout_s=timeout_s)


def format_plan(response) -> str:
    """One paragraph describing a ``SetBounds`` answer."""
    lat, acc, en = response.feasible_latency_ms, response.feasible_accuracy, response.feasible_energy_mj
    feasible = (f'feasible here: latency {lat[0]:.2f}-{lat[1]:.2f} ms, accuracy {acc[0]:.3f}-{acc[1]:.3f}, '
                f'energy {en[0]:.3f}-{en[1]:.3f} mJ')
    if not response.accepted:
        fit = float(getattr(response, 'would_fit_max_latency_ms', 0.0))
        return (f'rejected: {response.message}\n  {feasible}'
                + (f'\n  would fit beside the admitted apps: max_latency_ms >= {fit:.2f}' if fit > 0 else ''))
    return (f'accepted: results on {response.result_topic}\n'
            f'  plan: exit {response.planned_exit}, ~{response.expected_latency_ms:.2f} ms, '
            f'accuracy {response.expected_accuracy:.3f}, {response.expected_energy_mj:.3f} mJ'
            + (f' ({response.message})' if response.message else '') + f'\n  {feasible}'
            + f'\n  token: {response.token} (keep it: updating or removing this app needs it)')


def format_profile(response) -> str:
    """A table of a ``GetProfile`` answer."""
    lines = [f'model {response.model} on {response.device}; energy: {response.energy_source}; '
             f'accuracy: {response.accuracy_note}',
             f'{"exit":>4} {"name":16s} {"p50 ms":>8} {"p99 ms":>8} {"energy mJ":>10} {"accuracy":>8}']
    for k, name in enumerate(response.exit_names):
        lines.append(f'{k:>4} {name:16s} {response.latency_ms[k]:8.2f} {response.latency_p99_ms[k]:8.2f} '
                     f'{response.energy_mj[k]:10.3f} {response.accuracy[k]:8.3f}')
    return '\n'.join(lines)


def format_result(msg, *, max_latency_ms: float = 0.0) -> str:
    """One line for an ``InferenceResult``: class, exit, confidence, latency vs the bound, energy."""
    bound = f'/{max_latency_ms:g}' if max_latency_ms > 0 else ''
    energy = ('' if msg.energy_measured else '~') + f'{msg.energy_mj:.3f} mJ ({msg.energy_source})'
    return (f'{msg.app_id}: {msg.label!r:>14} (class {msg.class_id}) exit {msg.exit_index}/{msg.num_exits - 1} '
            f'conf {msg.confidence:.2f} exp.acc {msg.expected_accuracy:.2f} | '
            f'latency {msg.latency_ms:.1f}{bound} ms (stamp {msg.stamp_latency_ms:.1f} ms) | {energy} | '
            f'{"ok" if msg.bounds_met else "MISSED"}')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='delen_client', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('app_id', nargs='?', default='', help='application name')
    parser.add_argument('--topic', default='', help='camera image topic (required to register)')
    parser.add_argument('--max-latency-ms', type=float, default=0.0, help='0 = unbounded')
    parser.add_argument('--min-accuracy', type=float, default=0.0, help='0-1, 0 = unbounded')
    parser.add_argument('--max-energy-mj', type=float, default=0.0, help='per inference, 0 = unbounded')
    parser.add_argument('--objective', default='default', choices=sorted(OBJECTIVES),
                        help='default: with only an accuracy bound, stop at the first exit that meets it')
    parser.add_argument('--late-policy', default='serve_fastest', choices=sorted(LATE_POLICIES),
                        help='a frame that can no longer meet the latency bound: fastest exit, or drop')
    parser.add_argument('--token', default=None, help='the ownership token printed at registration (to update '
                        'or remove an app registered earlier)')
    parser.add_argument('--result-topic', default='', help='empty = /delen/<app_id>/result')
    parser.add_argument('--server', default='/delen', help='the delen node (fully qualified name)')
    parser.add_argument('--remove', action='store_true', help='remove the app and exit')
    parser.add_argument('--profile', action='store_true', help='print the per-exit profile and exit')
    parser.add_argument('--no-follow', action='store_true', help='register and exit, print no results')
    parser.add_argument('--count', type=int, default=0, help='exit after this many results (0 = no limit)')
    parser.add_argument('--duration', type=float, default=0.0, help='exit after this many s (0 = no limit)')
    parser.add_argument('--timeout', type=float, default=10.0, help='service wait, s')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.utilities import remove_ros_args

    from delen_ros.msg import InferenceResult

    argv = list(sys.argv if argv is None else ['delen_client', *argv])
    parser = build_parser()
    args = parser.parse_args(remove_ros_args(argv)[1:])
    if not args.profile and not args.app_id:
        parser.error('app_id is required (or --profile)')
    if not args.profile and not args.remove and not args.topic:
        parser.error('--topic is required to register an app')
    for name in ('max_latency_ms', 'min_accuracy', 'max_energy_mj'):
        if not math.isfinite(getattr(args, name)):
            parser.error(f'--{name.replace("_", "-")} must be finite, got {getattr(args, name)!r}')
    rclpy.init(args=argv)
    node = rclpy.create_node('delen_client')
    client = DelenClient(node, server=args.server)
    try:
        if args.profile:
            print(format_profile(client.profile(timeout_s=args.timeout)))
            return 0
        if args.remove:
            response = client.remove(args.app_id, token=args.token, timeout_s=args.timeout)
            print(response.message or ('removed' if response.removed else 'not removed'))
            return 0 if response.removed else 1
        response = client.register(args.app_id, image_topic=args.topic, max_latency_ms=args.max_latency_ms,
                                   min_accuracy=args.min_accuracy, max_energy_mj=args.max_energy_mj,
                                   objective=args.objective, result_topic=args.result_topic,
                                   late_policy=args.late_policy, token=args.token, timeout_s=args.timeout)
        print(format_plan(response), flush=True)
        if not response.accepted:
            return 1
        if args.no_follow:
            return 0
        received = 0

        def on_result(msg) -> None:
            nonlocal received
            received += 1
            print(format_result(msg, max_latency_ms=args.max_latency_ms), flush=True)

        node.create_subscription(InferenceResult, response.result_topic, on_result, 10)
        deadline = time.monotonic() + args.duration if args.duration > 0 else math.inf
        while rclpy.ok() and time.monotonic() < deadline and not (args.count and received >= args.count):
            rclpy.spin_once(node, timeout_sec=0.1)
        return 0
    except TimeoutError as exc:
        print(f'delen_client: {exc}', file=sys.stderr)
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        return 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    sys.exit(main())
