"""Acquisition policies behind one interface."""
