"""Instruments that misbehave on purpose, shared by the network and experiment tests."""

import threading


class HangingInstrument:
    """Wraps an instrument and stops answering after ``answers`` measurements, as a frozen
    control program would: each later ``measure`` blocks until :attr:`release` is set or
    ``hang_seconds`` pass, then answers."""

    def __init__(self, inner, answers: int, hang_seconds: float = 10.0) -> None:
        self.inner, self.answers, self.hang_seconds = inner, answers, hang_seconds
        self.release = threading.Event()
        self.grid_shape, self.spectral_shape = inner.grid_shape, inner.spectral_shape
        self.axes = inner.axes

    @property
    def tip_pixel(self) -> int:
        return self.inner.tip_pixel

    def go_to(self, pixel):
        return self.inner.go_to(pixel)

    def measure(self, pixel, voltages, reads=None):
        if self.answers <= 0:
            self.release.wait(self.hang_seconds)
        self.answers -= 1
        return self.inner.measure(pixel, voltages, reads)
