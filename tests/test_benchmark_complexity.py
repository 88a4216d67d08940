"""The complexity rows of ``scripts/benchmark.py``: the thop-style count (Conv/ConvT/Linear layers) is the dense
count less SS2D's two einsums, whichever path the blocks take (layers applied functionally are counted once)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import benchmark  # noqa: E402 (scripts/ is on sys.path only now)

import vmunetv2_monai.networks.blocks.sdi as sdi  # noqa: E402
import vmunetv2_monai.networks.blocks.ss2d as ss2d_module  # noqa: E402


def _rows(monkeypatch) -> tuple[dict[str, float], float]:
    """The complexity rows' values by item, and the MACs of SS2D's x_proj and dt_proj einsums in the same forward."""
    einsum = {"macs": 0.0}
    forward = ss2d_module.SS2D.forward

    def counting_forward(self, x):
        length = x.shape[0] * x.shape[1] * x.shape[2]
        rank, state = self.dt_rank, self.d_state
        einsum["macs"] += length * self.d_inner * 4 * (rank + 2 * state) + length * 4 * rank * self.d_inner
        return forward(self, x)

    monkeypatch.setattr(ss2d_module.SS2D, "forward", counting_forward)
    monkeypatch.setattr(benchmark, "ROWS", [])
    benchmark.complexity_rows()
    return {str(r["item"]): float(r["value"]) for r in benchmark.ROWS}, einsum["macs"]


@pytest.mark.parametrize("module_path", [False, True])
def test_thop_style_count_is_dense_less_einsums(monkeypatch, module_path: bool) -> None:
    if module_path:  # LevelProjection on its nn modules (its 1x1 conv then runs as a module)
        monkeypatch.setattr(sdi, "linear_cpu_supported", lambda *_: False)
        monkeypatch.setattr(sdi, "cbam_supported", lambda _: False)
    rows, einsum_macs = _rows(monkeypatch)
    thop = rows["GMACs thop-style (Conv/ConvT/Linear modules)"] * 1e9
    dense = rows["GMACs incl. einsums (conv/linear/einsum)"] * 1e9
    assert thop == pytest.approx(dense - einsum_macs, rel=1e-9)
    assert thop > 0
