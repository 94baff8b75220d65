"""Per-exit profile of a multi-exit model on one device: latency, energy, accuracy, calibration.

A profile is data, kept apart from policy (as in Dělen's code): the profiler measures it once per
device (``delen_profile``), policies and feasibility checks only read it. Step ``k`` of a request is
stage ``k`` followed by head ``k``; cumulative figures to exit ``k`` assume every head on the way ran.
"""
from __future__ import annotations

import bisect
import dataclasses
import json
import math
import pathlib
import platform
import re
from typing import Mapping, Sequence

import numpy as np

__all__ = ['Cascade', 'ExitProfile', 'Profile', 'cpu_name', 'device_slug', 'exits_taken', 'find_profile',
           'profile_filename']

PROFILE_VERSION = 1


def _interp(table: Mapping[int, float], batch: int) -> float:
    """Linear interpolation of a per-batch-size table; linear extrapolation past its ends."""
    if batch in table:
        return table[batch]
    sizes = sorted(table)
    if len(sizes) == 1:
        return table[sizes[0]] * batch / sizes[0]
    i = bisect.bisect_left(sizes, batch)
    lo, hi = (sizes[0], sizes[1]) if i == 0 else (sizes[-2], sizes[-1]) if i == len(sizes) else (sizes[i - 1], sizes[i])
    slope = (table[hi] - table[lo]) / (hi - lo)
    return max(0.0, table[lo] + slope * (batch - lo))


@dataclasses.dataclass(frozen=True)
class ExitProfile:
    """What one exit costs and delivers on one device.

    Times are per batch (the whole batch), keyed by batch size; energy is per frame.
    ``calibration`` rows are ``(threshold, accuracy, fraction)``: of held-out inputs whose max-softmax
    confidence at this exit is >= threshold, ``accuracy`` were right and they are ``fraction`` of all.
    """

    name: str
    accuracy: float
    stage_ms: Mapping[int, float]
    stage_p99_ms: Mapping[int, float]
    head_ms: Mapping[int, float]
    head_p99_ms: Mapping[int, float]
    stage_energy_mj: Mapping[int, float]
    calibration: Sequence[tuple[float, float, float]] = ()

    def __post_init__(self):
        if not 0.0 <= self.accuracy <= 1.0:
            raise ValueError(f'exit {self.name!r}: accuracy must be in [0, 1], got {self.accuracy!r}')
        for field in ('stage_ms', 'stage_p99_ms', 'head_ms', 'head_p99_ms', 'stage_energy_mj'):
            table = getattr(self, field)
            if not table:
                raise ValueError(f'exit {self.name!r}: {field} is empty')
            if any(int(b) < 1 or v < 0 for b, v in table.items()):
                raise ValueError(f'exit {self.name!r}: {field} needs batch >= 1 and values >= 0, got {dict(table)}')


#: How many standard errors of the held-out accuracy a cascade keeps above its bound (one-sided 95 %).
CASCADE_Z = 1.645


@dataclasses.dataclass(frozen=True)
class Cascade:
    """Per-input early exit calibrated for one accuracy bound, conditional on reaching each exit.

    An input stops at the first exit ``k`` whose confidence is ``>= thresholds[k]`` (``None``: never
    stops there on confidence; the final exit always stops). Calibrating each exit on *all*
    held-out inputs would be optimistic: the inputs that reach exit k are those that were not
    confident earlier, the hard ones. So thresholds are chosen in order on the inputs still left,
    and made stricter until the whole stream's accuracy (final-exit leftovers included) meets the
    bound on the held-out set with a margin for its size (:data:`CASCADE_Z` standard errors):
    thresholds fitted to meet a bound exactly on n held-out inputs miss it on new inputs about
    half the time (cifar10_lite0 at 0.787: 0.776-0.784 on 3 000 test photos).

    ``exit_accuracy[k]``: accuracy of the inputs that stop confidently at k (the final exit: of all
    that reach it); ``rest_accuracy[k]``: of those that reach k and are not confident (what a stop
    forced by a latency or energy bound delivers); ``fractions[k]``: share of inputs stopping at k.
    """

    min_accuracy: float
    thresholds: tuple[float | None, ...]
    exit_accuracy: tuple[float, ...]
    rest_accuracy: tuple[float, ...]
    fractions: tuple[float, ...]
    accuracy: float

    @property
    def typical_exit(self) -> int:
        """The exit by which half of the inputs have stopped."""
        return int(np.searchsorted(np.cumsum(self.fractions), 0.5 - 1e-9))


@dataclasses.dataclass(frozen=True)
class Profile:
    """The per-exit profile of ``model`` on ``device``."""

    model: str
    device: str
    exits: tuple[ExitProfile, ...]
    energy_source: str = 'estimate'
    energy_includes_idle: bool = False
    accuracy_note: str = 'top-1 accuracy on the held-out test set'
    dtype: str = 'float32'
    meta: Mapping[str, object] = dataclasses.field(default_factory=dict)
    #: held-out inputs, the same ones at every exit: ``{'confidence': [[...] per exit],
    #: 'correct': [[0/1 ...] per exit]}``; empty when the profile has no per-input data
    samples: Mapping[str, Sequence[Sequence[float]]] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not self.exits:
            raise ValueError('a profile needs at least one exit')
        if self.samples:
            conf, correct = self.samples.get('confidence', ()), self.samples.get('correct', ())
            if len(conf) != len(self.exits) or len(correct) != len(self.exits) or \
                    len({len(c) for c in (*conf, *correct)}) != 1:
                raise ValueError('samples need confidence and correct lists of equal length for every exit')

    # --- queries ---------------------------------------------------------------------------------
    @property
    def num_exits(self) -> int:
        return len(self.exits)

    @property
    def final_exit(self) -> int:
        return len(self.exits) - 1

    def stage_ms(self, k: int, batch: int = 1, *, p99: bool = False) -> float:
        """Predicted time of stage ``k`` for a whole batch of ``batch`` frames."""
        e = self.exits[k]
        return _interp(e.stage_p99_ms if p99 else e.stage_ms, batch)

    def head_ms(self, k: int, batch: int = 1, *, p99: bool = False) -> float:
        e = self.exits[k]
        return _interp(e.head_p99_ms if p99 else e.head_ms, batch)

    def step_ms(self, k: int, batch: int = 1, *, p99: bool = False) -> float:
        """Stage ``k`` plus head ``k``: the work between deciding at exit k-1 and at exit k."""
        return self.stage_ms(k, batch, p99=p99) + self.head_ms(k, batch, p99=p99)

    def exit_latency_ms(self, k: int, batch: int = 1, *, p99: bool = False) -> float:
        """Cumulative compute time to a result at exit ``k`` (every head on the way evaluated)."""
        return sum(self.step_ms(i, batch, p99=p99) for i in range(k + 1))

    def step_energy_mj(self, k: int, batch: int = 1) -> float:
        """Energy per frame of step ``k`` when it runs in a batch of ``batch`` frames."""
        return _interp(self.exits[k].stage_energy_mj, batch)

    def exit_energy_mj(self, k: int, batch: int = 1) -> float:
        return sum(self.step_energy_mj(i, batch) for i in range(k + 1))

    def accuracy(self, k: int) -> float:
        return self.exits[k].accuracy

    def confidence_threshold(self, k: int, min_accuracy: float) -> float | None:
        """Lowest confidence threshold at exit ``k`` whose exiting inputs reach ``min_accuracy``.

        ``None`` when no threshold in the calibration table does (or there is no table).
        """
        for threshold, acc, fraction in sorted(self.exits[k].calibration):
            if fraction > 0 and acc >= min_accuracy:
                return threshold
        return None

    def expected_accuracy(self, k: int, confidence: float | None = None) -> float:
        """Calibrated accuracy of a result at exit ``k`` with this confidence.

        The accuracy of held-out inputs at the highest calibration threshold not above
        ``confidence``; the exit's overall accuracy without a confidence or a table.
        """
        rows = sorted(self.exits[k].calibration)
        if confidence is None or not rows:
            return self.exits[k].accuracy
        best = self.exits[k].accuracy
        for threshold, acc, fraction in rows:
            if threshold > confidence:
                break
            if fraction > 0:
                best = acc
        return best

    @property
    def has_samples(self) -> bool:
        return bool(self.samples) and len(self.samples['confidence'][0]) > 0

    def cascade(self, min_accuracy: float, *, min_count: int = 20) -> Cascade | None:
        """The per-input early-exit cascade for ``min_accuracy`` (see :class:`Cascade`).

        ``None`` without per-input samples, or when even the final exit misses ``min_accuracy``.
        """
        if not self.has_samples:
            return None
        key = (round(float(min_accuracy), 4), min_count)
        cache = self.__dict__.setdefault('_cascades', {})  # frozen: a private memo, not a field
        if key not in cache:
            if len(cache) > 256:
                cache.clear()
            cache[key] = self._cascade(*key)
        return cache[key]

    def _cascade(self, min_accuracy: float, min_count: int) -> Cascade | None:
        # One accuracy target for every exit, the strictest that keeps the stream above the bound
        # (bisection); then the exits' thresholds priced against each other for the lowest expected
        # energy that keeps the bound (_cheapest).
        conf = np.asarray(self.samples['confidence'], dtype=np.float64)
        correct = np.asarray(self.samples['correct'], dtype=np.float64)
        if correct[-1].mean() < min_accuracy:
            return None
        # the held-out accuracy must clear the bound by its standard error's margin (Cascade)
        bound = min(1.0, min_accuracy + CASCADE_Z * math.sqrt(min_accuracy * (1 - min_accuracy) / correct.shape[1]))
        # Stricter per-exit targets until the stream meets it; target 1.0 = final exit only.
        lo, hi = min_accuracy, 1.0
        best = _run_cascade(conf, correct, 1.0, min_count)
        for _ in range(20):
            mid = (lo + hi) / 2
            c = _run_cascade(conf, correct, mid, min_count)
            if c[-1] >= bound:
                best, hi = c, mid
            else:
                lo = mid
        cost = np.array([self.exit_energy_mj(k) for k in range(conf.shape[0])])
        best = _stream(conf, correct, _cheapest(conf, correct, cost, best[0], bound, min_count))
        thresholds, exit_acc, rest_acc, fractions, accuracy = best
        return Cascade(min_accuracy=min_accuracy, thresholds=thresholds, exit_accuracy=exit_acc,
                       rest_accuracy=rest_acc, fractions=fractions, accuracy=accuracy)

    #: meta entries that describe accuracy and calibration, not timing (:meth:`with_accuracy_from`)
    ACCURACY_META = ('eval_images', 'samples', 'samples_from', 'calibration_note', 'calibration_images',
                     'calibration_accuracy', 'cascade_test', 'cascade_test_note')

    def with_accuracy_from(self, other: 'Profile', *, note: str) -> 'Profile':
        """This profile's times and energies with ``other``'s accuracy, calibration and samples: a
        re-timing (new kernels, a simplified network computing the same function) without the data set.
        ``meta['accuracy_from']`` says where they came from (``note``); ``cascade_test``'s latency and
        energy ratios stay ``other``'s.

        :raises ValueError: ``other`` profiles another model or other exits.
        """
        if (other.model, [e.name for e in other.exits]) != (self.model, [e.name for e in self.exits]):
            raise ValueError(f'accuracy from a profile of {other.model!r} {[e.name for e in other.exits]} cannot '
                             f'go into one of {self.model!r} {[e.name for e in self.exits]}')
        exits = tuple(dataclasses.replace(e, accuracy=o.accuracy, calibration=o.calibration)
                      for e, o in zip(self.exits, other.exits))
        meta = {k: v for k, v in self.meta.items() if k not in self.ACCURACY_META}
        meta.update({k: other.meta[k] for k in self.ACCURACY_META if k in other.meta})
        meta['accuracy_from'] = note
        return dataclasses.replace(self, exits=exits, samples=other.samples, accuracy_note=other.accuracy_note,
                                   meta=meta)

    # --- persistence -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d['version'] = PROFILE_VERSION
        for e in d['exits']:
            for field in ('stage_ms', 'stage_p99_ms', 'head_ms', 'head_p99_ms', 'stage_energy_mj'):
                e[field] = {str(b): float(v) for b, v in sorted(e[field].items())}
            e['calibration'] = [list(map(float, row)) for row in e['calibration']]
        d['meta'] = dict(self.meta)
        d['samples'] = {'confidence': [[round(float(v), 4) for v in row] for row in self.samples.get('confidence', ())],
                        'correct': [[int(v) for v in row] for row in self.samples.get('correct', ())]} \
            if self.samples else {}
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> 'Profile':
        if d.get('version', PROFILE_VERSION) != PROFILE_VERSION:
            raise ValueError(f'unsupported profile version {d.get("version")!r} (expected {PROFILE_VERSION})')
        exits = []
        for e in d['exits']:
            tables = {f: {int(b): float(v) for b, v in e[f].items()}
                      for f in ('stage_ms', 'stage_p99_ms', 'head_ms', 'head_p99_ms', 'stage_energy_mj')}
            exits.append(ExitProfile(name=e['name'], accuracy=float(e['accuracy']),
                                     calibration=tuple(tuple(map(float, r)) for r in e.get('calibration', ())),
                                     **tables))
        known = {f.name for f in dataclasses.fields(cls)} - {'exits'}
        return cls(exits=tuple(exits), **{k: v for k, v in d.items() if k in known})

    def save(self, path: str | pathlib.Path) -> pathlib.Path:
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # compact: the per-input samples are most of a profile, and indented they doubled its size
        # (a device call carries every committed profile); delen_profile's report is what people read
        path.write_text(json.dumps(self.to_dict(), separators=(',', ':')) + '\n')
        return path

    @classmethod
    def load(cls, path: str | pathlib.Path) -> 'Profile':
        return cls.from_dict(json.loads(pathlib.Path(path).read_text()))


def _run_cascade(conf: np.ndarray, correct: np.ndarray, target: float, min_count: int):
    """Thresholds exit by exit on the inputs still left: the largest most-confident group whose
    accuracy reaches ``target``. Returns what they give (:func:`_stream`)."""
    n_exits, n = conf.shape
    left = np.ones(n, dtype=bool)
    thresholds: list[float | None] = []
    for k in range(n_exits - 1):
        idx = np.flatnonzero(left)
        order = idx[np.argsort(-conf[k, idx], kind='stable')]
        cum_acc = np.cumsum(correct[k, order]) / np.arange(1, order.size + 1)
        ok = np.flatnonzero((cum_acc >= target) & (np.arange(1, order.size + 1) >= min_count))
        if ok.size == 0 or target >= 1.0:
            thresholds.append(None)
            continue
        threshold = float(conf[k, order[ok[-1]]])
        thresholds.append(threshold)
        left &= conf[k] < threshold
    return _stream(conf, correct, (*thresholds, None))


def device_slug(device: str = 'cpu') -> str:
    """A file-name-safe name of the device a profile was measured on, e.g. ``cuda-nvidia-h200``."""
    if device.startswith('cuda'):
        import torch
        name = torch.cuda.get_device_name(torch.device(device))
        kind = 'cuda'
    else:
        name, kind = cpu_name(), 'cpu'
    return kind + '-' + re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what Python knows of it."""
    try:
        for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def profile_filename(model: str, device_slug_: str, kernels: str = '', dtype: str = '') -> str:
    """``<model>__<device>.json``; ``__<kernels>`` before ``.json`` for a profile measured with other
    kernels than the default (``'matmul'``: the node's ``conv_kernels:=matmul``), and ``__bfloat16``
    for one measured in bfloat16 (``dtype``; float32 on a CPU and float16 on CUDA keep the plain name)."""
    parts = [model, device_slug_] + [x for x in (kernels, 'bfloat16' if dtype == 'bfloat16' else '') if x]
    return '__'.join(parts) + '.json'


def find_profile(folder: pathlib.Path, model: str, device_slug_: str, kernels: str = '',
                 dtype: str = '') -> pathlib.Path | None:
    """The profile in ``folder`` measured with these kernels and this precision, else with these
    kernels in the plain precision (:func:`profile_filename`), else ``None``."""
    for name in dict.fromkeys((profile_filename(model, device_slug_, kernels, dtype),
                               profile_filename(model, device_slug_, kernels))):
        if (folder / name).is_file():
            return folder / name
    return None


def exits_taken(confidence: np.ndarray, thresholds: Sequence[float | None]) -> np.ndarray:
    """Per input (a column of ``confidence``, exits x inputs), the exit it stops at: the first whose
    threshold its confidence meets (``None``: never stops there), else the final exit."""
    n_exits, n = confidence.shape
    out = np.full(n, n_exits - 1)
    for k in range(n_exits - 2, -1, -1):      # the earliest confident exit wins
        if thresholds[k] is not None:
            out = np.where(confidence[k] >= thresholds[k], k, out)
    return out


def _stream(conf: np.ndarray, correct: np.ndarray, thresholds: Sequence[float | None]):
    """What ``thresholds`` give on these inputs: (thresholds, exit_acc, rest_acc, fractions, stream_acc)
    as :class:`Cascade` holds them (an exit no input stops at: accuracy 0, the final exit's: 1)."""
    n_exits, n = conf.shape
    taken = exits_taken(conf, thresholds)
    exit_acc, rest_acc, fractions = [], [], []
    for k in range(n_exits):
        stop, rest = taken == k, taken > k     # of the inputs reaching k: stopping there, going on
        exit_acc.append(float(correct[k, stop].mean()) if stop.any() else (1.0 if k == n_exits - 1 else 0.0))
        rest_acc.append(float(correct[k, rest].mean()) if rest.any() else exit_acc[-1])
        fractions.append(float(np.count_nonzero(stop)) / n)
    return tuple(thresholds), tuple(exit_acc), tuple(rest_acc), tuple(fractions), \
        float(correct[taken, np.arange(n)].mean())


def _cheapest(conf: np.ndarray, correct: np.ndarray, cost: np.ndarray, start: Sequence[float | None],
              bound: float, min_count: int, *, steps: int = 10, sweeps: int = 2) -> tuple[float | None, ...]:
    """Per-exit thresholds that lower the inputs' expected ``cost`` (cumulative, per exit) below
    ``start``'s while the stream's accuracy on them stays ``>= bound``; ``start`` where none does.

    One accuracy target for every exit (the bisection) is not the cheapest: where an exit's confident
    inputs are more often right than the target asks, it can stop more of them, and a later, dearer
    exit fewer. A point on the bound cannot be left one threshold at a time (each move that saves
    costs accuracy), so the trade is priced: for a price ``lam`` of a right answer, each exit in turn
    takes the threshold (or none) that maximises ``lam x right - cost`` over the inputs, the others
    held; ``lam`` is bisected (log scale) for the cheapest thresholds that keep the bound.
    ResNet-9 on CIFAR-10 (H200 energies, its 10 000 test photos; bound met there each time): 0.493 ->
    0.445x the final exit's energy a point under its accuracy, 0.420 -> 0.389x two points under.

    A threshold leaving fewer than ``min_count`` inputs at its exit is not taken (one lucky input
    says nothing). About 40 ms for 5 000 held-out inputs and 4 exits, once per bound
    (:meth:`Profile.cascade` keeps it).
    """
    n_exits, n = conf.shape
    rows = np.arange(n)

    def best_at(k: int, th: Sequence[float | None], value: np.ndarray) -> float | None:
        """Exit k's threshold (None: no stop there) worth most, the others held: every cut of the
        inputs reaching k, most confident first, from one cumulative sum."""
        reach = exits_taken(conf, [*th[:k], *[None] * (n_exits - k)]) >= k   # not stopped before k
        later = exits_taken(conf, [None] * (k + 1) + list(th[k + 1:]))   # where an input not stopping at k ends
        idx = np.flatnonzero(reach)
        order = idx[np.argsort(-conf[k, idx], kind='stable')]
        gain = np.cumsum(value[k, order] - value[later[order], order])
        c = conf[k, order]
        # a threshold stops every input as confident as it: cut only where the confidence drops
        cut = np.flatnonzero(np.append(c[1:] < c[:-1], True))
        cut = cut[cut + 1 >= min_count]
        if cut.size == 0 or gain[cut].max() <= 0:
            return None
        return float(c[cut[np.argmax(gain[cut])]])

    def priced(lam: float) -> list[float | None]:
        th = list(start)
        value = correct * lam - cost[:, None]     # per exit and input: what stopping there is worth
        for _ in range(sweeps):
            for k in range(n_exits - 1):
                th[k] = best_at(k, th, value)
        return th

    def accuracy_and_cost(th: Sequence[float | None]) -> tuple[float, float]:
        exits = exits_taken(conf, th)
        return float(correct[exits, rows].mean()), float(cost[exits].mean())

    best = tuple(start)
    accuracy, best_cost = accuracy_and_cost(best)
    if accuracy < bound or cost[-1] <= 0:   # nothing to keep, or nothing to save
        return best
    lo, hi = math.log(1e-3 * cost[-1]), math.log(1e4 * cost[-1])   # cheap-first .. accuracy-first
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        th = priced(math.exp(mid))
        accuracy, trial_cost = accuracy_and_cost(th)
        if accuracy >= bound:
            hi = mid
            if trial_cost < best_cost - 1e-12:
                best, best_cost = tuple(th), trial_cost
        else:
            lo = mid
    return best
