"""Registered applications as the node keeps them: validation, the ``apps`` parameter, the state file.

ROS-free (stdlib + PyYAML + :mod:`delen_ros.core.bounds`), so it is unit-testable without a node.
An :class:`AppConfig` holds what ``SetBounds`` asked for, with bounds in the service's convention
(0 = unbounded) and topics already resolved to absolute names by the node.

The state file is YAML, written atomically (temp file in the same folder, fsync, rename), so a
crash mid-write leaves the previous state, never a torn file::

    version: 1
    apps:
    - {app_id: navigation, image_topic: /front_camera/image_raw, result_topic: /delen/navigation/result,
       max_latency_ms: 40.0, min_accuracy: 0.0, max_energy_mj: 0.0, objective: max_accuracy}
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import re
import tempfile
from typing import Any, Callable, Iterable, Mapping

import yaml

from delen_ros.core.bounds import Bounds, Objective

__all__ = ['STATE_VERSION', 'RELATIVE_FIELDS', 'AppConfig', 'validate_app_id', 'resolve_relative_bounds',
           'parse_apps_param', 'load_state', 'save_state']

STATE_VERSION = 1

RELATIVE_FIELDS = ('max_latency_ms', 'min_accuracy', 'max_energy_mj')
_RELATIVE = re.compile(r'^\s*exit:(\d+)\s*(?:\*\s*(\d+(?:\.\d*)?|\.\d+))?\s*$')

# The app id becomes a topic name token (~/<app_id>/result): a letter, then letters, digits, '_'.
_APP_ID = re.compile(r'^[A-Za-z][A-Za-z0-9_]*$')
_MAX_APP_ID = 64


def validate_app_id(app_id: str) -> str:
    """``app_id`` if it can name an application (and a topic token); else ``ValueError``."""
    if not isinstance(app_id, str) or not app_id:
        raise ValueError(f'app_id must be a non-empty string, got {app_id!r}')
    if len(app_id) > _MAX_APP_ID or not _APP_ID.match(app_id):
        raise ValueError(f'app_id must be a letter followed by letters, digits or "_" (at most {_MAX_APP_ID} '
                         f'characters), got {app_id!r}')
    return app_id


@dataclasses.dataclass(frozen=True)
class AppConfig:
    """One application: where its frames come from, where results go, its bounds (0 = unbounded).

    :param image_topic: camera topic, as given (the node resolves relative names).
    :param result_topic: ``''`` = the node's ``~/<app_id>/result``.
    :raises ValueError: bad app id, empty topic, NaN / infinite / negative bound, accuracy above 1,
        unknown objective.
    """

    app_id: str
    image_topic: str
    max_latency_ms: float = 0.0
    min_accuracy: float = 0.0
    max_energy_mj: float = 0.0
    objective: Objective = Objective.MAX_ACCURACY
    result_topic: str = ''

    def __post_init__(self):
        validate_app_id(self.app_id)
        if not isinstance(self.image_topic, str) or not self.image_topic.strip():
            raise ValueError(f'image_topic must be a non-empty topic name, got {self.image_topic!r}')
        if not isinstance(self.result_topic, str):
            raise ValueError(f'result_topic must be a string, got {self.result_topic!r}')
        # The core validates the numbers (NaN, inf, negative, accuracy > 1); here 0 = unbounded.
        bounds = Bounds.from_request(self.max_latency_ms, self.min_accuracy, self.max_energy_mj, self.objective)
        object.__setattr__(self, 'max_latency_ms', bounds.max_latency_ms or 0.0)
        object.__setattr__(self, 'min_accuracy', bounds.min_accuracy or 0.0)
        object.__setattr__(self, 'max_energy_mj', bounds.max_energy_mj or 0.0)
        object.__setattr__(self, 'objective', bounds.objective)

    @property
    def bounds(self) -> Bounds:
        """The core's :class:`~delen_ros.core.bounds.Bounds` (0 becomes ``None``)."""
        return Bounds.from_request(self.max_latency_ms, self.min_accuracy, self.max_energy_mj, self.objective)

    def describe(self) -> str:
        """The bounds in a few words, e.g. ``'latency <= 40 ms, max_accuracy'`` (for logs)."""
        parts = [f'latency <= {self.max_latency_ms:.4g} ms' if self.max_latency_ms else '',
                 f'accuracy >= {self.min_accuracy:.4g}' if self.min_accuracy else '',
                 f'energy <= {self.max_energy_mj:.4g} mJ' if self.max_energy_mj else '']
        return ', '.join([p for p in parts if p] or ['unbounded']) + f', {self.objective.value}'

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d['objective'] = self.objective.value
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> 'AppConfig':
        """From a mapping with the field names; unknown keys raise ``ValueError`` (a typo should not pass)."""
        if not isinstance(d, Mapping):
            raise ValueError(f'an app must be a mapping of {[f.name for f in dataclasses.fields(cls)]}, got {d!r}')
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f'unknown app fields {sorted(unknown)}; known: {sorted(known)}')
        missing = {'app_id', 'image_topic'} - set(d)
        if missing:
            raise ValueError(f'app {dict(d)!r} lacks {sorted(missing)}')
        return cls(**d)


def _apps_from(data: Any, where: str) -> list[AppConfig]:
    if data is None:
        return []
    if not isinstance(data, list):
        raise ValueError(f'{where}: expected a list of apps, got {type(data).__name__}')
    apps = [AppConfig.from_dict(d) for d in data]
    ids = [a.app_id for a in apps]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f'{where}: duplicate app ids {duplicates}')
    return apps


def resolve_relative_bounds(app: Mapping[str, Any], figure: Callable[[str, int], float], *,
                            num_exits: int) -> dict[str, Any]:
    """``app`` with bounds written ``'exit:K'`` or ``'exit:K*F'`` replaced by numbers.

    ``'exit:K'`` is exit ``K``'s figure on this device (``figure(field, K)``: the node passes the
    profile's p99 time to exit K, its accuracy, its cumulative energy); ``*F`` scales it. This lets
    one configuration mean the same on a CPU and on a GPU, e.g. ``max_energy_mj: exit:1``.

    :raises ValueError: a malformed spec, or ``K`` outside ``0..num_exits-1``.
    """
    out = dict(app)
    for field in RELATIVE_FIELDS:
        value = out.get(field)
        if not isinstance(value, str):
            continue
        match = _RELATIVE.match(value)
        if not match:
            raise ValueError(f'{field} must be a number or "exit:K" / "exit:K*F", got {value!r}')
        k, factor = int(match.group(1)), float(match.group(2) or 1.0)
        if not 0 <= k < num_exits:
            raise ValueError(f'{field} {value!r}: exit {k} does not exist (exits 0..{num_exits - 1})')
        out[field] = figure(field, k) * factor
    return out


def parse_apps_param(text: str, *, figure: Callable[[str, int], float] | None = None,
                     num_exits: int = 0) -> list[AppConfig]:
    """The node's ``apps`` parameter: a YAML list of app mappings; ``''`` = none.

    :param figure: resolves ``'exit:K'`` bounds (see :func:`resolve_relative_bounds`); ``None``:
        such bounds are an error.
    :param num_exits: exits of the model (with ``figure``).

    >>> parse_apps_param("[{app_id: nav, image_topic: /cam, max_latency_ms: 40}]")[0].max_latency_ms
    40.0
    """
    if not text.strip():
        return []
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f'apps parameter is not valid YAML: {exc}') from exc
    if figure is not None and isinstance(data, list):
        data = [resolve_relative_bounds(d, figure, num_exits=num_exits) if isinstance(d, Mapping) else d
                for d in data]
    return _apps_from(data, 'apps parameter')


def load_state(path: str | os.PathLike) -> list[AppConfig]:
    """The apps saved in a state file; ``[]`` when the file does not exist.

    :raises ValueError: unreadable YAML, unknown version, or a malformed app.
    """
    path = pathlib.Path(path)
    if not path.exists():
        return []
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f'state file {path} is not valid YAML: {exc}') from exc
    if data is None:
        return []
    if not isinstance(data, dict) or data.get('version') != STATE_VERSION:
        raise ValueError(f'state file {path}: expected a mapping with version {STATE_VERSION}, got '
                         f'{data if not isinstance(data, dict) else data.get("version")!r}')
    return _apps_from(data.get('apps'), f'state file {path}')


def save_state(path: str | os.PathLike, apps: Iterable[AppConfig]) -> pathlib.Path:
    """Write ``apps`` to ``path`` atomically (the folder is created if needed)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump({'version': STATE_VERSION, 'apps': [a.to_dict() for a in apps]}, sort_keys=False)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'w') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path
