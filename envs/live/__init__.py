"""The live loop: a policy drives an instrument through the env, and nothing is lost.

- :mod:`envs.live.loop`: the session runner (:func:`run_experiment`), its stop rules and
  outputs.
- :mod:`envs.live.session`: the append-only session file that a resume replays.
- :mod:`envs.live.accuracy_estimate`: the accuracy estimate that decides when to stop.

May import every other room of :mod:`envs`; nothing in :mod:`envs` imports it.
"""
