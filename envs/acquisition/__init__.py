"""The Gymnasium environment: one action measures one (pixel, block, read window).

- :mod:`envs.acquisition.env`: :class:`AcquisitionEnv` itself (step, reset, reward, render).
- :mod:`envs.acquisition.factory`: :class:`EnvConfig` and :func:`make_env`, the one place an
  env is built.
- :mod:`envs.acquisition.view`: the read-only view of the model state that policies use.
- :mod:`envs.acquisition.observation`, :mod:`~envs.acquisition.energy`,
  :mod:`~envs.acquisition.surprise`: the observation's planes.
- :mod:`envs.acquisition.windows`: read windows (how many reads a measurement takes).
- :mod:`envs.acquisition.wrappers`, :mod:`envs.acquisition.batch`: wrappers for other RL
  libraries and the batch-decision env built on the one-measurement env.

May import :mod:`envs.data` and :mod:`envs.instruments`; never the live loop.
"""
