"""Fakes at the process boundary (e.g. a fake ``pynvml`` module) for tests."""
