"""Triton's sequence batcher: stateful models, whose requests come in sequences named by a correlation id.

    SequenceFlags      a request's ``sequence_id`` (uint64 or string), ``sequence_start``, ``sequence_end``
    SequenceSettings   what ``sequence_batching`` in the config asks for: control inputs, implicit state,
                       the strategy and its knobs, the idle limit
    SequenceBatcher    the Runner of a sequence model (a Scheduler whose batches are formed per sequence)

Every request of a sequence runs after the one before it has finished, and a batch holds at most one
request per sequence. The batcher fills the model's control inputs (START, END, READY, CORRID, with
the values and type the config gives) and its implicit state: the state input of a sequence's first
request is the configured initial state (zeros when none), the state output of each request is the
state input of the next. Strategies:

With both, a sequence is bound to one instance for its life, in one of that instance's slots (a
python model may keep what it needs per sequence itself); a new sequence waits for a free slot.

- ``direct``: ``max(1, max_batch_size)`` slots per instance; a batch is formed when
  ``minimum_slot_utilization`` of the instance's slots have a request or ``max_queue_delay`` passed.
- ``oldest``: ``max_candidate_sequences`` slots per instance; the instance batches the oldest
  requests of its sequences dynamic-batcher style (``preferred_batch_size``,
  ``max_queue_delay_microseconds``).

A batch carries only requests (Triton pads a direct batch with not-READY slots so that a backend
keeping its own per-slot state sees each sequence at a fixed row; tuili's backends keep no state
of their own, so READY is 1 for every row). A sequence without a request for
``max_sequence_idle_microseconds`` (default 1 s, as Triton) is released with its state; its next
request is refused saying so. A sequence ends after its END request.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np

from tuili import dtypes
from tuili.errors import ConfigError, InvalidInputError, KernelError, ServerBusyError
from tuili.model_config.paths import resolve_inside
from tuili.model_config.protos import model_config_pb2 as mc
from tuili.serve.errors import clip
from tuili.serve.scheduler import DEFAULT_MAX_QUEUE_SIZE, Pending, Scheduler, _now, _set_results

log = logging.getLogger(__name__)

_KIND = mc.ModelSequenceBatching.Control
START, READY, END, CORRID = (_KIND.CONTROL_SEQUENCE_START, _KIND.CONTROL_SEQUENCE_READY,
                             _KIND.CONTROL_SEQUENCE_END, _KIND.CONTROL_SEQUENCE_CORRID)
_KIND_NAMES = {START: "START", READY: "READY", END: "END", CORRID: "CORRID"}
#: Triton's default of max_sequence_idle_microseconds.
DEFAULT_IDLE_US = 1_000_000
#: How many released sequence ids are remembered to tell their next request why it is refused.
REMEMBERED_RELEASES = 4096


@dataclass(frozen=True, slots=True)
class SequenceFlags:
    """The sequence parameters of one request."""

    corrid: int | str
    start: bool = False
    end: bool = False


def sequence_flags(params: dict) -> SequenceFlags | None:
    """The request's sequence parameters (checked by validation.check_request); None without a correlation id
    (``sequence_id`` absent, 0 or "", as tritonclient leaves it)."""
    corrid = params.get("sequence_id", 0) if params else 0
    if corrid == 0 or corrid == "":
        return None
    return SequenceFlags(corrid, bool(params.get("sequence_start", False)), bool(params.get("sequence_end", False)))


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True, slots=True)
class Control:
    """One control input: its tensor name, kind and the values it takes (false, true), or for CORRID the type."""

    name: str
    kind: int
    dtype: dtypes.DType
    false_true: tuple | None


@dataclass(frozen=True, slots=True)
class State:
    """One implicit state: input and output tensor names and the value a sequence starts from."""

    input_name: str
    output_name: str
    initial: np.ndarray


def _where(model: str) -> str:
    return f"model {model!r}: sequence_batching"


def _control(model: str, i: int, ci) -> Control:
    where = f"{_where(model)}.control_input[{i}] ({ci.name!r})"
    if not ci.name:
        raise ConfigError(f"{where}: give the model input's name")
    if len(ci.control) != 1:
        raise ConfigError(f"{where}: has {len(ci.control)} controls; give exactly one")
    c = ci.control[0]
    kind = int(c.kind)
    given = [f for f in ("int32_false_true", "fp32_false_true", "bool_false_true") if len(getattr(c, f))]
    if kind == CORRID:
        if given or not c.data_type:
            raise ConfigError(f"{where}: a CONTROL_SEQUENCE_CORRID control takes data_type (TYPE_UINT64, TYPE_INT64, "
                              f"TYPE_UINT32, TYPE_INT32 or TYPE_STRING) and no false/true values")
        dt = dtypes.from_config(c.data_type)
        if dt.v2 not in ("UINT64", "INT64", "UINT32", "INT32", "BYTES"):
            raise ConfigError(f"{where}: CORRID data_type {dt.config} is not an integer or string type")
        return Control(ci.name, kind, dt, None)
    if len(given) != 1 or len(getattr(c, given[0])) != 2 or c.data_type:
        raise ConfigError(f"{where}: a CONTROL_SEQUENCE_{_KIND_NAMES[kind]} control takes exactly one of "
                          f"int32_false_true, fp32_false_true, bool_false_true with two values [false, true]")
    field = given[0]
    dt = dtypes.from_v2({"int32_false_true": "INT32", "fp32_false_true": "FP32", "bool_false_true": "BOOL"}[field])
    return Control(ci.name, kind, dt, tuple(getattr(c, field)))


def _initial(model: str, i: int, st, model_dir: str | None, allow_outside: bool) -> np.ndarray:
    where = f"{_where(model)}.state[{i}] ({st.input_name!r})"
    dt = dtypes.from_config(st.data_type)
    if not len(st.initial_state):
        # zeros; a variable dimension starts empty (an accumulating state grows from nothing)
        return np.zeros([max(0, int(d)) for d in st.dims], dtype=dt.numpy)
    if len(st.initial_state) > 1:
        raise ConfigError(f"{where}: has {len(st.initial_state)} initial_state entries; give one")
    init = st.initial_state[0]
    shape = [int(d) for d in init.dims]
    if any(d < 0 for d in shape):
        raise ConfigError(f"{where}: initial_state dims {shape} must all be fixed sizes")
    if init.data_type and init.data_type != st.data_type:
        raise ConfigError(f"{where}: initial_state data_type differs from the state's")
    which = init.WhichOneof("state_data")
    if which == "data_file":
        if model_dir is None:
            raise ConfigError(f"{where}: initial_state.data_file needs the model directory")
        path = resolve_inside(model_dir, os.path.join("initial_state", init.data_file),
                              field=f"sequence_batching.state[{i}].initial_state[0].data_file", allow_outside=allow_outside)
        with open(path, "rb") as f:
            raw = f.read()
        want = int(np.prod(shape, dtype=np.int64)) * dt.numpy.itemsize
        if dt.v2 == "BYTES" or len(raw) != want:
            raise ConfigError(f"{where}: initial_state file {path} holds {len(raw)} bytes; dims {shape} of "
                              f"{dt.config} need {want}")
        return np.frombuffer(raw, dtype=dt.numpy).reshape(shape).copy()
    if which != "zero_data" or not init.zero_data:
        raise ConfigError(f"{where}: initial_state needs zero_data: true or a data_file")
    return np.zeros(shape, dtype=dt.numpy)


class SequenceSettings:
    """``sequence_batching`` of a model config, checked (ConfigError naming the field)."""

    def __init__(self, config, model_dir: str | None = None, allow_paths_outside: bool = False):
        sb = config.sequence_batching
        name = config.name
        self.batched = int(config.max_batch_size) > 0
        self.controls = [_control(name, i, ci) for i, ci in enumerate(sb.control_input)]
        self.states = [State(st.input_name, st.output_name, _initial(name, i, st, model_dir, allow_paths_outside))
                       for i, st in enumerate(sb.state)]
        kinds = [c.kind for c in self.controls]
        if len(set(kinds)) != len(kinds):
            raise ConfigError(f"{_where(name)}.control_input: a control kind is given twice")
        corrid = [c for c in self.controls if c.kind == CORRID]
        self.string_ids = bool(corrid) and corrid[0].dtype.v2 == "BYTES"
        self.int_ids = bool(corrid) and not self.string_ids
        self.strategy = sb.WhichOneof("strategy_choice") or "direct"
        if self.strategy == "direct":
            self.delay_ns = int(sb.direct.max_queue_delay_microseconds) * 1000
            self.min_slot_utilization = float(sb.direct.minimum_slot_utilization)
            self.max_candidates, self.preferred = 0, []
        else:
            self.delay_ns = int(sb.oldest.max_queue_delay_microseconds) * 1000
            self.min_slot_utilization = 0.0
            self.max_candidates = int(sb.oldest.max_candidate_sequences)
            if self.max_candidates <= 0:
                raise ConfigError(f"{_where(name)}.oldest.max_candidate_sequences must be at least 1")
            mb = max(1, int(config.max_batch_size))
            self.preferred = sorted({int(p) for p in sb.oldest.preferred_batch_size if 0 < int(p) <= mb})
        idle_us = int(sb.max_sequence_idle_microseconds) or DEFAULT_IDLE_US
        self.idle_ns = idle_us * 1000
        inputs = {c.name for c in self.controls} | {s.input_name for s in self.states}
        clash = sorted(inputs & {t.name for t in config.input})
        if clash:
            raise ConfigError(f"{_where(name)}: {', '.join(map(repr, clash))} are control or state inputs and must not "
                              f"be listed in input: the batcher fills them")
        self.hidden_inputs = frozenset(inputs)
        self.hidden_outputs = frozenset(s.output_name for s in self.states) - {t.name for t in config.output}

    def check_model(self, model: str, inputs, outputs) -> None:
        """The model file declares the control and state tensors the config names."""
        have_in, have_out = {s.name for s in inputs}, {s.name for s in outputs}
        missing = sorted(self.hidden_inputs - have_in) + sorted({s.output_name for s in self.states} - have_out)
        if missing:
            raise ConfigError(f"{_where(model)} names tensors the model does not have: {', '.join(map(repr, missing))}; "
                              f"its inputs are {sorted(have_in)}, its outputs {sorted(have_out)}")

    def check_id(self, model: str, corrid) -> None:
        if self.string_ids and not isinstance(corrid, str):
            raise InvalidInputError(f"inference request to model {model!r} has correlation ID {clip(repr(corrid))} but the "
                                    f"model's CORRID control is a string: send a string sequence_id")
        if self.int_ids and isinstance(corrid, str):
            raise InvalidInputError(f"inference request to model {model!r} has correlation ID {clip(repr(corrid))} but the "
                                    f"model's CORRID control is an integer: send an unsigned integer sequence_id")

    def control_feeds(self, flags: SequenceFlags, batch: int) -> dict[str, np.ndarray]:
        """The control tensors of one request: [batch, 1] for a batching model, [1] otherwise."""
        shape = (batch, 1) if self.batched else (1,)
        out = {}
        for c in self.controls:
            if c.kind == CORRID:
                value = flags.corrid.encode() if isinstance(flags.corrid, str) else flags.corrid
            else:
                on = {START: flags.start, END: flags.end, READY: True}[c.kind]
                value = c.false_true[int(on)]
            arr = np.empty(shape, dtype=c.dtype.numpy)
            arr.fill(value)
            out[c.name] = arr
        return out

    def initial_state(self, state: State, batch: int) -> np.ndarray:
        return np.repeat(state.initial[None], batch, axis=0) if self.batched else state.initial.copy()


# --------------------------------------------------------------------------- the batcher
class Sequence:
    __slots__ = ("corrid", "queue", "busy", "last", "active", "instance", "state")

    def __init__(self, corrid, now: int):
        self.corrid = corrid
        self.queue: deque[SeqPending] = deque()
        self.busy = False  # one of its requests is running
        self.last = now  # when it last received or finished a request
        self.active = False  # holds a slot (direct) or a candidate place (oldest)
        self.instance = -1  # direct: the instance it is bound to
        self.state: dict[str, np.ndarray] = {}


class SeqPending(Pending):
    __slots__ = ("seq", "flags")


class SequenceBatcher(Scheduler):
    """The Runner of a model with ``sequence_batching`` (see the module docstring)."""

    takes_sequences = True

    def __init__(self, model: str, version: str, config, instances: list, stats, loop,
                 default_max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE, settings: SequenceSettings | None = None):
        # set before the instance threads start (Scheduler.__init__ starts them)
        self.settings = settings or SequenceSettings(config)
        self.sequences: dict = {}
        self.backlog: deque[Sequence] = deque()  # started sequences waiting for a slot
        self.released: OrderedDict = OrderedDict()  # corrid -> why it was released (idle)
        direct = self.settings.strategy == "direct"
        self.slots = max(1, int(config.max_batch_size)) if direct else self.settings.max_candidates  # per instance
        self.bound = [0] * len(instances)  # sequences bound to each instance
        super().__init__(model, version, config, instances, stats, loop, default_max_queue_size)
        self.max_total_queued = self.max_queued[0]
        self._reaper = loop.call_later(self._reap_interval, self._reap)

    @property
    def _reap_interval(self) -> float:
        return min(1.0, max(0.001, self.settings.idle_ns / 4e9))

    # ------------------------------------------------------------------ event-loop side
    def enqueue(self, feeds, batch: int, priority: int = 0, timeout_us: int = 0, stream=None,
                sequence: SequenceFlags | None = None):
        m = clip(self.model)
        if sequence is None:
            raise InvalidInputError(f"inference request to model '{m}' must specify a non-zero or non-empty correlation ID: "
                                    f"it has sequence batching; send sequence_id (with sequence_start on the first request "
                                    f"of a sequence and sequence_end on the last)")
        self.settings.check_id(self.model, sequence.corrid)
        now = _now()
        timeout_ns = self._timeout_ns(0, timeout_us)
        item = SeqPending(feeds, batch, self.loop.create_future(), now, now + timeout_ns if timeout_ns else 0, 0)
        item.flags, item.stream = sequence, stream
        corrid = sequence.corrid
        with self._lock:
            if self._stopping:
                raise ServerBusyError(f"model {self.model!r} version {self.version} is unloading; retry the request")
            limit = self.max_total_queued
            if limit and self._queued >= limit:
                raise ServerBusyError(f"queue of model {self.model!r} is full: {self._queued} requests, max_queue_size "
                                      f"{limit}; retry later")
            seq = self.sequences.get(corrid)
            if seq is None:
                if not sequence.start:
                    why = self.released.get(corrid)
                    if why:
                        raise InvalidInputError(f"inference request for sequence {clip(repr(corrid))} to model '{m}': the "
                                                f"sequence was released {why}; start it again with sequence_start")
                    raise InvalidInputError(f"inference request for sequence {clip(repr(corrid))} to model '{m}' must specify "
                                            f"the START flag on the first request of the sequence")
                seq = self.sequences[corrid] = Sequence(corrid, now)
                self.released.pop(corrid, None)
                self._place(seq)
            item.seq = seq
            seq.queue.append(item)
            seq.last = now
            self._queued += 1
            self._work.notify_all()
        return self._track(item, timeout_ns)

    def _unqueue(self, item) -> bool:
        with self._lock:
            if not item.queued:
                return False
            item.queued = False
            item.seq.queue.remove(item)
            self._queued -= 1
            return True

    def _reap(self) -> None:
        """Release the sequences idle for longer than max_sequence_idle_microseconds (on the loop, periodically)."""
        now = _now()
        idle = self.settings.idle_ns
        with self._lock:
            if self._stopping:
                return
            gone = [s for s in self.sequences.values() if not s.busy and not s.queue and now - s.last > idle]
            for s in gone:
                self._release(s, f"after being idle for more than max_sequence_idle_microseconds ({idle // 1000} us)")
            if gone:
                self._work.notify_all()
        for s in gone:
            log.info("model %s: sequence %r released: idle for more than %d us", self.model, s.corrid, idle // 1000)
        self._reaper = self.loop.call_later(self._reap_interval, self._reap)

    async def stop(self) -> None:
        self._reaper.cancel()
        await super().stop()

    def _abandon(self) -> None:
        with self._lock:
            queued = [it for s in self.sequences.values() for it in s.queue]
            for s in self.sequences.values():
                s.queue.clear()
            self._queued = 0
            for it in queued:
                it.queued = False
        for it in queued:
            it.error = ServerBusyError(f"model {self.model!r} version {self.version} is unloading; retry the request")
        _set_results(queued)
        super()._abandon()  # stops the threads, kills the workers

    # ------------------------------------------------------------------ slots (lock held)
    def _place(self, seq: Sequence) -> None:
        """Bind a new sequence to the instance with the most free slots, or put it in the backlog."""
        i = min(range(len(self.bound)), key=self.bound.__getitem__)
        if self.bound[i] < self.slots:
            self.bound[i] += 1
            seq.instance, seq.active = i, True
        else:
            self.backlog.append(seq)

    def _release(self, seq: Sequence, why: str = "") -> None:
        if self.sequences.get(seq.corrid) is seq:
            del self.sequences[seq.corrid]
        if why:
            self.released[seq.corrid] = why
            while len(self.released) > REMEMBERED_RELEASES:
                self.released.popitem(last=False)
        if seq.active:
            seq.active = False
            self.bound[seq.instance] -= 1
        else:
            try:
                self.backlog.remove(seq)
            except ValueError:
                pass
        while self.backlog:
            waiting = self.backlog.popleft()
            self._place(waiting)
            if not waiting.active:  # still no room: it stays first in line
                self.backlog.remove(waiting)
                self.backlog.appendleft(waiting)
                break

    # ------------------------------------------------------------------ worker side
    def _worker(self, index: int, backend) -> None:
        wait_ready = getattr(backend, "wait_ready", None)
        while True:
            while wait_ready is not None and not backend.ready and not self._stopping:
                wait_ready(0.25)
            with self._lock:
                while True:
                    batch, wait_s = self._next_batch(index)
                    if batch:
                        break
                    if self._stopping and not self._queued:
                        return
                    self._work.wait(wait_s)
            self._execute(backend, batch)

    def _next_batch(self, index: int) -> tuple[list[SeqPending], float | None]:
        """(the batch instance ``index`` runs now, []) or ([], how long to wait before looking again; None: until woken)."""
        st = self.settings
        ready = [s for s in self.sequences.values() if s.instance == index and s.active and not s.busy and s.queue]
        if not ready:
            return [], None
        ready.sort(key=lambda s: s.queue[0].t_enqueue)
        limit = self.max_batch if self.max_batch > 0 else 1
        chosen, total = [], 0
        for s in ready:
            if chosen and total + s.queue[0].batch > limit:
                break
            chosen.append(s)
            total += s.queue[0].batch
        now = _now()
        if st.strategy == "direct":
            full = total >= limit or len(chosen) >= st.min_slot_utilization * self.slots
        else:
            full = total >= limit or bool(st.preferred and total >= st.preferred[-1])
        oldest = chosen[0].queue[0].t_enqueue
        if not full and st.delay_ns and now < oldest + st.delay_ns and not self._stopping:
            return [], (oldest + st.delay_ns - now) / 1e9
        if st.preferred and not full:
            sizes = np.cumsum([s.queue[0].batch for s in chosen])
            cut = max((k + 1 for k, n in enumerate(sizes) if n in st.preferred), default=len(chosen))
            chosen = chosen[:cut]
        batch = []
        for s in chosen:
            it = s.queue.popleft()
            it.queued = False
            s.busy = True
            it.feeds = self._model_feeds(it)
            batch.append(it)
        self._queued -= len(batch)
        return batch, None

    def _model_feeds(self, it: SeqPending) -> dict[str, np.ndarray]:
        """The request's tensors with its control inputs and the sequence's state added."""
        st = self.settings
        feeds = dict(it.feeds)
        feeds.update(st.control_feeds(it.flags, it.batch))
        seq = it.seq
        for s in st.states:
            value = None if it.flags.start else seq.state.get(s.input_name)
            feeds[s.input_name] = st.initial_state(s, it.batch) if value is None else value
        return feeds

    def _finish(self, batch: list[SeqPending]) -> None:
        """Keep each sequence's new state, free its turn, release it after its END request; then answer."""
        now = _now()
        with self._lock:
            for it in batch:
                seq = it.seq
                seq.busy = False
                seq.last = now
                if it.error is None:
                    for s in self.settings.states:
                        value = it.result.get(s.output_name)
                        if value is None:
                            it.error = KernelError(f"model {self.model!r} did not produce its state output "
                                                   f"{s.output_name!r} (sequence_batching.state)")
                            break
                        seq.state[s.input_name] = np.asarray(value)
                if it.flags.end and not seq.queue:
                    self._release(seq)
            self._work.notify_all()
        super()._finish(batch)
