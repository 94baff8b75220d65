"""Registered applications as the node keeps them: validation, the ``apps`` parameter, the state file.

ROS-free (stdlib + PyYAML + :mod:`delen_ros.core.bounds`), so it is unit-testable without a node.
An :class:`AppConfig` holds what ``SetBounds`` asked for, with bounds in the service's convention
(0 = unbounded) and topics already resolved to absolute names by the node.

The state file is YAML, written atomically (temp file in the same folder, fsync, rename, fsync of
the folder), so a crash mid-write leaves the previous state, never a torn file::

    version: 1
    apps:
    - {app_id: navigation, image_topic: /front_camera/image_raw, result_topic: /delen/navigation/result,
       max_latency_ms: 40.0, min_accuracy: 0.0, max_energy_mj: 0.0, objective: max_accuracy,
       late_policy: serve_fastest, owner: <sha256 of the owner's token>}

Reading is forgiving entry by entry (:func:`read_state`): a bad entry is reported and skipped, the
others restored, and a file that is not entirely valid is first copied beside itself as a dated
backup (``apps.yaml.bad-20261128T101500``), so that nothing a user wrote is lost by the next save.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import os
import secrets
import shutil
import pathlib
import re
import tempfile
from typing import Any, Callable, Iterable, Mapping

import yaml

from delen_ros.core.bounds import Bounds, LatePolicy, Objective

__all__ = ['STATE_VERSION', 'RELATIVE_FIELDS', 'AppConfig', 'StateRead', 'validate_app_id', 'resolve_relative_bounds',
           'parse_apps_param', 'read_state', 'load_state', 'save_state', 'new_token', 'token_hash']

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


def new_token() -> str:
    """A fresh ownership token (128 random bits, hex)."""
    return secrets.token_hex(16)


def token_hash(token: str) -> str:
    """What the node keeps of a token (state file included): its SHA-256, hex. ``''`` for ``''``."""
    return hashlib.sha256(token.encode()).hexdigest() if token else ''


_OWNER = re.compile(r'^([0-9a-f]{64})?$')


@dataclasses.dataclass(frozen=True)
class AppConfig:
    """One application: where its frames come from, where results go, its bounds (0 = unbounded).

    :param image_topic: camera topic, as given (the node resolves relative names).
    :param result_topic: ``''`` = the node's ``~/<app_id>/result``.
    :param late_policy: what happens to a frame that can no longer meet the latency bound.
    :param owner: :func:`token_hash` of the owner's token; ``''``: configured by the operator
        (``apps`` parameter), changed over a service only with ``allow_takeover``.
    :raises ValueError: bad app id, empty topic, NaN / infinite / negative bound, accuracy above 1,
        unknown objective or late policy, malformed owner.
    """

    app_id: str
    image_topic: str
    max_latency_ms: float = 0.0
    min_accuracy: float = 0.0
    max_energy_mj: float = 0.0
    objective: Objective = Objective.DEFAULT
    result_topic: str = ''
    late_policy: LatePolicy = LatePolicy.SERVE_FASTEST
    owner: str = ''

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
        object.__setattr__(self, 'late_policy', LatePolicy.parse(self.late_policy))
        if not isinstance(self.owner, str) or not _OWNER.match(self.owner):
            raise ValueError('owner must be a token hash (64 hex digits) or empty')

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
        d['late_policy'] = self.late_policy.value
        return d

    def same_request(self, other: 'AppConfig') -> bool:
        """Equal in everything a client asks for (the owner aside)."""
        return dataclasses.replace(self, owner='') == dataclasses.replace(other, owner='')

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
        try:
            return cls(**d)
        except TypeError as exc:  # e.g. a non-string id from a hand-edited file
            raise ValueError(f'app {dict(d)!r}: {exc}') from None


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


@dataclasses.dataclass(frozen=True)
class StateRead:
    """What :func:`read_state` found: the valid ``apps``, one line per problem in ``errors``, and the
    dated ``backup`` copy it made of a file that was not entirely valid (``None``: none needed)."""

    apps: list[AppConfig]
    errors: list[str]
    backup: pathlib.Path | None = None


def _backup(path: pathlib.Path, *, now: datetime.datetime | None = None) -> pathlib.Path:
    stamp = (now or datetime.datetime.now()).strftime('%Y%m%dT%H%M%S')
    target = path.with_name(f'{path.name}.bad-{stamp}')
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f'{path.name}.bad-{stamp}-{n}')
    shutil.copy2(path, target)
    return target


def read_state(path: str | os.PathLike, *, backup: bool = True) -> StateRead:
    """The valid apps of a state file, entry by entry; never raises on its content.

    A missing file is an empty registry. Unreadable bytes, YAML errors, a wrong version or shape and
    bad entries are reported in ``errors``; with ``backup`` the file is then copied beside itself
    (``<name>.bad-<YYYYmmddTHHMMSS>``) before anything can overwrite it.
    """
    path = pathlib.Path(path)
    if not path.exists():
        return StateRead([], [])
    errors: list[str] = []
    apps: list[AppConfig] = []
    try:
        data = yaml.safe_load(path.read_bytes().decode('utf-8'))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        errors.append(f'state file {path} is unreadable: {" ".join(str(exc).split())[:300]}')
        data = None
    if not errors and data is not None:
        if not isinstance(data, dict) or data.get('version') != STATE_VERSION:
            errors.append(f'state file {path}: expected a mapping with version {STATE_VERSION}, got '
                          f'{type(data).__name__ if not isinstance(data, dict) else repr(data.get("version"))}')
        elif data.get('apps') is not None and not isinstance(data.get('apps'), list):
            errors.append(f'state file {path}: apps must be a list, got {type(data.get("apps")).__name__}')
        else:
            seen: set[str] = set()
            for i, entry in enumerate(data.get('apps') or []):
                try:
                    app = AppConfig.from_dict(entry)
                except ValueError as exc:
                    errors.append(f'state file {path}: entry {i} skipped: {exc}')
                    continue
                if app.app_id in seen:
                    errors.append(f'state file {path}: entry {i} skipped: duplicate app id {app.app_id!r}')
                    continue
                seen.add(app.app_id)
                apps.append(app)
    saved = None
    if errors and backup:
        try:
            saved = _backup(path)
        except OSError as exc:
            errors.append(f'could not back up {path}: {exc}')
    return StateRead(apps, errors, saved)


def load_state(path: str | os.PathLike) -> list[AppConfig]:
    """The apps saved in a state file, strictly; ``[]`` when the file does not exist.

    :raises ValueError: anything :func:`read_state` would report (no backup is made).
    """
    read = read_state(path, backup=False)
    if read.errors:
        raise ValueError('; '.join(read.errors))
    return read.apps


def save_state(path: str | os.PathLike, apps: Iterable[AppConfig]) -> pathlib.Path:
    """Write ``apps`` to ``path`` atomically: a temp file in the same folder, fsync, rename, fsync of
    the folder (the folder is created if needed). ``OSError`` leaves the previous file as it was."""
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
    with contextlib.suppress(OSError):   # the rename itself survives a power cut once the folder is synced
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path
