"""Test-session settings.

Hypothesis explores new random examples on every local run; under CI (``CI`` set, as ``.ci/run`` is
run) it is derandomized, so a green CI run is reproducible and a failure found locally is not hidden
by chance there (local runs keep searching).
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
