"""studioctl: run LLM inference engines on your own GPU hosts.

The package is a library first; the ``studioctl`` command is a thin layer over it.
"""

__version__ = "0.1.0"
#: The control API's version. The CLI refuses to talk to a daemon with another one.
API_VERSION = 1

__all__ = ["API_VERSION", "__version__"]
