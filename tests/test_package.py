"""The package namespace: lazy public names, no torch at ``import mmdguidance``."""

import subprocess
import sys
from pathlib import Path

import pytest

import mmdguidance

NEW = ("Discrepancy", "Chamfer", "SlicedWasserstein", "KernelEntropyDiversity", "RFFMMD", "NystromMMD", "span_bandwidths")


def test_import_does_not_import_torch():
    code = ("import sys, mmdguidance\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "print(len(mmdguidance.__all__))\n")
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == len(mmdguidance.__all__)


@pytest.mark.parametrize("name", NEW)
def test_new_public_names_resolve_to_their_definitions(name):
    import importlib

    assert name in mmdguidance.__all__ and name in dir(mmdguidance)
    obj = getattr(mmdguidance, name)
    home = importlib.import_module(obj.__module__)
    assert getattr(home, name) is obj
    assert obj.__module__.startswith("mmdguidance.")


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mmdguidance.nope  # noqa: B018
