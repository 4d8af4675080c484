"""Gives a whole process (a daemon under test) the fake pynvml, with no code of its own.

A test that wants a daemon to see N GPUs starts it with this folder first on PYTHONPATH and
``STUDIOCTL_TEST_FAKE_GPUS=N``: Python imports ``sitecustomize`` at start-up, and this one puts
``fakes.fake_pynvml.gpus(N)`` in ``sys.modules["pynvml"]``, so ``studioctl.gpu`` (the only
importer of pynvml) reads the fake, exactly as tests/test_gpu.py's in-process fakes do.
Without the variable it does nothing. (See tests/lifecycle/test_gpu_placement.py.)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_count = os.environ.get("STUDIOCTL_TEST_FAKE_GPUS")
if _count is not None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))  # tests/
    from fakes import fake_pynvml

    sys.modules["pynvml"] = fake_pynvml.gpus(int(_count))
