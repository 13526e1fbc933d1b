"""What a policy may read of the env's model state, beside the observation: one read-only view.

A policy that scores actions (the heuristics, the oracles, the batch-decision env) needs more
than the observation's planes: the posterior variance each action removes, what each action
costs in seconds, which units are measured. A real instrument's operator has all of that at
hand, and nothing more: the grid and block layout, the read windows, what is measured, the
reconstruction's estimate and uncertainty, the price of each action, the action encoding and
its mask, the budget. :class:`AcquisitionView` is exactly that, built once by the env
(``env.unwrapped.view``) and kept by every policy at :meth:`agents.policy.Policy.reset`
(``policy.view``); policies read the env through it and nothing else.

- **Read-only.** No member can be assigned; arrays of the env's state (``measured``,
  ``segments_read``, ``action_masks()``, ...) come back as read-only arrays that the env does
  not share; the reconstruction is reached through :class:`ModelView`, which offers the
  reconstructor's queries and no way to add or reset, and returns tensors the model does not
  hold (copies), except the estimate itself, the one large array, which comes back as a
  read-only NumPy array without a copy (copying it at every decision would cost an oracle more
  than its own arithmetic, and decision time is charged as instrument time). Computed results
  (prices, gains) are fresh arrays the caller owns.
- **No ground truth.** The replayed data and its truth are not on the view. A policy that
  declares ``privileged = True`` (an oracle, an upper reference only) gets a
  :class:`PrivilegedView` from :meth:`AcquisitionView.privileged`, which adds
  :meth:`PrivilegedView.reference_blocks` and :attr:`PrivilegedView.dataset`; any other
  requester is refused with ``PermissionError``. Studies and tests that are not policies may
  build ``PrivilegedView(env)`` themselves, by that name.

The view only reads: it holds the env and asks it each time, so it always shows the current
state (also after ``reset``). It never imports :mod:`agents`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:  # the env itself is not imported: it imports this module
    from envs.acquisition.observation import ObservationSpec
    from envs.acquisition.windows import ReadWindows
    from envs.data.dataset import Dataset
    from envs.instruments.cost import CostModel
    from reconstruct.base import BlockLayout

#: Optional reconstructor queries a :class:`ModelView` passes on where the model has them.
OPTIONAL_QUERIES = ("variance_reduction", "error_given_measured")


def _frozen(array: np.ndarray) -> np.ndarray:
    """``array`` marked read-only (callers pass arrays the env does not keep)."""
    array = np.asarray(array)
    array.flags.writeable = False
    return array


def _copy(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor that shares no memory with the model's own (writing into it changes nothing)."""
    return tensor.detach().clone()


def _read_only(tensor: torch.Tensor) -> np.ndarray:
    """A tensor as a read-only NumPy array, without a copy on the CPU (writing into it
    raises)."""
    return _frozen(tensor.detach().cpu().numpy())


class _ReadOnly:
    """Holds the env; refuses every assignment and deletion of a member."""

    __slots__ = ("_env",)

    def __init__(self, env: Any) -> None:
        """``env``: the :class:`~envs.acquisition.env.AcquisitionEnv` to read."""
        object.__setattr__(self, "_env", env)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only: cannot delete {name!r}")

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:
        # Pickled (and deep-copied) with its env, e.g. for subprocess vector envs.
        return type(self), (self._env,)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self._env).__name__})"


class ModelView(_ReadOnly):
    """Read-only queries of the env's reconstructor (``view.model``).

    The same names and return types as :class:`reconstruct.Reconstructor`'s queries, so code
    written for a reconstructor's queries (:class:`envs.acquisition.surprise.SurpriseTracker`,
    :func:`envs.acquisition.energy.pixel_energy`) takes a ``ModelView`` unchanged; but nothing
    that changes the model (``add``, ``reset``), and every tensor returned is a copy. The one
    exception is :meth:`estimate_blocks`, the large array: a read-only NumPy array, not
    copied. Blocks here are the reconstructor's blocks: with read windows, *units* (``block *
    n_segments + segment``).
    """

    __slots__ = ()

    @property
    def name(self) -> str:
        """The reconstructor's registry name, e.g. ``"gp"``."""
        return str(self._env.reconstructor.name)

    @property
    def measured(self) -> torch.Tensor:
        """``(P, n_units)`` bool: units the reconstructor holds (a lost, NaN block: not)."""
        return _copy(self._env.reconstructor.measured)

    @property
    def n_measured(self) -> int:
        """Units the reconstructor holds."""
        return int(self._env.reconstructor.n_measured)

    def uncertainty(self) -> torch.Tensor:
        """``(P, n_units)`` predictive variance per feature, 0 where measured."""
        return _copy(self._env.reconstructor.uncertainty())

    def estimate_blocks(self) -> np.ndarray:
        """``(P, n_units, F_u)`` the estimate in the reconstructor's block layout: read-only
        NumPy, in the model's dtype, not copied on the CPU."""
        return _read_only(self._env.reconstructor.estimate_blocks())

    def predict_block(self, pixel: int, block: int) -> torch.Tensor:
        """``(F_u,)`` the estimate of one unit (its measured values where measured)."""
        return _copy(self._env.reconstructor.predict_block(pixel, block))

    def pixel_energy(self) -> torch.Tensor:
        """``(P,)`` float64 sum of squares of each pixel's estimated spectrum."""
        return _copy(self._env.reconstructor.pixel_energy())

    def supports(self, query: str) -> bool:
        """Whether the reconstructor answers the optional ``query`` (one of
        :data:`OPTIONAL_QUERIES`)."""
        if query not in OPTIONAL_QUERIES:
            raise ValueError(f"unknown optional query {query!r}; known: {OPTIONAL_QUERIES}")
        return hasattr(self._env.reconstructor, query)

    def variance_reduction(self, pixels: np.ndarray | None = None) -> torch.Tensor:
        """``(m, n_units)`` variance that measuring each unit at each of ``pixels`` removes
        (models that :meth:`supports` it: the GPs)."""
        return _copy(self._optional("variance_reduction")(pixels))

    def error_given_measured(self, measured: torch.Tensor) -> torch.Tensor:
        """``(P, n_units)`` per-feature error of each unit predicted from a pixel's measured
        units ``measured`` (models that :meth:`supports` it: the low-rank ones)."""
        return _copy(self._optional("error_given_measured")(measured))

    def _optional(self, query: str) -> Any:
        if not self.supports(query):
            raise AttributeError(
                f"the {type(self._env.reconstructor).__name__} reconstructor has no {query}; "
                f"ask view.model.supports({query!r}) first"
            )
        return getattr(self._env.reconstructor, query)


class AcquisitionView(_ReadOnly):
    """The read-only view of an :class:`~envs.acquisition.env.AcquisitionEnv`'s model state
    that policies read (see the module docstring): ``env.unwrapped.view``.

    Members
    -------
    Layout (fixed for the env's life)
        ``grid_shape``, ``n_pixels``, ``n_blocks``, ``n_windows``, ``n_segments``,
        ``n_units``, ``n_actions``, ``layout``, ``unit_layout``, ``read_windows``,
        ``observation_spec``, ``cost_model`` (frozen dataclasses), ``programs`` (the program
        rule, :mod:`envs.acquisition.programs`), :meth:`to_unit_blocks`.
    Action encoding
        :meth:`encode_action`, :meth:`decode_action`, :meth:`action_masks`,
        :meth:`new_units`.
    State (read-only arrays)
        ``measured``, ``unit_measured``, ``segments_read``, ``tip_pixel``,
        ``n_measurements``.
    Time
        ``seconds_used``, ``budget_seconds``, ``full_raster_seconds``, :meth:`block_seconds`,
        :meth:`action_seconds`.
    Reconstruction
        ``model`` (:class:`ModelView`), :meth:`estimate`, :meth:`window_gain`,
        :meth:`window_values`.
    Ground truth
        none; :meth:`privileged` gives a privileged policy its :class:`PrivilegedView`.
    """

    __slots__ = ()

    # ------------------------------------------------------------- layout
    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(X, Y)``; ``pixel = row * Y + col``."""
        return tuple(self._env.grid_shape)  # type: ignore[return-value]

    @property
    def n_pixels(self) -> int:
        return int(self._env.n_pixels)

    @property
    def n_blocks(self) -> int:
        """Voltage blocks per pixel."""
        return int(self._env.n_blocks)

    @property
    def programs(self) -> str:
        """The program rule: ``"sequence"`` (each pixel's blocks in pulse order) or
        ``"free"`` (:mod:`envs.acquisition.programs`)."""
        return str(self._env.programs)

    @property
    def n_windows(self) -> int:
        """Read windows per block (1: whole curves only)."""
        return int(self._env.n_windows)

    @property
    def n_segments(self) -> int:
        """Curve segments per block (1 without read windows)."""
        return int(self._env.n_segments)

    @property
    def n_units(self) -> int:
        """The reconstructor's blocks: ``n_blocks * n_segments``."""
        return int(self._env.n_units)

    @property
    def n_actions(self) -> int:
        """``n_pixels * n_blocks * n_windows``."""
        return int(self._env.action_space.n)

    @property
    def layout(self) -> BlockLayout:
        """The voltage blocks."""
        return self._env.layout

    @property
    def unit_layout(self) -> BlockLayout:
        """The reconstructor's layout: ``layout``, or its blocks cut into curve segments."""
        return self._env.unit_layout

    @property
    def read_windows(self) -> ReadWindows:
        return self._env.read_windows

    @property
    def observation_spec(self) -> ObservationSpec:
        """Names and order of the observation's planes and scalars."""
        return self._env.observation_spec

    @property
    def cost_model(self) -> CostModel:
        """The instrument's public prices."""
        return self._env.cost_model

    def to_unit_blocks(
        self, tensor: np.ndarray | torch.Tensor, spare: float | None = None
    ) -> np.ndarray | torch.Tensor:
        """A tensor of the data's shape ``(X, Y, V, *rest)`` in the reconstructor's block
        layout ``(P, n_units, F_u)`` (a new tensor)."""
        return self._env.to_unit_blocks(tensor, spare)

    # ------------------------------------------------------------- action encoding
    def encode_action(self, pixel: int, block: int, window: int | None = None) -> int:
        """Flat action ``(pixel * n_blocks + block) * n_windows + window`` (``window``
        defaults to the last, the whole curve)."""
        return self._env.encode_action(pixel, block, window)

    def decode_action(self, action: int) -> tuple[int, int, int]:
        """``(pixel, block, window)`` of a flat action."""
        return self._env.decode_action(action)

    def action_masks(self) -> np.ndarray:
        """Read-only bool ``(n_actions,)``: True for actions that add reads."""
        return _frozen(self._env.action_masks())

    def new_units(self, pixel: int, block: int, window: int) -> np.ndarray:
        """The reconstructor's units an action would add (empty for a repeat)."""
        return self._env.new_units(pixel, block, window)

    # ------------------------------------------------------------- state
    @property
    def measured(self) -> np.ndarray:
        """Read-only ``(P, n_blocks)`` bool: blocks read in full (NaN blocks included)."""
        return _frozen(self._env.measured)

    @property
    def unit_measured(self) -> np.ndarray:
        """Read-only ``(P, n_units)`` bool: units read (``block * n_segments + segment``)."""
        return _frozen(self._env.unit_measured)

    @property
    def segments_read(self) -> np.ndarray:
        """Read-only ``(P, n_blocks)`` int: curve segments read of each block."""
        return _frozen(self._env.segments_read.copy())

    @property
    def tip_pixel(self) -> int:
        """Flat index of the pixel under the tip."""
        return int(self._env.tip_pixel)

    @property
    def n_measurements(self) -> int:
        """Blocks measured so far (initial design and NaN blocks included)."""
        return int(self._env.n_measurements)

    # ------------------------------------------------------------- time
    @property
    def seconds_used(self) -> float:
        """Instrument plus algorithm seconds charged so far in this episode."""
        return float(self._env.seconds_used)

    @property
    def budget_seconds(self) -> float:
        return float(self._env.budget_seconds)

    @property
    def full_raster_seconds(self) -> float:
        return float(self._env.full_raster_seconds)

    def block_seconds(
        self, pixels: np.ndarray, block: int, window: int | None = None
    ) -> np.ndarray:
        """Seconds a measurement of ``block`` with read window ``window`` (default: the whole
        curve) at each of ``pixels`` would be charged now (travel from the tip included)."""
        return self._env.block_seconds(pixels, block, window)

    def action_seconds(self) -> np.ndarray:
        """Seconds of every action from the current tip position, in action order."""
        return self._env.action_seconds()

    # ------------------------------------------------------------- reconstruction
    @property
    def model(self) -> ModelView:
        """Read-only queries of the reconstruction (estimate, uncertainty, ...)."""
        return ModelView(self._env)

    def estimate(self) -> np.ndarray:
        """The reconstruction in the data's shape ``(X, Y, V, *rest)`` (read windows unfolded),
        read-only NumPy."""
        return _read_only(self._env.estimate())

    def window_gain(self, per_unit: np.ndarray | torch.Tensor) -> np.ndarray:
        """What each action adds of a per-unit quantity ``(P, n_units)``, in action order
        (:meth:`envs.acquisition.env.AcquisitionEnv.window_gain`)."""
        return self._env.window_gain(per_unit)

    def window_values(self, uncertainty: np.ndarray) -> np.ndarray:
        """Posterior variance each action removes, per feature of a whole block, flat in action
        order: the variance of the reads it takes (:meth:`window_gain`) and, for a window that
        stops short of the end of the curve, the variance it removes from the rest of those
        curves, where the reconstructor can say how well it predicts them
        (``error_given_measured``, the low-rank models). Without the second part a short window
        is credited with its own few reads only, although it pins the pixel's coefficients, and
        through them the rest of its curves; with one read window the two parts are the first
        alone."""
        uncertainty = np.asarray(uncertainty, dtype=np.float64)
        values = self.window_gain(uncertainty)
        model = self.model
        if self.n_windows == 1 or not model.supports("error_given_measured"):
            return values
        n_pixels, n_segments, n_blocks = self.n_pixels, self.n_segments, self.n_blocks
        values = values.reshape(n_pixels, n_blocks, self.n_windows)
        valid = self.action_masks().reshape(values.shape)
        have = self.unit_measured
        for window, reads_to in enumerate(self.read_windows.segments[:-1]):
            for block in range(n_blocks):
                first = block * n_segments
                after = have.copy()
                after[:, first : first + reads_to] = True
                error = model.error_given_measured(torch.from_numpy(after))
                error = error.detach().cpu().numpy()
                rest = slice(first + reads_to, first + n_segments)
                removed = uncertainty[:, rest] - np.minimum(error[:, rest], uncertainty[:, rest])
                removed = np.where(have[:, rest], 0.0, removed).sum(1) / n_segments
                values[:, block, window] += np.where(valid[:, block, window], removed, 0.0)
        return values.reshape(-1)

    # ------------------------------------------------------------- privileged
    def privileged(self, requester: Any) -> PrivilegedView:
        """The view with the ground truth, for a ``requester`` (a policy) that declares
        ``privileged = True``; ``PermissionError`` for any other."""
        if getattr(requester, "privileged", False) is not True:
            name = getattr(requester, "name", type(requester).__name__)
            raise PermissionError(
                f"{name!r} is not privileged: the ground truth is for policies that declare "
                "privileged = True (upper references, labelled as such)"
            )
        return PrivilegedView(self._env)


class PrivilegedView(AcquisitionView):
    """:class:`AcquisitionView` plus the ground truth of a replayed episode: for privileged
    policies (oracles, upper references that no instrument could run) and for studies.

    A policy gets it from :meth:`AcquisitionView.privileged`; building one directly,
    ``PrivilegedView(env)``, is for code that is not a policy.
    """

    __slots__ = ()

    def reference_blocks(self) -> np.ndarray | None:
        """Read-only ``(P, n_units, F_u)``: the replayed data in the reconstructor's block
        layout (spare slots NaN), what the env's R^2 is scored against; None on a live
        instrument."""
        reference = self._env.reference_blocks
        if reference is None:
            return None
        return _frozen(reference.detach().cpu().numpy())

    @property
    def dataset(self) -> Dataset | None:
        """The replayed :class:`envs.Dataset` (data, truth, provenance); None on a live
        instrument. Privileged policies read it, never change it."""
        return self._env.dataset


def as_view(env_or_view: Any) -> AcquisitionView:
    """The view of an acquisition env (or of a wrapper of one); a view is returned as it is."""
    if isinstance(env_or_view, AcquisitionView):
        return env_or_view
    return env_or_view.unwrapped.view


def window_values(env_or_view: Any, uncertainty: np.ndarray) -> np.ndarray:
    """:meth:`AcquisitionView.window_values` of an env's view (or of a view)."""
    return as_view(env_or_view).window_values(uncertainty)
