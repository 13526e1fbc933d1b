"""The live experiment: drive an instrument block by block, save every measurement, resume anywhere.

``python experiment.py run --instrument http://127.0.0.1:8765 --agent gp-uncertainty
--budget-hours 2 --stop-r2 0.9 --session runs/s1.h5`` runs the loop a scientist runs at the
microscope: the policy picks a (pixel, voltage block), the instrument measures it, the
measurement is appended to the session file and flushed, the reconstruction updates; repeat
until the estimated accuracy reaches the target, the budget is spent, or every block is measured.
``--resume`` continues a session after a crash, Ctrl-C or a lost instrument, rebuilding the
reconstruction from the file. At the end the reconstruction, its uncertainty, a summary and a
figure are written beside the session file.

Instruments: ``http://HOST:PORT`` (:class:`envs.instruments.remote.RemoteInstrument`), or
``replay:SPEC`` /
``SPEC`` for a local replay of anything :func:`envs.data.loaders.open_data` reads (``twin:SEED``, an
h5/npy path), optionally paced in real time (``--pace F`` sleeps instrument seconds / F).

Order of a session: the initial design (every block of a sparse grid of pixels, one batch update),
then ``--check-blocks`` held-back check blocks (seeded, never given to the reconstruction; they
calibrate the accuracy estimate, :mod:`envs.live.accuracy_estimate`), then the policy's choices.
Every random choice derives from ``--seed``: the check blocks, and each policy decision (its
generator is reseeded from the seed and the record count, so a resumed session decides exactly
as an uninterrupted one would). With ``--algorithm-clock model`` the charged algorithm time is
the cost model's, and a seeded session is reproducible to the bit; the default ``wall`` charges
the measured wall clock, as a real instrument would pay it.

Time accounting: instrument seconds are the instrument's own report; the algorithm seconds of a
record are the wall time from the previous measurement's arrival to this one's request (the
update, the estimate, the observation and the decision). The move back to the last pixel after a
resume is not charged, so a resumed session spends the same budget as an uninterrupted one.

The loop runs the same :class:`envs.acquisition.env.AcquisitionEnv` as training and evaluation,
over the live instrument (no reference, so no reward), for its observation, action encoding and
pricing, so every policy (PPO included) sees the observations it was trained on; the loop
measures through the instrument itself so that each block is in the session file before the
reconstruction sees it. Known differences after a resume: the observation's "recent change"
scalar restarts at 0 and a surprise plane restarts from the measurements after the resume.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from envs.acquisition.env import AcquisitionEnv
from envs.acquisition.observation import ObservationSpec
from envs.data.dataset import Axis, Dataset
from envs.instruments.cost import CostModel
from envs.instruments.instrument import Instrument, PacedInstrument, ReplayInstrument
from envs.instruments.remote import InstrumentError, RemoteInstrument
from envs.live.accuracy_estimate import (
    ESTIMATES,
    AuditPlan,
    AuditResult,
    audit_r2,
    calibrated_error,
    choose_check_blocks,
    error_weights,
    estimate_r2,
    plan_audit,
    projected_r2,
)
from envs.live.session import (
    KIND_AUDIT,
    KIND_CHECK,
    KIND_INITIAL,
    KIND_POLICY,
    Records,
    Session,
    SessionError,
)
from reconstruct.base import BlockLayout
from reconstruct.metrics import dynamics_r2
from reconstruct.registry import check_reconstructor_options, make_reconstructor


# ============================================================================ instruments
def open_instrument(
    spec: str,
    *,
    timeout: float = 30.0,
    pace: float = 0.0,
    twin_options: dict[str, Any] | None = None,
) -> tuple[Instrument, Dataset | None]:
    """The instrument named by ``spec``, and the replayed dataset when there is one.

    ``http://HOST:PORT`` gives a :class:`RemoteInstrument` (no dataset); ``replay:SPEC`` or a
    bare ``SPEC`` (``twin:SEED``, a file path) a :class:`ReplayInstrument` priced by the default
    cost model fitted to the data's time axis. ``pace > 0`` paces it in real time.
    """
    dataset: Dataset | None = None
    if spec.startswith(("http://", "https://")):
        instrument: Instrument = RemoteInstrument(spec, timeout=timeout)
    else:
        from envs.data.sources import open_data

        data_spec = spec.removeprefix("replay:")
        is_twin = data_spec == "twin" or data_spec.startswith("twin:")
        dataset = open_data(data_spec, **((twin_options or {}) if is_twin else {}))
        instrument = ReplayInstrument(dataset, CostModel().for_axes(dataset.axes))
    if pace > 0:
        instrument = PacedInstrument(instrument, pace)
    return instrument, dataset


# ============================================================================ configuration
@dataclass
class ExperimentConfig:
    """Settings of one session (stored in the session file; ``--resume`` reuses them).

    ``instrument``, ``timeout``, ``pace`` and ``progress`` may change on resume (a restarted
    server can have a new address); everything else comes from the file.
    """

    instrument: str
    session: str
    agent: str = "gp-uncertainty"
    seed: int = 0
    budget_hours: float = 1.0
    stop_r2: float | None = 0.9
    reconstructor: str = "gp"
    #: Keyword options of the reconstructor, e.g. ``{"error_calibration": "online"}``.
    reconstructor_options: dict[str, Any] = field(default_factory=dict)
    n_blocks: int = 4
    block_scheme: str = "spread"
    initial_stride: int = 6
    check_blocks: int = 48
    estimate: str = "sampled"
    audit_draws: int = 96
    estimate_every: int = 10
    max_measurements: int | None = None
    algorithm_clock: str = "wall"
    on_nan: str = "skip"
    timeout: float = 30.0
    pace: float = 0.0
    reference: str | None = None
    twin_grid: int | None = None
    twin_times: int | None = None
    device: str = "auto"
    progress: bool = True

    #: Settings a resume may change.
    RESUMABLE_OVERRIDES = ("instrument", "timeout", "pace", "progress", "session")

    def __post_init__(self) -> None:
        if not self.budget_hours > 0:
            raise ValueError(f"budget_hours must be > 0, got {self.budget_hours}")
        if self.stop_r2 is not None and not self.stop_r2 <= 1:
            raise ValueError(f"stop_r2 must be an R^2 <= 1, got {self.stop_r2}")
        if self.estimate not in ESTIMATES:
            raise ValueError(f"estimate must be one of {ESTIMATES}, got {self.estimate!r}")
        if self.algorithm_clock not in ("wall", "model"):
            raise ValueError(
                f"algorithm_clock must be 'wall' or 'model', got {self.algorithm_clock!r}"
            )
        if self.on_nan not in ("skip", "stop"):
            raise ValueError(f"on_nan must be 'skip' or 'stop', got {self.on_nan!r}")
        if self.estimate_every < 1 or self.check_blocks < 0:
            raise ValueError("estimate_every must be >= 1 and check_blocks >= 0")
        if self.audit_draws < 2:
            raise ValueError(f"audit_draws must be >= 2, got {self.audit_draws}")
        check_reconstructor_options(self.reconstructor, self.reconstructor_options)

    def stored(self) -> dict[str, Any]:
        """JSON-safe settings for the session file."""
        return dataclasses.asdict(self)

    def twin_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.twin_grid:
            options["grid"] = (self.twin_grid, self.twin_grid)
        if self.twin_times:
            options["n_times"] = self.twin_times
        return options


@dataclass
class ExperimentResult:
    """How a session ended and where its outputs are."""

    reason: str
    n_records: int
    seconds: float
    r2_estimate: float
    r2_true: float
    session: Path
    reconstruction: Path
    figure: Path
    summary: Path


class ExperimentStopped(RuntimeError):
    """The session stopped early (instrument, disk, Ctrl-C); the file can be resumed."""


# ============================================================================ the loop
class _Experiment:
    """One running session: instrument, session file, live env, policy and estimates."""

    def __init__(
        self, config: ExperimentConfig, resume: bool, make_policy: Callable[[str], Any]
    ) -> None:
        if resume:
            session = Session.open(config.session)
            if session.status.startswith("finished"):
                reason = session.status.partition(": ")[2] or session.status
                session.close()
                raise SessionError(
                    f"{config.session} is already finished ({reason}); its results are beside "
                    f"it; start a new session with another --session"
                )
            stored = dict(session.config)
            if "target" in stored:  # sessions written before the option was named stop_r2
                stored["stop_r2"] = stored.pop("target")
            for key in ExperimentConfig.RESUMABLE_OVERRIDES:
                stored[key] = getattr(config, key)
            config = ExperimentConfig(**stored)
        self.config = config
        self.instrument, dataset = open_instrument(
            config.instrument, timeout=config.timeout, pace=config.pace,
            twin_options=config.twin_options(),
        )
        reference = dataset
        if config.reference:
            from envs.data.sources import open_data

            reference = open_data(config.reference, **config.twin_options())
        n_voltages = self.instrument.spectral_shape[0]
        self.layout = BlockLayout(n_voltages, config.n_blocks, config.block_scheme)
        block_features = self.layout.block_size * int(np.prod(self.instrument.spectral_shape[1:]))
        axes: list[Axis] = list(self.instrument.axes)
        if resume:
            self.session = session
            if (self.session.grid_shape, self.session.spectral_shape) != (
                tuple(self.instrument.grid_shape), tuple(self.instrument.spectral_shape)
            ):
                raise SessionError(
                    f"the instrument's grid {self.instrument.grid_shape} x spectra "
                    f"{self.instrument.spectral_shape} differ from the session's "
                    f"{self.session.grid_shape} x {self.session.spectral_shape}"
                )
        else:
            self.session = Session.create(config.session, config.stored(), axes, block_features)
        self.session.set_status("running")

        self.policy = make_policy(config.agent)
        if self.policy.privileged:
            raise ValueError(f"policy {config.agent!r} reads the ground truth; it cannot run live")
        grid = tuple(self.instrument.grid_shape)
        spectral = tuple(self.instrument.spectral_shape)
        reconstructor = make_reconstructor(
            config.reconstructor, grid, spectral, self.layout, device=config.device,
            **config.reconstructor_options,
        )
        cost = CostModel(algorithm_clock="model").for_axes(axes)
        # The observation the policy reads (a trained model's planes), as in its training env.
        settings = self.policy.env_settings()
        observation = ObservationSpec(
            self.layout.n_blocks,
            settings.get("n_components", 3),
            tuple(settings.get("planes", ())),
        )
        self.env = AcquisitionEnv(
            self.instrument,
            reconstructor,
            cost,
            budget_seconds=config.budget_hours * 3600.0,
            initial_stride=config.initial_stride,
            observation=observation,
        )
        # The loop measures the initial design itself, so that every block reaches the session
        # file before the reconstruction sees it.
        self.env.reset(seed=config.seed, options={"initial_design": False})
        self.reference_blocks = None
        self.reference = reference
        if reference is not None:
            self.reference_blocks = self.env._to_blocks(reference.data)

        self.check_pairs = choose_check_blocks(
            self.env.n_pixels, self.env.n_blocks, config.check_blocks,
            self.env.initial_pixels, config.seed,
        )
        self.rejected = np.zeros((self.env.n_pixels, self.env.n_blocks), dtype=bool)
        self.check_values = np.full((len(self.check_pairs), block_features), np.nan, np.float32)
        self.r2_estimate = float("nan")
        self.r2_true = float("nan")
        self.trace: list[tuple[float, float, float]] = []  # (seconds, estimate, true)
        # Audit rounds (estimate "sampled"): the open round and the record it started at, the
        # last closed round's audited / calibrated error, a passed round, where the last ended.
        self._audit_open: tuple[AuditPlan, int] | None = None
        self._audit_correction: float | None = None
        self._audit_passed: AuditResult | None = None
        self._last_audit_end = 0
        self._last_arrival = time.perf_counter()
        self._decision_ms = float("nan")

    # ------------------------------------------------------------------ measuring
    def _measure(self, pixel: int, block: int, kind: int, algorithm_seconds: float) -> np.ndarray:
        """Measure, validate, append to the session (flushed); return the values in slot
        layout, ``(F_b,)``."""
        voltages = self.layout.voltages(block)
        values, seconds = self.instrument.measure(pixel, voltages)
        self._last_arrival = time.perf_counter()
        values = np.asarray(values, dtype=np.float32)
        expected = (len(voltages), *self.instrument.spectral_shape[1:])
        if values.shape != expected:
            raise InstrumentError(
                f"the instrument returned values of shape {values.shape} at pixel {pixel} block "
                f"{block}, expected {expected}"
            )
        if not np.isfinite(values).all() and self.config.on_nan == "stop":
            raise InstrumentError(
                f"the instrument returned NaN/inf at pixel {pixel} block {block} "
                f"({int((~np.isfinite(values)).sum())} of {values.size} values); rerun with "
                f"--on-nan skip to record such blocks as rejected and go on"
            )
        # Sessions store every block at one width: its slots (see reconstruct.BlockLayout).
        values = self.layout.to_slots(block, values)
        self.session.append(pixel, block, kind, values, seconds, algorithm_seconds)
        self._account(pixel, block, values, seconds, algorithm_seconds)
        return values.reshape(-1)

    def _account(
        self, pixel: int, block: int, values: np.ndarray, seconds: float, algorithm_seconds: float
    ) -> None:
        self.env.mark(pixel, block)
        # A rejected (NaN) block is missing from the reference R^2 too: the estimate skips it.
        self.rejected[pixel, block] = not np.isfinite(values).all()
        self.env.instrument_seconds += float(seconds)
        if np.isfinite(algorithm_seconds):
            self.env.algorithm_seconds += float(algorithm_seconds)

    def _algorithm_seconds(self) -> float:
        if self.config.algorithm_clock == "model":
            return self.env.cost_model.algorithm_s(self.env.n_measurements + 1)
        return time.perf_counter() - self._last_arrival

    # ------------------------------------------------------------------ phases
    def replay_records(self) -> None:
        """Rebuild the state from the session's records, with the same reconstructor calls as
        the run that wrote them (initial design in one batch, then one by one)."""
        records = self.session.records()
        initial = records.kind == KIND_INITIAL
        check_index = {(int(p), int(b)): i for i, (p, b) in enumerate(self.check_pairs)}
        for i in range(len(records)):
            pixel, block = int(records.pixel[i]), int(records.block[i])
            self._account(
                pixel, block, records.values[i], records.instrument_seconds[i],
                records.algorithm_seconds[i],
            )
            if records.kind[i] == KIND_CHECK:
                self.check_values[check_index[(pixel, block)]] = records.values[i]
            if np.isfinite(records.r2_estimate[i]):
                seconds = float(records.instrument_seconds[: i + 1].sum())
                estimate, true = float(records.r2_estimate[i]), float(records.r2_true[i])
                self.trace.append((seconds, estimate, true))
                # The stop rule reads the last estimate, as it did before the interruption.
                self.r2_estimate, self.r2_true = estimate, true
        if initial.sum() == self.env.initial_pixels.size * self.env.n_blocks:
            self._add_initial(records)
        for i in np.flatnonzero(np.isin(records.kind, (KIND_POLICY, KIND_AUDIT))):
            if records.kind[i] == KIND_POLICY:
                self._add(int(records.pixel[i]), int(records.block[i]), records.values[i])
            else:
                self._replay_audit(records, int(i))
        if len(records):
            last = int(records.pixel[-1])
            if self.instrument.tip_pixel != last:
                self.instrument.go_to(last)  # not charged: see the module notes

    def _add(self, pixel: int, block: int, values: np.ndarray) -> None:
        if np.isfinite(values).all():
            self.env.reconstructor.add(pixel, block, values)

    def _add_initial(self, records: Records) -> None:
        """The initial design's usable records in one batch update, as the first run did."""
        use = (records.kind == KIND_INITIAL) & np.isfinite(records.values).all(1)
        if use.any():
            self.env.reconstructor.add_many(
                records.pixel[use].tolist(), records.block[use].tolist(), records.values[use]
            )

    def measure_initial_and_checks(self) -> None:
        """Measure what is missing of the initial design (then one batch update) and of the
        check blocks."""
        env = self.env
        if not env.measured[env.initial_pixels].all():
            for pixel in env.initial_pixels:
                for block in range(env.n_blocks):
                    if not env.measured[pixel, block]:
                        self._measure(int(pixel), block, KIND_INITIAL, self._algorithm_seconds())
            self._add_initial(self.session.records())
        for i, (pixel, block) in enumerate(self.check_pairs):
            if not env.measured[pixel, block]:
                self.check_values[i] = self._measure(
                    int(pixel), int(block), KIND_CHECK, self._algorithm_seconds()
                )

    def update_estimate(self) -> None:
        """Recompute the accuracy estimate (and the true R^2 when a reference is known) and
        store it on the last record."""
        self._estimate_stored_on_last_record = True
        recon = self.env.reconstructor
        seen = recon.measured.cpu().numpy() | self.rejected
        arguments = (
            recon.estimate_blocks(), recon.uncertainty(), seen, self.check_pairs, self.check_values
        )
        if self.config.estimate == "sampled" and self._audit_correction is not None:
            # Between audit rounds: the calibrated estimate, corrected as the last round found.
            self.r2_estimate = projected_r2(*arguments, self._audit_correction)
        else:
            self.r2_estimate = estimate_r2(self.config.estimate, *arguments)
        if self.reference_blocks is not None:
            self.r2_true = float(recon.r2(self.reference_blocks))
        self.session.set_estimate(self.r2_estimate, self.r2_true)
        self.trace.append((self.env.instrument_seconds, self.r2_estimate, self.r2_true))

    # ------------------------------------------------------------------ audit rounds
    def _plan_audit(self, records: Records, start: int) -> AuditPlan:
        """The audit round starting at record ``start``: drawn from the blocks not measured by
        then, with the reconstructor as it stands (the same on a replay), seeded by the seed and
        ``start``."""
        recon = self.env.reconstructor
        taken = np.zeros_like(self.env.measured)
        taken[records.pixel[:start], records.block[:start]] = True
        weights = error_weights(recon.estimate_blocks(), recon.uncertainty(), recon.measured)
        return plan_audit(weights, ~taken, self.config.audit_draws, [self.config.seed, start, 1])

    def _replay_audit(self, records: Records, i: int) -> None:
        """Record ``i`` is an audit block: open its round on the first, close it on the last."""
        if self._audit_open is None:
            self._audit_open = (self._plan_audit(records, i), i)
        plan, start = self._audit_open
        expected = tuple(plan.pairs[i - start])
        if (int(records.pixel[i]), int(records.block[i])) != expected:
            raise SessionError(
                f"record {i} measured pixel {records.pixel[i]} block {records.block[i]} but the "
                f"audit round from record {start} draws {expected}; was the file edited?"
            )
        if i - start + 1 == len(plan.pairs):
            # A crash between the last block and its estimate: store it now, as the run would.
            missing = i == len(records) - 1 and not np.isfinite(records.r2_estimate[i])
            self._close_audit(records, i + 1, store=missing)

    def _audit(self) -> None:
        """Measure what is missing of the open round (a new one if none is open), then close it."""
        if self._audit_open is None:
            start = self.session.n_records
            self._audit_open = (self._plan_audit(self.session.records(), start), start)
        plan, start = self._audit_open
        for pixel, block in plan.pairs[self.session.n_records - start :]:
            self._measure(int(pixel), int(block), KIND_AUDIT, self._algorithm_seconds())
        records = self.session.records()
        self._close_audit(records, len(records), store=True)

    def _close_audit(self, records: Records, end: int, store: bool) -> None:
        """Score the open round; if its lower bound misses the target, its blocks go to the
        reconstruction (in raster order, as on a replay) and the round's audited / calibrated
        error corrects the estimate until the next one. ``store``: write the estimate on the
        last record (a replay reads it back instead). ``end``: the round's last record + 1."""
        plan, start = self._audit_open
        self._audit_open = None
        self._last_audit_end = end
        values = records.values[start:end]
        recon = self.env.reconstructor
        estimate = recon.estimate_blocks()
        result = audit_r2(estimate, plan, values, self.check_pairs, self.check_values)
        if store:
            self.r2_estimate = result.r2
            if self.reference_blocks is not None:
                self.r2_true = float(recon.r2(self.reference_blocks))
            self.session.set_estimate(self.r2_estimate, self.r2_true)
            self.trace.append((self.env.instrument_seconds, self.r2_estimate, self.r2_true))
            self._estimate_stored_on_last_record = True
        if self.config.stop_r2 is not None and result.lower >= self.config.stop_r2:
            self._audit_passed = result
            return
        # Rejected blocks as the run knew them then (a replay knows the later ones too).
        rejected = np.zeros_like(self.rejected)
        bad = ~np.isfinite(records.values[:end]).all(1)
        rejected[records.pixel[:end][bad], records.block[:end][bad]] = True
        calibrated = calibrated_error(
            estimate, recon.uncertainty(), self.check_pairs, self.check_values,
            recon.measured.cpu().numpy() | rejected,
        )
        self._audit_correction = result.error / calibrated if calibrated > 0 else 1.0
        for (pixel, block), block_values in zip(plan.pairs, values, strict=True):
            self._add(int(pixel), int(block), block_values)

    def _audited_stop(self) -> str | None:
        """With the estimate "sampled", a target reached is checked by an audit round (at most
        one per ``audit_draws // 2`` records, and none once another stop rule holds)."""
        env, config = self.env, self.config
        limit = config.max_measurements
        if self._audit_passed is None and not (
            self.r2_estimate < config.stop_r2
            or self.session.n_records - self._last_audit_end < config.audit_draws // 2
            or env.seconds_used >= env.budget_seconds
            or env.measured.all()
            or (limit is not None and self.session.n_records >= limit)
        ):
            self._audit()
        if (passed := self._audit_passed) is None:
            return None
        return (
            f"audited R^2 {passed.r2:.3f} (lower bound {passed.lower:.3f}) reached the target "
            f"{config.stop_r2}"
        )

    def stop_reason(self) -> str | None:
        env, config = self.env, self.config
        if config.stop_r2 is not None and config.estimate == "sampled":
            if (audited := self._audited_stop()) is not None:
                return audited
        elif config.stop_r2 is not None and self.r2_estimate >= config.stop_r2:
            return f"estimated R^2 {self.r2_estimate:.3f} reached the target {config.stop_r2}"
        if env.seconds_used >= env.budget_seconds:
            return f"budget of {config.budget_hours:g} h spent"
        if env.measured.all():
            return "every block measured"
        limit = config.max_measurements
        if limit is not None and self.session.n_records >= limit:
            return f"measurement limit {config.max_measurements} reached"
        return None

    def policy_step(self) -> None:
        env = self.env
        start = time.perf_counter()
        observation = env.observe()
        self.policy.rng = np.random.default_rng([self.config.seed, self.session.n_records])
        pixel, block, _ = env.decode_action(self.policy.act(observation, env.action_masks()))
        self._decision_ms = 1e3 * (time.perf_counter() - start)
        algorithm_seconds = self._algorithm_seconds()
        env.before_measuring(pixel, block)
        values = self._measure(pixel, block, KIND_POLICY, algorithm_seconds)
        self._estimate_stored_on_last_record = False
        self._add(pixel, block, values)
        env.after_measuring()

    def run(self) -> str:
        """Measure until a stop rule fires; the reason."""
        from tqdm import tqdm

        self.replay_records()
        self.measure_initial_and_checks()
        if self._audit_open is not None:  # interrupted during an audit round: finish it
            self._audit()
        records = self.session.records()
        self._n_before_policy = int(np.isin(records.kind, (KIND_INITIAL, KIND_CHECK)).sum())
        self._estimate_stored_on_last_record = bool(
            len(records) and np.isfinite(records.r2_estimate[-1])
        )
        self.policy.reset(self.env, self.config.seed)
        bar = tqdm(
            total=self.env.measured.size, initial=self.session.n_records, unit="block",
            disable=not self.config.progress, dynamic_ncols=True, file=sys.stderr,
        )
        every = self.config.estimate_every
        try:
            # The estimate is due when the number of policy records is a multiple of
            # ``estimate_every``, counted over the whole session, so that a resumed session
            # estimates (and stops) exactly where an uninterrupted one would.
            if self.n_policy_records % every == 0 and not self._estimate_stored_on_last_record:
                self.update_estimate()
            while (reason := self.stop_reason()) is None:
                self.policy_step()
                if self.n_policy_records % every == 0:
                    self.update_estimate()
                bar.update(1)
                bar.set_postfix_str(self._progress_text(), refresh=False)
            if self.n_policy_records % every and not self._estimate_stored_on_last_record:
                self.update_estimate()
                reason = self.stop_reason() or reason
        finally:
            bar.close()
        return reason

    @property
    def n_policy_records(self) -> int:
        """Blocks the policy (and audit rounds) chose so far in this session (a resume counts
        the earlier ones)."""
        return self.session.n_records - self._n_before_policy

    def _progress_text(self) -> str:
        text = (
            f"{self.env.instrument_seconds / 3600:.2f} h instr, est R^2 {self.r2_estimate:.3f}"
        )
        if np.isfinite(self.r2_true):
            text += f" (true {self.r2_true:.3f})"
        return text + f", {self._decision_ms:.1f} ms/decision"

    # ------------------------------------------------------------------ outputs
    def write_outputs(self, reason: str) -> ExperimentResult:
        """Reconstruction + uncertainty (h5), summary (JSON) and figure (PNG) beside the session."""
        import h5py

        recon = self.env.reconstructor
        stem = self.session.path.with_suffix("")
        paths = {
            "reconstruction": Path(f"{stem}_reconstruction.h5"),
            "summary": Path(f"{stem}_summary.json"),
            "figure": Path(f"{stem}.png"),
        }
        estimate = recon.estimate().detach().cpu().numpy().astype(np.float32)
        grid = self.env.grid_shape
        uncertainty = recon.uncertainty().detach().cpu().numpy().T.reshape(self.env.n_blocks, *grid)
        with h5py.File(paths["reconstruction"], "w") as file:
            file.create_dataset("estimate", data=estimate, compression="lzf")
            file.create_dataset("uncertainty", data=uncertainty.astype(np.float32))
            file.create_dataset("measured", data=self.env.measured.T.reshape(-1, *grid))
            file.attrs["axis_names"] = [a.name for a in self.instrument.axes]
            file.attrs["uncertainty_note"] = (
                "predictive variance per (block, x, y), mean over the block's features"
            )
        summary = {
            "reason": reason,
            "measurements": self.session.n_records,
            "blocks": int(self.env.measured.size),
            "instrument_hours": self.env.instrument_seconds / 3600,
            "algorithm_hours": self.env.algorithm_seconds / 3600,
            "full_raster_hours": self.env.cost_model.full_raster_seconds(
                grid, self.layout.n_voltages, self.layout
            ) / 3600,
            "r2_estimate": self.r2_estimate,
            "estimate": self.config.estimate,
            "r2_lower_bound": None if self._audit_passed is None else self._audit_passed.lower,
            "audit_measurements": int((self.session.records().kind == KIND_AUDIT).sum()),
            "r2_true": None if not np.isfinite(self.r2_true) else self.r2_true,
            **self._dynamics_scores(estimate),
            "config": self.config.stored(),
        }
        paths["summary"].write_text(json.dumps(summary, indent=2))
        self._figure(paths["figure"], estimate, uncertainty)
        self.session.set_status(f"finished: {reason}")
        return ExperimentResult(
            reason, self.session.n_records, self.env.seconds_used, self.r2_estimate,
            self.r2_true, self.session.path, **paths,
        )

    def _dynamics_scores(self, estimate: np.ndarray) -> dict[str, float]:
        """With a reference and a time axis: the dynamics R^2 (the relaxation part alone,
        :func:`reconstruct.metrics.dynamics_r2`) against the reference's data and, for a twin,
        its noise-free truth, beside the tensor R^2."""
        reference = self.reference
        if reference is None or estimate.ndim < 4 or estimate.shape[3] < 2:
            return {}
        scores = {"r2_dynamics_true": dynamics_r2(reference.data, estimate)}
        if reference.truth is not None:
            truth = np.where(np.isfinite(reference.data), reference.truth, np.nan)
            scores["r2_dynamics_truth"] = dynamics_r2(truth, estimate)
        return scores

    def _figure(self, path: Path, estimate: np.ndarray, uncertainty: np.ndarray) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        middle = tuple(s // 2 for s in estimate.shape[2:])
        holds_middle = [middle[0] in self.layout.voltages(b) for b in range(self.env.n_blocks)]
        block = int(np.flatnonzero(holds_middle)[0])
        fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
        panels = [
            (self.env.measured.sum(1).reshape(self.env.grid_shape), "blocks taken per pixel"),
            (estimate[(slice(None), slice(None), *middle)], f"reconstruction at index {middle}"),
            (uncertainty[block], f"predictive variance, block {block}"),
        ]
        for ax, (image, title) in zip(axes, panels, strict=False):
            shown = ax.imshow(image, cmap="viridis")
            ax.set_title(title)
            fig.colorbar(shown, ax=ax, shrink=0.8)
        if self.trace:
            hours, est, true = (np.asarray(v) for v in zip(*self.trace, strict=True))
            axes[3].plot(hours / 3600, est, label=f"estimated ({self.config.estimate})")
            if np.isfinite(true).any():
                axes[3].plot(hours / 3600, true, label="true (replay only)")
            if self.config.stop_r2 is not None:
                axes[3].axhline(self.config.stop_r2, color="grey", ls="--", label="target")
            shown = np.concatenate([est, true])
            axes[3].set_ylim(max(float(np.nanmin(shown)), -0.5), 1.0)
            axes[3].legend(loc="lower right")
        axes[3].set_xlabel("instrument hours")
        axes[3].set_title("R^2")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def run_experiment(
    config: ExperimentConfig, resume: bool = False, *, make_policy: Callable[[str], Any]
) -> ExperimentResult:
    """Run (or resume) a session to its end and write its outputs.

    ``make_policy`` builds the policy from the session's agent spec (``config.agent``, or the
    stored one on resume): :func:`agents.catalog.make_policy` for the registered policies.

    Raises
    ------
    ExperimentStopped
        When the instrument, the disk or a Ctrl-C stops the session; the message says why and
        the session file resumes with ``resume=True``.
    SessionError, ValueError
        For a session that cannot start (existing file, bad settings).
    """
    experiment = _Experiment(config, resume, make_policy)
    try:
        reason = experiment.run()
        return experiment.write_outputs(reason)
    except (InstrumentError, SessionError, KeyboardInterrupt) as err:
        what = "interrupted (Ctrl-C)" if isinstance(err, KeyboardInterrupt) else str(err)
        experiment.session.set_status(f"stopped: {what}")
        n = experiment.session.n_records
        raise ExperimentStopped(
            f"session stopped: {what}\n{n} measurements are saved in {experiment.session.path}; "
            f"continue with: python experiment.py run --resume --session "
            f"{experiment.session.path} --instrument {experiment.config.instrument}"
        ) from err
    finally:
        experiment.session.close()
