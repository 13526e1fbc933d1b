"""Instruments: what measures a (pixel, voltages) request, and what it costs in seconds.

- :mod:`envs.instruments.cost`: the cost model (pulses, reads, tip travel, settling, the
  algorithm's own time).
- :mod:`envs.instruments.instrument`: the :class:`Instrument` protocol, the replay of a recorded
  Dataset and a paced wrapper.
- :mod:`envs.instruments.remote`: the network protocol and the client instrument.
- :mod:`envs.instruments.server`: its server (command line: ``serve.py``).

May import :mod:`envs.data`; never the env or the live loop.
"""
