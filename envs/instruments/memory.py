"""An instrument on the twin that remembers: every pixel keeps the polarisation its pulses left.

A replay (:class:`envs.instruments.instrument.ReplayInstrument`) returns, for any block
measured at a pixel, what the whole standard pulse sequence gave there. The twin's sample is a
ferroelectric, so a real measurement would not: the next pulse meets the state the previous
pulses left, and a block measured alone at a pristine pixel, or after other blocks, reads
something else.
:class:`TwinMemoryInstrument` simulates each measurement with the twin's own physics
(:func:`envs.data.twin.apply_pulses`) instead of replaying it:

- **State.** Every pixel starts in its as-grown state. A measurement applies its pulses, in the
  order of the standard sequence, from the state the pixel is in, reads each curve for its
  window (the first ``reads`` time points), and leaves the state at its last read.
- **Program order.** The voltage indices of one measurement must be strictly ascending (the
  order of the standard sequence; no index twice). Any other order is a ``ValueError``: the
  voltage axis of every tensor in the project is in sequence order, the blocks of
  :class:`reconstruct.base.BlockLayout` are ascending, and a program that went backwards would
  be a different experiment from the one the data describes.
- **Waiting between visits.** After its last pulse, the part of a pixel's switching that
  relaxes back keeps relaxing (``exp(-(t / tau) ** beta)``, the pixel's own kernel) until the
  next pulse at that pixel. Within a measurement the next pulse follows the last read at once,
  as in the standard sequence; between two visits the wait is the instrument time that passed:
  the clock counts every second the instrument charged (travel, settling, pulses, reads), and
  :meth:`TwinMemoryInstrument.wait` adds time it cannot see (e.g. the algorithm's). The wait is
  not negligible: the stretched exponential is slow (``beta`` down to 0.3, ``tau`` up to 0.3 s),
  and ``docs/memory.md`` measures what modelling it changes.
- **Instrument effects.** Gain, offset (with the line offsets and the drift), white noise,
  spikes and lost pixels are those of the twin (:func:`envs.data.twin.instrument_effects`). The
  first reading of a (pixel, voltage, read) gets the twin's own noise and spike draw for that
  entry, so a first visit that applies the whole sequence in order returns the replay's values
  bit for bit, and any difference from the replay is the sample's memory, not a new noise draw.
  A read of an entry that was read before (a voltage applied again at a pixel) gets fresh noise
  from a generator seeded by ``(noise seed, pixel, visit number)``, never from a shared stream,
  so a history measured again (or resumed from :meth:`TwinMemoryInstrument.state_dict`) gives
  bit-identical values.
- **Cost.** Every measurement and tip move is charged by the
:class:`envs.instruments.cost.CostModel`
  exactly as the replay charges it.

:func:`first_visit_pairs` measures every pixel of a twin with a program from its as-grown state
beside the standard sequence's values there: what a twin alone can give, and what
:class:`reconstruct.program_map.ProgramMap` learns a first visit's reading from.

With ``memory=False`` the instrument is a replay (of the measured tensor, or of the truth with
``effects=False``) and works for any dataset; with memory on, a recorded file is refused: it has
no physics to simulate.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from envs.command_line import option
from envs.data.dataset import Axis, Dataset
from envs.data.twin import (
    PULSE_PARAMETERS,
    TWIN_GENERATORS,
    TwinConfig,
    TwinSample,
    apply_pulses,
    instrument_effects,
    make_twin,
    relaxation_kernel,
    twin_streams,
)
from envs.instruments.cost import CostModel
from envs.instruments.instrument import (
    ReplayInstrument,
    check_pixel,
    check_reads,
    check_voltages,
)
from reconstruct.program_map import Program

#: Format version of :meth:`TwinMemoryInstrument.state_dict`.
STATE_FORMAT = 1
#: Mixed into the seed of the fresh noise of repeated readings, so that it is a stream of its
#: own and never one of the twin's (``twin_streams``).
_REPEAT_NOISE_TAG = 0x6D656D


def twin_of(dataset: Dataset) -> tuple[int, TwinConfig] | None:
    """The twin seed and settings a dataset was generated with, or None for recorded data.

    A dataset counts as a twin when its ``attrs`` name the generator ``envs.data.twin`` with a seed
    and the settings (what :func:`envs.data.twin.make_twin` writes, and what a saved twin keeps).
    """
    attrs = dataset.attrs
    if attrs.get("generator") not in TWIN_GENERATORS or not {"seed", "config"} <= set(attrs):
        return None
    return int(attrs["seed"]), TwinConfig(**attrs["config"])


class TwinMemoryInstrument:
    """The twin measured with the sample's memory: each pixel's pulses are simulated from its
    state (see the module docstring).

    Parameters
    ----------
    data
        A twin: a :class:`envs.data.twin.TwinSample`, or its :class:`envs.data.dataset.Dataset` (the
        sample is then generated again from the seed and settings the dataset records). With
        ``memory=False`` any dataset.
    cost_model
        Prices every measurement and tip move, as for the replay; its seconds are also the
        clock the relaxation between visits follows (``CostModel().for_axes(dataset.axes)``
        reads at the twin's own interval).
    memory
        True (default): simulate. False: return exactly what
        :class:`envs.instruments.instrument.ReplayInstrument` returns on the same data.
    effects
        True (default): the twin's instrument effects (noise, gain and offset jitter, line
        offsets, drift, spikes, lost pixels). False: the noise-free response (the dataset's
        ``truth`` when replaying).
    relax_between_visits
        True (default): the state keeps relaxing while a pixel waits for its next visit (by
        the instrument clock). False: the next visit meets the state of the last read, as if it
        came at once.
    noise_seed
        Seed of the fresh noise of repeated readings; default the twin's seed.
    start_pixel
        Where the tip starts (default 0).

    Raises
    ------
    ValueError
        With memory on, for data that is not a twin ("a recorded file has no memory to
        simulate"), or a dataset whose values are not those of the twin it names.
    """

    def __init__(
        self,
        data: Dataset | TwinSample,
        cost_model: CostModel,
        *,
        memory: bool = True,
        effects: bool = True,
        relax_between_visits: bool = True,
        noise_seed: int | None = None,
        start_pixel: int = 0,
    ) -> None:
        dataset = data.dataset if isinstance(data, TwinSample) else data
        if not isinstance(dataset, Dataset):
            raise TypeError(
                f"data must be a TwinSample or an envs.Dataset, got {type(data).__name__}"
            )
        self.cost_model = cost_model
        self.memory = bool(memory)
        self.effects = bool(effects)
        self.relax_between_visits = bool(relax_between_visits)
        self.grid_shape: tuple[int, int] = dataset.spatial_shape
        self.spectral_shape: tuple[int, ...] = dataset.spectral_shape
        self.axes: list[Axis] = dataset.axes
        self.n_pixels = dataset.n_pixels
        self.clock_s = 0.0
        if not self.memory:
            self._replay = ReplayInstrument(
                dataset if effects else _truth_dataset(dataset), cost_model, start_pixel
            )
            self.dataset = dataset
            return
        self._replay = None
        twin = twin_of(dataset)
        if twin is None:
            raise ValueError(
                f"a recorded file has no memory to simulate ({dataset.source or 'a dataset'} "
                "is not a twin): measure it with memory=False, a replay"
            )
        seed, config = twin
        sample = data if isinstance(data, TwinSample) else make_twin(seed, config)
        if sample.dataset is not dataset and not np.array_equal(
            sample.dataset.data, dataset.data, equal_nan=True
        ):
            raise ValueError(
                f"the dataset's values are not those of twin seed {seed} with its recorded "
                "settings (changed after generation?): there is no memory to simulate for them"
            )
        self.dataset = sample.dataset
        self.twin_seed = seed
        self.config = config
        self.noise_seed = seed if noise_seed is None else int(noise_seed)
        self._setup_physics(sample, config)
        if self.effects:
            self._setup_effects(sample, dataset, seed, config)
        self.tip_pixel = check_pixel(start_pixel, self.n_pixels)
        self.reset_state()

    # ----------------------------------------------------------------- construction
    def _setup_physics(self, sample: TwinSample, config: TwinConfig) -> None:
        params, n = sample.params, self.n_pixels
        self.volts = config.pulse_voltages()
        self.times = config.read_times()
        # Exactly as relaxation_response computes them, so a pixel's first full sequence is the
        # twin's truth bit for bit.
        self._max_volts = float(np.abs(self.volts).max()) or 1.0
        self._fast = np.exp(-self.times / config.fast_decay_s)
        self._kernel = relaxation_kernel(params, self.times).reshape(n, -1)
        self._params = {
            k: np.ascontiguousarray(params[k], np.float64).reshape(n) for k in PULSE_PARAMETERS
        }
        self._tau = params["tau"].reshape(n).astype(np.float64)
        self._beta = params["beta"].reshape(n).astype(np.float64)

    def _setup_effects(
        self, sample: TwinSample, dataset: Dataset, seed: int, config: TwinConfig
    ) -> None:
        truth = sample.dataset.truth
        assert truth is not None
        draws = instrument_effects(twin_streams(seed)[2], truth, config)
        if not np.array_equal(draws.apply(truth), dataset.data, equal_nan=True):
            raise ValueError(
                f"the sample's values are not those of twin seed {seed} with its recorded "
                "settings (changed after generation?): there is no memory to simulate for them"
            )
        n = self.n_pixels
        self._gain = draws.gain.reshape(n).astype(np.float32)
        self._offset = draws.offset.reshape(n).astype(np.float32)
        self._noise = draws.noise.reshape(n, *self.spectral_shape)
        self._span = draws.span
        self._lost = np.zeros(n, dtype=bool)
        self._lost[draws.lost] = True
        # The spike each entry got: a flat index drawn twice keeps its last value, as the
        # twin's in-place add does.
        per_pixel = int(np.prod(self.spectral_shape))
        self._spikes: dict[int, list[tuple[int, int, np.float32]]] = {}
        last: dict[int, np.float32] = {}
        for index, value in zip(draws.spike_index.tolist(), draws.spike_value, strict=True):
            last[index] = value
        for index, value in last.items():
            pixel, rest = divmod(index, per_pixel)
            v, t = divmod(rest, self.spectral_shape[1])
            self._spikes.setdefault(pixel, []).append((v, t, value))

    # ----------------------------------------------------------------- state
    def reset_state(self) -> None:
        """Every pixel back to its as-grown state, the clock to 0 (the tip stays)."""
        n, n_v = self.n_pixels, self.spectral_shape[0]
        self.clock_s = 0.0
        if self._replay is not None:
            return
        self.polarisation = self._params["initial_polarisation"].copy()
        self.pending = np.zeros(n)
        self.read_age_s = np.zeros(n)
        self.last_read_clock_s = np.zeros(n)
        self.visits = np.zeros(n, dtype=np.int64)
        self.applied = np.zeros((n, n_v), dtype=np.int64)
        self.reads_seen = np.zeros((n, n_v), dtype=np.int64)

    def measure_first_visit(
        self, pixel: int, voltages: np.ndarray, reads: int | None = None
    ) -> np.ndarray:
        """The values of :meth:`measure` at ``pixel`` as if it had never been pulsed: the pixel
        goes back to its as-grown state first (the other pixels and the clock stay), so a first
        reading gets the twin's own noise. What a design that runs one program per pixel reads,
        and one side of what :func:`first_visit_pairs` pairs."""
        if self._replay is None:
            pixel = check_pixel(pixel, self.n_pixels)
            self.polarisation[pixel] = self._params["initial_polarisation"][pixel]
            for per_pixel in (self.pending, self.read_age_s, self.last_read_clock_s,
                              self.visits, self.applied, self.reads_seen):
                per_pixel[pixel] = 0
        return self.measure(pixel, voltages, reads)[0]

    def state_dict(self) -> dict[str, Any]:
        """Everything the next measurements depend on, as NumPy arrays and plain numbers
        (``numpy.savez(path, **state)`` stores it): the clock, the tip, and per pixel the
        polarisation at its last read, the part still relaxing back, the age of that read since
        its pulse, the clock at that read, the visit count, how often each voltage was applied
        and how many of its reads were ever taken. :meth:`load_state_dict` restores it
        exactly."""
        state: dict[str, Any] = {
            "format": STATE_FORMAT,
            "memory": self.memory,
            "clock_s": self.clock_s,
            "tip_pixel": self.tip_pixel,
        }
        if self._replay is None:
            state.update(
                twin_seed=self.twin_seed,
                noise_seed=self.noise_seed,
                polarisation=self.polarisation.copy(),
                pending=self.pending.copy(),
                read_age_s=self.read_age_s.copy(),
                last_read_clock_s=self.last_read_clock_s.copy(),
                visits=self.visits.copy(),
                applied=self.applied.copy(),
                reads_seen=self.reads_seen.copy(),
            )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (from this twin, seeds and grid included)."""
        if int(state.get("format", -1)) != STATE_FORMAT:
            raise ValueError(
                f"instrument state format {state.get('format')!r}, expected {STATE_FORMAT}"
            )
        if bool(state["memory"]) != self.memory:
            raise ValueError(
                f"the state is of an instrument with memory={bool(state['memory'])}, this one "
                f"has memory={self.memory}"
            )
        if self._replay is None:
            for key, mine in (("twin_seed", self.twin_seed), ("noise_seed", self.noise_seed)):
                if int(state[key]) != mine:
                    raise ValueError(f"the state is of {key} {int(state[key])}, this is {mine}")
            arrays = {}
            for key in ("polarisation", "pending", "read_age_s", "last_read_clock_s", "visits"):
                arrays[key] = np.asarray(state[key])
                if arrays[key].shape != (self.n_pixels,):
                    raise ValueError(
                        f"state {key!r} has shape {arrays[key].shape}, expected ({self.n_pixels},)"
                    )
            for key in ("applied", "reads_seen"):
                arrays[key] = np.asarray(state[key])
                if arrays[key].shape != self.applied.shape:
                    raise ValueError(
                        f"state {key!r} has shape {arrays[key].shape}, expected "
                        f"{self.applied.shape}"
                    )
            for key, value in arrays.items():
                setattr(self, key, value.astype(getattr(self, key).dtype, copy=True))
        self.clock_s = float(state["clock_s"])
        self.tip_pixel = check_pixel(int(state["tip_pixel"]), self.n_pixels)

    # ----------------------------------------------------------------- the Instrument protocol
    @property
    def tip_pixel(self) -> int:
        """Flat index of the pixel the tip is over."""
        return self._replay.tip_pixel if self._replay is not None else self._tip

    @tip_pixel.setter
    def tip_pixel(self, pixel: int) -> None:
        if self._replay is not None:
            self._replay.tip_pixel = pixel
        else:
            self._tip = pixel

    def go_to(self, pixel: int) -> float:
        """Move the tip to ``pixel``; return the travel seconds (the clock runs on)."""
        pixel = check_pixel(pixel, self.n_pixels)
        seconds = self.cost_model.travel_seconds(self.tip_pixel, pixel, self.grid_shape)
        self.tip_pixel = pixel
        self.clock_s += seconds
        return seconds

    def wait(self, seconds: float) -> None:
        """Let ``seconds`` pass with no pulse (e.g. the algorithm's time): every pixel relaxes."""
        if not np.isfinite(seconds) or seconds < 0:
            raise ValueError(f"seconds must be finite and >= 0, got {seconds}")
        self.clock_s += float(seconds)

    def measure(
        self, pixel: int, voltages: np.ndarray, reads: int | None = None
    ) -> tuple[np.ndarray, float]:
        """Apply the pulses ``voltages`` (ascending indices into the voltage axis) at ``pixel``
        from its state and read each curve for its first ``reads`` points (all by default).

        Returns
        -------
        values, seconds
            float32 ``(len(voltages), reads)`` (NaN at a lost pixel) and the instrument seconds
            the cost model charges.
        """
        if self._replay is not None:
            values, seconds = self._replay.measure(pixel, voltages, reads)
            self.clock_s += seconds
            return values, seconds
        pixel = check_pixel(pixel, self.n_pixels)
        reads = check_reads(reads, self.spectral_shape)
        program = self.check_program(voltages)
        n_reads = self.spectral_shape[1] if reads is None else reads
        travel = self.cost_model.travel_seconds(self.tip_pixel, pixel, self.grid_shape)
        seconds = self.cost_model.measurement_seconds(
            int(program.size), self.tip_pixel, pixel, self.grid_shape, reads
        )
        state = self.polarisation[pixel]
        if self.relax_between_visits and self.visits[pixel] > 0:
            first_pulse = self.clock_s + travel + self.cost_model.settle_s
            state = state + self.pending[pixel] * self._relaxed(
                pixel, first_pulse - self.last_read_clock_s[pixel]
            )
        params = {k: v[pixel] for k, v in self._params.items()}  # one pixel: scalars
        response, new_state, pending = apply_pulses(
            params,
            state,
            self.volts[program],
            self._kernel[pixel],
            self._fast,
            self._max_volts,
            last_read=n_reads - 1,
        )
        values = response[:, :n_reads]
        if self.effects:
            values = self._measured(pixel, program, values)
        self.clock_s += seconds
        self.tip_pixel = pixel
        self.polarisation[pixel] = new_state
        self.pending[pixel] = pending
        self.read_age_s[pixel] = self.times[n_reads - 1]
        self.last_read_clock_s[pixel] = self.clock_s
        self.visits[pixel] += 1
        self.applied[pixel, program] += 1
        seen = self.reads_seen[pixel, program]
        self.reads_seen[pixel, program] = np.maximum(seen, n_reads)
        return np.ascontiguousarray(values), seconds

    # ----------------------------------------------------------------- helpers
    def check_program(self, voltages: np.ndarray) -> np.ndarray:
        """``voltages`` as an int64 array after checking it is a non-empty, strictly ascending
        1-D array of voltage indices (the order the pulses are applied in)."""
        voltages = check_voltages(voltages, self.spectral_shape[0])
        if voltages.size > 1 and not (np.diff(voltages) > 0).all():
            raise ValueError(
                f"voltage indices {voltages.tolist()} are not strictly ascending: a measurement "
                "applies its pulses in the order of the standard sequence, each once"
            )
        return voltages.astype(np.int64)

    def _relaxed(self, pixel: int, gap_s: float) -> float:
        """How much more of a pixel's pending back-switching has relaxed after ``gap_s`` more
        seconds than at its last read: ``K(age + gap) - K(age)`` (0 for no gap)."""
        tau, beta, age = self._tau[pixel], self._beta[pixel], self.read_age_s[pixel]
        later = np.exp(-((max(age + gap_s, age) / tau) ** beta))
        return float(later - np.exp(-((age / tau) ** beta)))

    def _measured(self, pixel: int, program: np.ndarray, truth: np.ndarray) -> np.ndarray:
        """The noise-free ``truth`` of a program through the twin's instrument effects."""
        if self._lost[pixel]:
            return np.full(truth.shape, np.nan, dtype=np.float32)
        n_reads = truth.shape[1]
        # The same float32 operations, in the same order, as envs.data.twin.InstrumentEffects.apply.
        values = truth * self._gain[pixel]
        values += self._offset[pixel]
        noise = self._noise[pixel, program, :n_reads].copy()
        # Entries read before at this pixel get fresh noise; the others the twin's own draw.
        seen = self.reads_seen[pixel, program]
        again = np.arange(n_reads)[None, :] < seen[:, None]
        if again.any():
            noise[again] = self._fresh_noise(pixel, len(program), n_reads)[again]
        values += noise
        for v, t, spike in self._spikes.get(pixel, ()):
            rows = np.flatnonzero(program == v)
            if rows.size and seen[rows[0]] <= t < n_reads:
                values[rows[0], t] += spike
        return values

    def _fresh_noise(self, pixel: int, n_rows: int, n_reads: int) -> np.ndarray:
        """Noise and spikes of repeated readings, seeded by (noise seed, pixel, visit)."""
        config = self.config
        key = [self.noise_seed, _REPEAT_NOISE_TAG, pixel, int(self.visits[pixel])]
        rng = np.random.default_rng(np.random.SeedSequence(key))
        noise = (config.noise_level * self._span) * rng.standard_normal(
            (n_rows, n_reads), dtype=np.float32
        )
        n_spikes = rng.binomial(noise.size, config.spike_rate)
        where = rng.integers(0, noise.size, size=n_spikes)
        sizes = config.spike_amplitude * self._span * rng.uniform(0.5, 1.0, n_spikes)
        noise.reshape(-1)[where] += (rng.choice([-1.0, 1.0], n_spikes) * sizes).astype(np.float32)
        return noise


def first_visit_pairs(
    dataset: Dataset, programs: Iterable[Program]
) -> dict[Program, tuple[np.ndarray, np.ndarray]]:
    """For each program, every pixel of the twin ``dataset`` measured by it from its as-grown
    state, beside the standard sequence's values at the same entries (the dataset's data):
    ``{program: (program_values, standard_values)}``, each ``(n, len(voltages), reads)`` over
    the ``n`` pixels where both are finite. The pairs that teach a
    :class:`reconstruct.program_map.ProgramMap` what a first visit reads; only a twin can give
    both at one pixel (a real one remembers the first).

    Raises
    ------
    ValueError
        For a dataset that is not a twin (one line).
    """
    if twin_of(dataset) is None:
        raise ValueError("first-visit pairs need a twin: a recorded file has no memory to simulate")
    instrument = TwinMemoryInstrument(dataset, CostModel().for_axes(dataset.axes))
    n_pixels = instrument.n_pixels
    standard = np.asarray(dataset.data, np.float32).reshape(n_pixels, *dataset.data.shape[2:])
    pairs = {}
    for program in programs:
        voltages = np.asarray(program.voltages)
        measured = np.stack([
            instrument.measure_first_visit(pixel, voltages, program.reads)
            for pixel in range(n_pixels)
        ])
        expected = standard[:, voltages, : program.reads]
        finite = np.isfinite(measured).all((1, 2)) & np.isfinite(expected).all((1, 2))
        pairs[program] = (measured[finite], expected[finite])
    return pairs


def _truth_dataset(dataset: Dataset) -> Dataset:
    """The dataset's noise-free truth as a dataset of its own (a replay without effects)."""
    if dataset.truth is None:
        raise ValueError("effects=False needs the noise-free truth, which only the twin has")
    return Dataset(
        data=dataset.truth,
        axes=dataset.axes,
        quantity=dataset.quantity,
        unit=dataset.unit,
        source=dataset.source,
        path=dataset.path,
        attrs=dict(dataset.attrs),
        truth=dataset.truth,
    )


def instrument_for(
    dataset: Dataset, cost_model: CostModel, memory: bool | None = None, start_pixel: int = 0
) -> ReplayInstrument | TwinMemoryInstrument:
    """The instrument that measures ``dataset``: the twin with its memory simulated, or a replay.

    ``memory`` None (the default everywhere) simulates the memory of a twin and replays a
    recorded file (it has no physics to simulate); True asks for the memory (a file is then a
    one-line ``ValueError``); False replays, as a sample without memory would answer.
    """
    if memory is None:
        memory = twin_of(dataset) is not None
    if not memory:
        return ReplayInstrument(dataset, cost_model, start_pixel=start_pixel)
    return TwinMemoryInstrument(dataset, cost_model, start_pixel=start_pixel)


#: The memory settings of the programs and of :class:`envs.acquisition.factory.EnvConfig`.
MEMORY_SETTINGS = ("auto", "on", "off")


def memory_option() -> Any:
    """The ``memory`` setting as a program option (:func:`envs.command_line.option`), the same
    in every program that measures."""
    return option(
        "auto",
        "the sample's memory: auto (a twin's measurements are simulated from each pixel's "
        "state, a recorded file is replayed), on, or off (a replay, as a sample without memory)",
        choices=MEMORY_SETTINGS,
    )


def memory_setting(text: str | bool | None) -> bool | None:
    """``"auto"``/None, ``"on"``/True or ``"off"``/False as the ``memory`` of
    :func:`instrument_for`; anything else is a one-line ``ValueError`` naming the settings."""
    if text is None or isinstance(text, bool):
        return text
    settings = {"auto": None, "on": True, "off": False}
    if text not in settings:
        raise ValueError(
            f"unknown memory setting {text!r}; the settings are auto (a twin remembers, a file "
            f"is replayed), on and off (a replay, as a sample without memory)"
        )
    return settings[text]
