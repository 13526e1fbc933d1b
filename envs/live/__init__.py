"""The live loop: a policy drives an instrument through the env, and nothing is lost.

- :mod:`envs.live.loop`: the session runner (:func:`run_experiment`), its stop rules and
  outputs.
- :mod:`envs.live.recording`: the instrument as the loop's env sees it, recording every
  measurement (and serving the recorded ones on a resume).
- :mod:`envs.live.session`: the append-only, self-checking session file that a resume replays.
- :mod:`envs.live.accuracy_estimate`: the accuracy estimate that decides when to stop.

May import every other room of :mod:`envs`; nothing in :mod:`envs` imports it.
"""
