"""The registered applications: validation before any side effect, ownership, persistence (ROS-free).

The node asks :meth:`Registry.check` whether a ``SetBounds`` request may change the registry; the
answer is a :class:`Change` (what to create and drop) or a :class:`Rejected` error with a reason and
a ``kind`` (for aggregated logging). Nothing is changed until the node has created what the change
needs and calls :meth:`Registry.commit`; if anything fails in between, the node undoes what it
created and the registry is as it was. Checks, in order:

* the app id and the bounds (:class:`~delen_ros.ros.apps.AppConfig`), topic names (the node's
  ``resolve`` raises ``ValueError``);
* ownership: updating an app needs the token returned at its registration (``allow_takeover``
  lifts this); apps configured by the operator (``apps`` parameter) have no token;
* topics: the image topic must not carry another type than ``sensor_msgs/msg/Image`` on the graph,
  nor be one of the node's own outputs or any app's result topic; the result topic must not carry
  another type than ``delen_ros/msg/InferenceResult``, nor belong to another app, nor have a
  publisher outside this node (someone else's results would mix into the stream), nor be a reserved
  topic (``/rosout``, ``/parameter_events``, ``/diagnostics``, the node's own topics).
* capacity (``max_apps``).

The state file (:class:`StateStore`) is written after each change; a failed write is reported
(``persisted=False`` in the answer, ``state_error`` in ``~/status``), never hidden.
"""
from __future__ import annotations

import dataclasses
import hmac
import os
import pathlib
import threading
from typing import Callable, Iterable, Mapping, Sequence

from .apps import AppConfig, StateRead, new_token, read_state, save_state, token_hash

__all__ = ['IMAGE_TYPE', 'RESULT_TYPE', 'RESERVED_TOPICS', 'Rejected', 'Change', 'Registry', 'StateStore']

IMAGE_TYPE = 'sensor_msgs/msg/Image'
RESULT_TYPE = 'delen_ros/msg/InferenceResult'
#: topics no app may publish on or read from, whatever their type on the graph now
RESERVED_TOPICS = frozenset({'/rosout', '/parameter_events', '/diagnostics', '/tf', '/tf_static', '/clock'})


class Rejected(ValueError):
    """A request the registry refuses; ``kind`` names the check (for aggregated logging)."""

    def __init__(self, message: str, *, kind: str):
        super().__init__(message)
        self.kind = kind


@dataclasses.dataclass(frozen=True)
class Change:
    """What registering ``config`` means: ``old`` (``None``: a new app), ``token`` to hand back
    (``''``: the caller's own, unchanged), the camera / result topics it adds and the ones no app
    will use afterwards."""

    config: AppConfig
    old: AppConfig | None
    token: str
    new_image_topic: str | None
    new_result_topic: str | None
    unused_image_topic: str | None
    unused_result_topic: str | None


class Registry:
    """Apps by id (thread-safe reads; the node serialises changes).

    :param max_apps: most registered apps.
    :param allow_takeover: any caller may update or remove any app (no token needed).
    :param reserved_topics: topics of the node itself (status, its services' topics) plus
        :data:`RESERVED_TOPICS`.
    """

    def __init__(self, *, max_apps: int, allow_takeover: bool = False, reserved_topics: Iterable[str] = ()):
        self.max_apps = max_apps
        self.allow_takeover = allow_takeover
        self.reserved = frozenset(RESERVED_TOPICS | set(reserved_topics))
        self._lock = threading.Lock()
        self._apps: dict[str, AppConfig] = {}

    # --- reads ---------------------------------------------------------------------------------------
    def apps(self) -> dict[str, AppConfig]:
        with self._lock:
            return dict(self._apps)

    def get(self, app_id: str) -> AppConfig | None:
        with self._lock:
            return self._apps.get(app_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._apps)

    def cameras(self) -> dict[str, tuple[str, ...]]:
        """Image topic -> the ids of the apps it feeds (sorted)."""
        out: dict[str, list[str]] = {}
        for app in self.apps().values():
            out.setdefault(app.image_topic, []).append(app.app_id)
        return {t: tuple(sorted(ids)) for t, ids in out.items()}

    def result_topics(self) -> set[str]:
        return {a.result_topic for a in self.apps().values()}

    # --- ownership -----------------------------------------------------------------------------------
    def _authorise(self, old: AppConfig, token: str, action: str) -> None:
        if self.allow_takeover:
            return
        if not old.owner:
            raise Rejected(f'app {old.app_id!r} is configured by the node\'s operator (apps parameter): it cannot be '
                           f'{action} over a service (allow_takeover is false)', kind='not owner')
        if not token or not hmac.compare_digest(token_hash(token), old.owner):
            raise Rejected(f'app {old.app_id!r} belongs to another client: {action} it needs the token returned at '
                           'its registration (allow_takeover is false)', kind='not owner')

    # --- changes -------------------------------------------------------------------------------------
    def check(self, config: AppConfig, *, token: str = '',
              topic_types: Mapping[str, Sequence[str]] | None = None,
              foreign_publishers: Callable[[str], int] | None = None, restore: bool = False) -> Change:
        """Whether ``config`` (topics resolved) may be registered; changes nothing.

        :param token: the caller's token (``''``: none).
        :param restore: an app from the state file or the ``apps`` parameter: its ``owner`` is kept
            and no token is asked for.
        :param topic_types: the graph's topic -> type names (``get_topic_names_and_types``).
        :param foreign_publishers: topic -> publishers on it that are not this node's.
        :raises Rejected: with the reason.
        """
        topic_types = topic_types or {}
        with self._lock:
            apps = dict(self._apps)
        old = apps.get(config.app_id)
        if old is None and len(apps) >= self.max_apps:
            raise Rejected(f'{len(apps)} apps are registered, the most this node serves (max_apps); remove one '
                           'first', kind='max_apps')
        if restore:
            handed = ''
        elif old is None:
            handed = token or new_token()
        else:
            self._authorise(old, token, 'updating')
            handed = token if token and (not old.owner or hmac.compare_digest(token_hash(token), old.owner)) \
                else new_token()   # a takeover (or an operator app claimed) gets a token of its own
        if not restore:
            config = dataclasses.replace(config, owner=token_hash(handed))
        others = {a: c for a, c in apps.items() if a != config.app_id}
        image, result = config.image_topic, config.result_topic
        if image == result:
            raise Rejected(f'image_topic and result_topic are the same topic {image!r}', kind='topic clash')
        for topic, what in ((image, 'image_topic'), (result, 'result_topic')):
            if topic in self.reserved:
                raise Rejected(f'{what} {topic!r} is reserved (a topic of the node or of ROS itself)', kind='reserved')
        image_types = [t for t in topic_types.get(image, ()) if t != IMAGE_TYPE]
        if image_types:
            raise Rejected(f'image_topic {image!r} carries {", ".join(sorted(image_types))}, not {IMAGE_TYPE}',
                           kind='topic type')
        result_types = [t for t in topic_types.get(result, ()) if t != RESULT_TYPE]
        if result_types:
            raise Rejected(f'result_topic {result!r} carries {", ".join(sorted(result_types))}, not {RESULT_TYPE}',
                           kind='topic type')
        for other in others.values():
            if other.result_topic == result:
                raise Rejected(f'result_topic {result!r} belongs to app {other.app_id!r}', kind='topic taken')
            if other.result_topic == image:
                raise Rejected(f'image_topic {image!r} is the result topic of app {other.app_id!r}', kind='topic clash')
            if other.image_topic == result:
                raise Rejected(f'result_topic {result!r} is the camera topic of app {other.app_id!r}',
                               kind='topic clash')
        ours = old is not None and old.result_topic == result
        if not ours and foreign_publishers is not None and foreign_publishers(result) > 0:
            raise Rejected(f'result_topic {result!r} already has a publisher outside this node', kind='topic taken')
        cameras = {c.image_topic for c in others.values()}
        results = {c.result_topic for c in others.values()}
        return Change(
            config=config, old=old, token=handed,
            new_image_topic=image if image not in cameras and (old is None or old.image_topic != image) else None,
            new_result_topic=result if result not in results and (old is None or old.result_topic != result) else None,
            unused_image_topic=old.image_topic if old is not None and old.image_topic != image
            and old.image_topic not in cameras else None,
            unused_result_topic=old.result_topic if old is not None and old.result_topic != result else None)

    def commit(self, change: Change) -> None:
        with self._lock:
            self._apps[change.config.app_id] = change.config

    def check_remove(self, app_id: str, *, token: str = '') -> AppConfig:
        """The app to remove, if the caller may; ``Rejected`` otherwise (changes nothing)."""
        old = self.get(app_id)
        if old is None:
            raise Rejected(f'no app {app_id!r}', kind='unknown app')
        self._authorise(old, token, 'removing')
        return old

    def remove(self, app_id: str) -> AppConfig | None:
        with self._lock:
            return self._apps.pop(app_id, None)

    def clear(self) -> None:
        with self._lock:
            self._apps.clear()


class StateStore:
    """The state file: read at configure, written after each change; the last error is kept.

    :param path: ``None``: no persistence (every write "succeeds").
    :param save: the writer (tests inject failures).
    """

    def __init__(self, path: str | os.PathLike | None, *, save: Callable = save_state):
        self.path = pathlib.Path(path) if path else None
        self._save = save
        self.error = ''            # the last write's error ('' = the registry is on disk)
        self.restore_error = ''    # what was wrong with the file at configure (kept until cleanup)

    def read(self) -> StateRead:
        if self.path is None:
            return StateRead([], [])
        read = read_state(self.path)
        if read.errors:
            self.restore_error = '; '.join(read.errors) + (f' (the file was kept as {read.backup})'
                                                          if read.backup else '')
        return read

    @property
    def status(self) -> str:
        """For ``~/status``: the write error, else what was wrong at restore, else ``''``."""
        return self.error or self.restore_error

    def write(self, apps: Iterable[AppConfig]) -> bool:
        """Persist ``apps``; ``False`` (and :attr:`error` set) when the write failed."""
        if self.path is None:
            return True
        try:
            self._save(self.path, list(apps))
        except OSError as exc:
            self.error = f'could not write state file {self.path}: {exc.strerror or exc}'
            return False
        self.error = ''
        return True
