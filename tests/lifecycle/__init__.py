"""Daemon and lifecycle tests (a package, so file names may repeat those of other test folders)."""
