"""optc.runtime waits for a GPU's kernels before a timing or a result is read (TVM 0.27's Device names its
kind with dlpack_device_type(); it has no device_type attribute)."""

from __future__ import annotations

import tvm
from optc.runtime import Module


class _Probe:
    def __init__(self, device):
        self._device = device


def test_sync_waits_on_a_gpu_device_and_not_on_the_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(tvm.runtime.Device, "sync", lambda self: calls.append(self.dlpack_device_type()))
    assert Module._sync(_Probe(tvm.cpu(0)), "r") == "r" and calls == []
    assert Module._sync(_Probe(tvm.cuda(0)), "r") == "r" and calls == [2]
