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
``replay:SPEC`` / ``SPEC`` for a local replay of anything :func:`envs.data.loaders.open_data` reads
(``twin:SEED``, an h5/npy path), optionally paced in real time (``--pace F`` sleeps instrument
seconds / F).

Order of a session: the initial design (every block of a sparse grid of pixels, one batch update),
then ``--check-blocks`` held-back check blocks (seeded, never given to the reconstruction; they
calibrate the accuracy estimate, :mod:`envs.live.accuracy_estimate`), then the policy's choices.
Every random choice derives from ``--seed``: the check blocks, and each policy decision (its
generator is reseeded from the seed and the record count, so a resumed session decides exactly
as an uninterrupted one would). With ``--algorithm-clock model`` the charged algorithm time is
the cost model's, and a seeded session is reproducible to the bit; the default ``wall`` charges
the measured wall clock, as a real instrument would pay it.

Time accounting is the env's own: instrument seconds are the instrument's report, algorithm
seconds the cost model's (``--algorithm-clock model``) or the wall time of each decision and
update (``wall``); each record notes the algorithm seconds charged with it. The move back to the
last pixel after a resume is not charged, so a resumed session spends the same budget as an
uninterrupted one.

The one step path: the loop runs the :class:`envs.acquisition.env.AcquisitionEnv` that
:func:`envs.acquisition.factory.make_env` builds over a :class:`SessionInstrument`, and only
calls its operations: ``reset`` (the initial design), ``measure_held_back`` (check blocks and
audit rounds, kept from the reconstruction), ``release_held_back`` (a failed round's blocks),
``step`` (each policy decision) and ``observe`` (after held-back blocks); it reads the env's
public properties and ``info`` and writes none of its state. The :class:`SessionInstrument`
appends each measurement to the session file (flushed) before the env gets it; on a resume it
answers the recorded requests from the file (each must match its record) and the loop repeats
the same env operations, so the env's state (reconstruction, observation, counters) is rebuilt
exactly before the first live measurement.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from envs.acquisition.factory import EnvConfig, make_env
from envs.acquisition.programs import programs_option
from envs.command_line import option
from envs.instruments.memory import memory_option
from envs.instruments.remote import InstrumentError
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
from envs.live.recording import (
    RecordMismatch,
    SessionInstrument,
    check_same_instrument,
    instrument_identity,
    open_instrument,
)
from envs.live.session import (
    KIND_AUDIT,
    KIND_CHECK,
    KIND_INITIAL,
    KIND_NAMES,
    KIND_POLICY,
    Session,
    SessionError,
)
from reconstruct.metrics import dynamics_r2
from reconstruct.registry import check_reconstructor_options


# ============================================================================ configuration
@dataclass
class ExperimentConfig:
    """Settings of one session (stored in the session file; ``--resume`` reuses them).

    The settings in :attr:`RESUMABLE_OVERRIDES` may change on a resume (a restarted server can
    have a new address, a session may be given more budget); any other one given with a resume
    must equal the stored value (:meth:`for_resume`).
    """

    instrument: str = option(
        "", "http://HOST:PORT, or replay:SPEC / SPEC with SPEC twin:SEED or a data file",
        metavar="SPEC",
    )
    session: str = option("", "session h5 file (outputs go beside it)", metavar="FILE")
    agent: str = option("gp-uncertainty", "policy (a name from agents.catalog)", metavar="NAME")
    seed: int = option(0, "seed of every random choice (check blocks, decisions, audits)")
    budget_hours: float = option(1.0, "instrument + algorithm hours the session may spend")
    stop_r2: float | None = option(
        0.9, "stop when the estimated R^2 reaches this (negative: no target)", metavar="R2"
    )
    reconstructor: str = option("gp", "reconstructor (a name from reconstruct.registry)")
    reconstructor_options: dict[str, Any] = option(
        {}, 'reconstructor options as JSON, e.g. \'{"error_calibration": "online"}\' '
        "(default: none)",
        metavar="JSON",
    )
    n_blocks: int = option(4, "voltage blocks per pixel")
    block_scheme: str | None = option(
        None,
        "how voltages form blocks (reconstruct.BlockLayout; default: the one the program rule "
        "asks for, contiguous under 'sequence', spread under 'free')",
    )
    programs: str = programs_option()
    memory: str = memory_option()
    initial_stride: int = option(6, "stride of the initial grid of fully measured pixels")
    check_blocks: int = option(48, "held-back blocks that calibrate the accuracy estimate")
    estimate: str = option(
        "sampled", "accuracy estimate; 'sampled' verifies a stop with an audit round",
        choices=ESTIMATES,
    )
    audit_draws: int = option(96, "blocks drawn per audit round (estimate 'sampled')")
    estimate_every: int = option(10, "policy measurements between accuracy estimates")
    max_measurements: int | None = option(
        None, "stop after this many measurements in all (default: no limit)"
    )
    algorithm_clock: str = option(
        "wall", "charge the algorithm's measured wall time, or the cost model's (reproducible)",
        choices=("wall", "model"),
    )
    on_nan: str = option(
        "skip", "a NaN/inf reading: record the block as rejected and go on, or stop",
        choices=("skip", "stop"),
    )
    timeout: float = option(30.0, "seconds to wait for any one instrument call")
    pace: float = option(0.0, "real-time factor for a replay (0: as fast as possible)")
    reference: str | None = option(
        None, "data spec of the truth, to report the true R^2 beside the estimate (default: "
        "none; a replay's own data)", metavar="SPEC",
    )
    twin_grid: int | None = option(
        None, "side of a twin's square grid (twin data only; default: the twin's own)"
    )
    twin_times: int | None = option(
        None, "read-outs per pulse of a twin (twin data only; default: the twin's own)"
    )
    device: str = option("auto", "torch device of the reconstruction ('auto': CUDA if present)")
    progress: bool = option(True, "show a progress bar", flag=False)

    #: Settings a resume may change.
    RESUMABLE_OVERRIDES = (
        "instrument", "timeout", "pace", "progress", "session", "budget_hours", "max_measurements",
    )

    def __post_init__(self) -> None:
        if self.stop_r2 is not None and self.stop_r2 < 0:
            self.stop_r2 = None  # a negative target means none
        positive = {"budget_hours": self.budget_hours, "timeout": self.timeout}
        for name, value in positive.items():
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"--{_flag(name)} must be > 0, got {value}")
        if self.stop_r2 is not None and not self.stop_r2 <= 1:
            raise ValueError(f"--stop-r2 must be an R^2 <= 1, got {self.stop_r2}")
        if self.estimate not in ESTIMATES:
            raise ValueError(f"--estimate must be one of {ESTIMATES}, got {self.estimate!r}")
        if self.algorithm_clock not in ("wall", "model"):
            raise ValueError(
                f"--algorithm-clock must be 'wall' or 'model', got {self.algorithm_clock!r}"
            )
        if self.on_nan not in ("skip", "stop"):
            raise ValueError(f"--on-nan must be 'skip' or 'stop', got {self.on_nan!r}")
        at_least = {
            "estimate_every": 1, "check_blocks": 0, "audit_draws": 2, "n_blocks": 1,
            "initial_stride": 0, "max_measurements": 1, "twin_grid": 2, "twin_times": 1,
        }
        for name, low in at_least.items():
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"--{_flag(name)} must be >= {low}, got {value}")
        if not self.pace >= 0:
            raise ValueError(f"--pace must be >= 0, got {self.pace}")
        check_reconstructor_options(self.reconstructor, self.reconstructor_options)

    def stored(self) -> dict[str, Any]:
        """JSON-safe settings for the session file."""
        return dataclasses.asdict(self)

    def for_resume(self, stored: dict[str, Any], given: Collection[str] | None) -> ExperimentConfig:
        """The settings of a resumed session: the ``stored`` ones, with this config's values of
        the :attr:`RESUMABLE_OVERRIDES` (only those in ``given``, when given). ``given``: the
        settings named on the command line; one that may not change and differs from the stored
        value is a ValueError (one line), never silently ignored."""
        stored = dict(stored)
        if "target" in stored:  # sessions written before the option was named stop_r2
            stored["stop_r2"] = stored.pop("target")
        for name in sorted(given or ()):
            if name in self.RESUMABLE_OVERRIDES or name not in stored:
                continue
            if getattr(self, name) != stored[name]:
                raise ValueError(
                    f"--{_flag(name)} {getattr(self, name)!r} differs from the session's "
                    f"{stored[name]!r}; a resume keeps the session's settings (only "
                    f"{', '.join('--' + _flag(n) for n in self._resumable_options())} may "
                    f"change)"
                )
        for name in self.RESUMABLE_OVERRIDES:
            if given is None or name in given or name in ("session", "progress"):
                stored[name] = getattr(self, name)
        try:
            return ExperimentConfig(**stored)
        except TypeError as err:
            raise SessionError(
                f"the settings stored in {self.session} are not valid: {err}"
            ) from None

    @classmethod
    def _resumable_options(cls) -> list[str]:
        """The :attr:`RESUMABLE_OVERRIDES` that are command-line options."""
        flags = {f.name for f in dataclasses.fields(cls) if f.metadata.get("flag", True)}
        return [name for name in cls.RESUMABLE_OVERRIDES if name in flags]

    def twin_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.twin_grid:
            options["grid"] = (self.twin_grid, self.twin_grid)
        if self.twin_times:
            options["n_times"] = self.twin_times
        return options


def _flag(name: str) -> str:
    return name.replace("_", "-")


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
    """One session: the env built by :func:`make_env` over a :class:`SessionInstrument`, the
    policy, the session file, and the accuracy estimate and stop rule around them."""

    def __init__(
        self,
        config: ExperimentConfig,
        resume: bool,
        make_policy: Callable[[str], Any],
        given: Collection[str] | None = None,
    ) -> None:
        session: Session | None = None
        if resume:
            session = Session.open(config.session)
            try:
                if session.status.startswith("finished"):
                    reason = session.status.partition(": ")[2] or session.status
                    raise SessionError(
                        f"{config.session} is already finished ({reason}); its results are "
                        f"beside it; start a new session with another --session"
                    )
                config = config.for_resume(session.config, given)
            except BaseException:
                session.close()
                raise
        try:
            self._build(config, session, make_policy)
        except BaseException:
            if session is not None:
                session.close()
            raise

    def _build(
        self, config: ExperimentConfig, session: Session | None, make_policy: Callable[[str], Any]
    ) -> None:
        """Everything a session needs, built (and so checked) before a new session file is
        created: a setting that cannot work leaves no file behind."""
        self.config = config
        instrument, dataset = open_instrument(
            config.instrument, timeout=config.timeout, pace=config.pace,
            twin_options=config.twin_options(), memory=config.memory,
        )
        identity = instrument_identity(instrument, dataset, config.instrument)
        if session is not None:
            check_same_instrument(session.instrument, identity, config.session)
        self.reference = dataset
        if config.reference:
            from envs.data.sources import open_data

            self.reference = open_data(config.reference, **config.twin_options())
        self.policy = make_policy(config.agent)
        if self.policy.privileged:
            raise ValueError(f"policy {config.agent!r} reads the ground truth; it cannot run live")
        settings = self.policy.env_settings()  # the observation the policy was trained on
        self.instrument = SessionInstrument(instrument, config.on_nan)
        try:
            self.env = self._make_env(config, settings)
        except TypeError as err:  # a reconstructor option of the wrong type, named by it
            raise ValueError(f"--reconstructor-options: {err}") from None
        env = self.env
        self.check_pairs = choose_check_blocks(
            env.n_pixels, env.n_blocks, config.check_blocks, env.initial_pixels, config.seed
        )
        self.reference_blocks = None
        if self.reference is not None:
            self.reference_blocks = env.to_unit_blocks(self.reference.data, spare=float("nan"))
        if session is None:
            block_features = env.layout.block_size * int(np.prod(env.spectral_shape[1:]))
            session = Session.create(
                config.session, config.stored(), list(instrument.axes), block_features,
                instrument=identity, n_blocks=env.n_blocks,
            )
        elif (session.grid_shape, session.spectral_shape) != (env.grid_shape, env.spectral_shape):
            raise SessionError(
                f"the instrument's grid {env.grid_shape} x spectra {env.spectral_shape} differ "
                f"from the session's {session.grid_shape} x {session.spectral_shape}"
            )
        self.session = session
        self.instrument.attach(session, env.layout)

        n_features = env.layout.block_size * int(np.prod(env.spectral_shape[1:]))
        self.check_values = np.full((len(self.check_pairs), n_features), np.nan, np.float32)
        self.rejected = np.zeros((env.n_pixels, env.n_blocks), dtype=bool)
        self.r2_estimate = float("nan")
        self.r2_true = float("nan")
        self.trace: list[tuple[float, float, float]] = []  # (seconds, estimate, true)
        self.audit_ends: list[float] = []  # instrument seconds at the end of each audit round
        # Audit rounds (estimate "sampled"): the last closed round's audited / calibrated
        # error, a passed round, and the record where the last round ended.
        self._audit_correction: float | None = None
        self._audit_passed: AuditResult | None = None
        self._last_audit_end = 0
        self._n_before_policy = 0
        self._observation: dict[str, np.ndarray] = {}
        self._decision_ms = float("nan")

    # ------------------------------------------------------------------ measuring

    def _make_env(self, config: ExperimentConfig, settings: dict[str, Any]) -> Any:
        """The env over the session's instrument, with the observation ``settings`` of the
        policy (those it was trained on)."""
        return make_env(
            EnvConfig(
                data=self.instrument,
                reconstructor=config.reconstructor,
                reconstructor_kwargs=dict(config.reconstructor_options),
                device=config.device,
                n_blocks=config.n_blocks,
                block_scheme=config.block_scheme,
                programs=config.programs,
                cost={"algorithm_clock": config.algorithm_clock},
                budget_seconds=config.budget_hours * 3600.0,
                initial_stride=config.initial_stride,
                n_components=settings.get("n_components", 3),
                planes=list(settings.get("planes", ())),
            )
        )
    def _noted(self, kind: int, operation: Callable[[], Any]) -> Any:
        """Run one env operation that measures as ``kind``; note the algorithm seconds the env
        charged for it on its record (unless the record, served on a resume, has them)."""
        self.instrument.kind = kind
        before = 0.0 if kind == KIND_INITIAL else self.env.algorithm_seconds  # reset zeroes it
        result = operation()
        index = self.instrument.last_index
        if index >= 0 and not np.isfinite(self.session.notes(index)["algorithm_seconds"]):
            self.session.set_notes(index, algorithm_seconds=self.env.algorithm_seconds - before)
        return result

    def _held_back(self, pixel: int, block: int, kind: int) -> np.ndarray:
        """Measure a block the reconstruction does not get (yet): its values in slot layout,
        ``(F_b,)``."""
        values = self._noted(kind, lambda: self.env.measure_held_back(pixel, block))
        slots = np.asarray(self.env.layout.to_slots(block, values), np.float32).reshape(-1)
        # A rejected (NaN) block is missing from the estimate's scores too.
        self.rejected[pixel, block] = not np.isfinite(slots).all()
        return slots

    def _release(self, pairs: list[tuple[int, int]], way_only: bool = False) -> None:
        """Held-back blocks (or only the way to them) to the reconstruction; those that held
        NaN are rejected readings, missing from the estimate's scores."""
        for pixel, block in self.env.release_held_back(pairs, way_only=way_only):
            self.rejected[pixel, block] = True

    def _step(self, pixel: int, block: int) -> None:
        """One policy measurement through the env's own step."""
        action = self.env.encode_action(pixel, block)
        observation, _, _, _, info = self._noted(KIND_POLICY, lambda: self.env.step(action))
        self._observation = observation
        self.rejected[pixel, block] = info["nan_block"]

    # ------------------------------------------------------------------ phases
    def start(self) -> None:
        """The initial design (the env's reset, one batch update), then the check blocks
        (held back for good); on a resume both are served from the records."""
        self._noted(KIND_INITIAL, lambda: self.env.reset(seed=self.config.seed))
        pixels = self.env.initial_pixels
        self.rejected[pixels] = ~self.env.reconstructor.measured.cpu().numpy()[pixels]
        for i, (pixel, block) in enumerate(self.check_pairs):
            self.check_values[i] = self._held_back(int(pixel), int(block), KIND_CHECK)
        # The blocks measured on the way to a check block (rule "sequence") go to the
        # reconstruction at once: held back for good, they would be out of every error the
        # estimates sum (neither check nor audit blocks), and the check pixels would be ones the
        # reconstruction knows nothing of, unlike the pixels it is judged on.
        self._release([tuple(pair) for pair in self.check_pairs], way_only=True)
        self._n_before_policy = self.env.n_measurements
        self._observation = self.env.observe()  # the check blocks are in its masks

    def update_estimate(self) -> None:
        """The accuracy estimate (and the true R^2 when a reference is known) on the latest
        record: read back when the record holds it (a resume), else computed and stored."""
        stored = self.session.notes(self.instrument.last_index)
        if np.isfinite(stored["r2_estimate"]):
            self.r2_estimate, self.r2_true = stored["r2_estimate"], stored["r2_true"]
        else:
            recon = self.env.reconstructor
            seen = recon.measured.cpu().numpy() | self.rejected
            arguments = (
                recon.estimate_blocks(), recon.uncertainty(), seen, self.check_pairs,
                self.check_values,
            )
            if self.config.estimate == "sampled" and self._audit_correction is not None:
                # Between audit rounds: the calibrated estimate, corrected as the last round found.
                self.r2_estimate = projected_r2(*arguments, self._audit_correction)
            else:
                self.r2_estimate = estimate_r2(self.config.estimate, *arguments)
            self._store_estimate()
        self.trace.append((self.env.instrument_seconds, self.r2_estimate, self.r2_true))

    def _store_estimate(self) -> None:
        if self.reference_blocks is not None:
            self.r2_true = float(self.env.reconstructor.r2(self.reference_blocks))
        self.session.set_estimate(self.r2_estimate, self.r2_true, self.instrument.last_index)

    # ------------------------------------------------------------------ audit rounds
    def _plan_audit(self) -> AuditPlan:
        """The audit round starting now: drawn from the blocks not measured yet, with the
        reconstructor as it stands (the same on a resume), seeded by the seed and the record
        it starts at."""
        recon = self.env.reconstructor
        start = self.instrument.last_index + 1
        weights = error_weights(recon.estimate_blocks(), recon.uncertainty(), recon.measured)
        return plan_audit(
            weights, ~self.env.measured, self.config.audit_draws, [self.config.seed, start, 1]
        )

    def _audit(self) -> None:
        """An audit round: measure its blocks held back, score the estimate with them; if the
        round's lower bound misses the target, its blocks go to the reconstruction (in raster
        order) and the round's audited / calibrated error corrects the estimate until the next
        round."""
        plan = self._plan_audit()
        values = np.stack([
            self._held_back(int(pixel), int(block), KIND_AUDIT) for pixel, block in plan.pairs
        ])
        self._last_audit_end = self.instrument.last_index + 1
        recon = self.env.reconstructor
        estimate = recon.estimate_blocks()
        result = audit_r2(estimate, plan, values, self.check_pairs, self.check_values)
        stored = self.session.notes(self.instrument.last_index)
        if np.isfinite(stored["r2_estimate"]):  # a resume: the round's estimate as it was
            self.r2_estimate, self.r2_true = stored["r2_estimate"], stored["r2_true"]
        else:
            self.r2_estimate = result.r2
            self._store_estimate()
        self.trace.append((self.env.instrument_seconds, self.r2_estimate, self.r2_true))
        self.audit_ends.append(self.env.instrument_seconds)
        pairs = [(int(p), int(b)) for p, b in plan.pairs]
        if self.config.stop_r2 is not None and result.lower >= self.config.stop_r2:
            self._audit_passed = result
            # The way to the audited blocks (rule "sequence") was held back until they were
            # scored, so that a drawn block was judged on what the reconstruction knew, not on
            # its pixel's earlier blocks measured because it was drawn.
            self._release(pairs, way_only=True)
        else:
            calibrated = calibrated_error(
                estimate, recon.uncertainty(), self.check_pairs, self.check_values,
                recon.measured.cpu().numpy() | self.rejected,
            )
            self._audit_correction = result.error / calibrated if calibrated > 0 else 1.0
            self._release(pairs)
        self._observation = self.env.observe()  # the next decision sees the round's blocks

    def _audited_stop(self) -> str | None:
        """With the estimate "sampled", a target reached is checked by an audit round (at most
        one per ``audit_draws // 2`` records, and none once another stop rule holds)."""
        env, config = self.env, self.config
        limit = config.max_measurements
        n_records = self.instrument.last_index + 1
        if self._audit_passed is None and not (
            self.r2_estimate < config.stop_r2
            or n_records - self._last_audit_end < config.audit_draws // 2
            or env.seconds_used >= env.budget_seconds
            or env.exhausted
            or (limit is not None and n_records >= limit)
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
        if env.exhausted:
            return "every block measured"
        limit = config.max_measurements
        if limit is not None and self.instrument.last_index + 1 >= limit:
            return f"measurement limit {config.max_measurements} reached"
        return None

    def _decide(self) -> tuple[int, int]:
        """The policy's (pixel, block) on the env's observation."""
        env = self.env
        start = time.perf_counter()
        # Reseeded from the record count, so a resumed session decides as an uninterrupted one.
        self.policy.rng = np.random.default_rng([self.config.seed, self.instrument.last_index + 1])
        action = self.policy.act(self._observation, env.action_masks())
        pixel, block, _ = env.decode_action(action)
        self._decision_ms = 1e3 * (time.perf_counter() - start)
        return pixel, block

    def policy_step(self) -> None:
        """The policy decides on the env's observation; the env steps."""
        self._step(*self._decide())

    def replay_step(self) -> None:
        """The next recorded choice, taken again through the same env operation (a resume):
        a policy record is stepped, the first record of an audit round replays the round.

        The policy decides again too, so that a policy with a memory of the episode rebuilds
        it; with the model clock its choice must be the record's (a seeded session decides
        the same), with the wall clock it may differ (its observation holds the budget used)
        and the record's is taken."""
        pixel, block, kind = self.instrument.next_record
        if kind == KIND_POLICY:
            chosen = self._decide()
            if chosen != (pixel, block) and self.config.algorithm_clock == "model":
                raise RecordMismatch(
                    f"record {self.instrument.last_index + 1} of {self.session.path} holds "
                    f"pixel {pixel} block {block} but the policy chooses pixel {chosen[0]} block "
                    f"{chosen[1]} there: the records do not follow from the session's settings"
                )
            self._step(pixel, block)
        elif kind == KIND_AUDIT:
            self._audit()
        else:
            raise RecordMismatch(
                f"record {self.instrument.last_index + 1} of {self.session.path} is a "
                f"{KIND_NAMES[kind]} block after the initial design and the check blocks"
            )

    def run(self) -> str:
        """Measure until a stop rule fires; the reason."""
        from tqdm import tqdm

        self.start()
        bar = tqdm(
            total=self.env.measured.size, initial=self.instrument.last_index + 1, unit="block",
            disable=not self.config.progress, dynamic_ncols=True, file=sys.stderr,
        )
        every = self.config.estimate_every
        try:
            # The estimate is due when the number of policy records is a multiple of
            # ``estimate_every``, counted over the whole session, so that a resumed session
            # estimates (and stops) exactly where an uninterrupted one would.
            self.update_estimate()
            self.policy.reset(self.env, self.config.seed)
            while self.instrument.replaying:
                self.replay_step()
                if self.n_policy_records % every == 0 and not self._audit_just_closed():
                    self.update_estimate()
            while (reason := self.stop_reason()) is None:
                self.policy_step()
                if self.n_policy_records % every == 0:
                    self.update_estimate()
                bar.update(1)
                bar.set_postfix_str(self._progress_text(), refresh=False)
            if self.n_policy_records % every and not self._audit_just_closed():
                self.update_estimate()
                reason = self.stop_reason() or reason
        finally:
            bar.close()
        return reason

    def _audit_just_closed(self) -> bool:
        return self._last_audit_end == self.instrument.last_index + 1

    @property
    def n_policy_records(self) -> int:
        """Blocks the policy (and audit rounds) chose so far in this session (a resume counts
        the earlier ones)."""
        return self.instrument.last_index + 1 - self._n_before_policy

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
            "full_raster_hours": self.env.full_raster_seconds / 3600,
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
        """Blocks taken per pixel, the reconstruction at the middle voltage and time, its
        predictive variance there, and the estimated (and, for a replay, true) R^2 against
        instrument hours with the audit rounds marked."""
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        env, axes_info = self.env, self.instrument.axes
        middle = tuple(s // 2 for s in estimate.shape[2:])
        block = int(env.layout.block_of_voltage[middle[0]])
        where = ", ".join(
            f"{axis.name} = {float(axis.values[i]):.3g} {axis.unit}".rstrip()
            for axis, i in zip(axes_info[2:], middle, strict=True)
        )
        unit = getattr(self.reference, "unit", None) or getattr(self.instrument.inner, "unit", "")
        unit = unit or "a.u."
        fig, axes = plt.subplots(1, 4, figsize=(18, 4.4))
        panels = [
            (env.measured.sum(1).reshape(env.grid_shape), "blocks taken per pixel", "blocks"),
            (estimate[(slice(None), slice(None), *middle)], f"reconstruction at\n{where}", unit),
            (uncertainty[block], f"predictive variance of block {block}\n(mean over its entries)",
             f"({unit})^2"),
        ]
        for ax, (image, title, label) in zip(axes, panels, strict=False):
            shown = ax.imshow(image, cmap="viridis", origin="lower")
            ax.set_title(title, fontsize=10)
            ax.set_xlabel(f"{axes_info[1].name} (pixel)")
            ax.set_ylabel(f"{axes_info[0].name} (pixel)")
            bar = fig.colorbar(shown, ax=ax, shrink=0.8, label=label)
            if label == "blocks":
                bar.locator = matplotlib.ticker.MaxNLocator(integer=True)
                bar.update_ticks()
        ax = axes[3]
        if self.trace:
            seconds, est, true = (np.asarray(v) for v in zip(*self.trace, strict=True))
            ax.plot(seconds / 3600, est, marker=".", label=f"estimated ({self.config.estimate})")
            if np.isfinite(true).any():
                ax.plot(seconds / 3600, true, marker=".", label="true (replay only)")
            if self.config.stop_r2 is not None:
                ax.axhline(self.config.stop_r2, color="grey", ls="--", label="target")
            for i, end in enumerate(self.audit_ends):
                ax.axvline(
                    end / 3600, color="tab:red", lw=0.8, ls=":",
                    label="audit round (the audited estimate; a failed\nround's blocks then "
                    "join the reconstruction)" if i == 0 else None,
                )
            finite = np.concatenate([est, true])
            finite = finite[np.isfinite(finite)]
            ax.set_ylim(max(float(finite.min()), -0.5) if finite.size else -0.5, 1.0)
            ax.legend(loc="best", fontsize=7)
        ax.set_xlabel("instrument hours")
        ax.set_ylabel("R^2 of the reconstruction")
        ax.set_title("accuracy during the session", fontsize=10)
        fig.suptitle(
            f"session {self.session.path.name}: agent {self.config.agent}, target R^2 "
            f"{'none' if self.config.stop_r2 is None else self.config.stop_r2}"
        )
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def run_experiment(
    config: ExperimentConfig,
    resume: bool = False,
    *,
    make_policy: Callable[[str], Any],
    given: Collection[str] | None = None,
) -> ExperimentResult:
    """Run (or resume) a session to its end and write its outputs.

    ``make_policy`` builds the policy from the session's agent spec (``config.agent``, or the
    stored one on resume): :func:`agents.catalog.make_policy` for the registered policies.
    ``given``: on a resume, the settings the user named (a command line's options); those
    that may not change must equal the stored ones (:meth:`ExperimentConfig.for_resume`).
    Everything is built before a new session file is created, so a bad setting leaves none.

    Raises
    ------
    ExperimentStopped
        When the instrument, the disk or a Ctrl-C stops the session; the message says why and
        the session file resumes with ``resume=True``.
    SessionError, ValueError
        For a session that cannot start (existing or damaged file, bad settings).
    """
    experiment = _Experiment(config, resume, make_policy, given)
    try:
        reason = experiment.run()
        return experiment.write_outputs(reason)
    except RecordMismatch:
        raise  # the file stays as it was: resuming it again would meet the same record
    except (InstrumentError, SessionError, KeyboardInterrupt) as err:
        what = "interrupted (Ctrl-C)" if isinstance(err, KeyboardInterrupt) else str(err)
        experiment.session.set_status(f"stopped: {what}")
        n = experiment.session.n_records
        raise ExperimentStopped(
            f"session stopped: {what}\n{n} measurements are saved in {experiment.session.path}; "
            f"continue with: python experiment.py run --resume --session "
            f"{experiment.session.path} --instrument {experiment.config.instrument}"
        ) from err
    except BaseException as err:
        # Never leave a session "running": say what ended it.
        experiment.session.set_status(f"stopped: {type(err).__name__}: {err}")
        raise
    finally:
        experiment.session.close()
