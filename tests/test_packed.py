"""Packed bfloat16 linear layers (models/packed.py) give the plain layers' exact bits."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from models.packed import PackedLinear, pack_bf16_linears


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Sequential(nn.Linear(256, 96, bias=False)))


def test_packed_layers_compute_the_plain_layers_bits_for_any_row_count() -> None:
    plain = _net().to(torch.bfloat16).eval()
    packed = copy.deepcopy(plain)
    count = pack_bf16_linears(packed)
    if count == 0:
        pytest.skip("this CPU or torch build has no oneDNN bfloat16 packing (the plain layers stay)")
    assert count == 2  # the nested one and the one without a bias too
    assert sum(isinstance(m, PackedLinear) for m in packed.modules()) == 2
    with torch.inference_mode():
        for shape in [(1, 64), (5, 64), (3, 88, 64), (2, 1, 7, 64), (1500, 64)]:
            x = torch.randn(*shape).to(torch.bfloat16)
            assert torch.equal(packed(x), plain(x)), shape


def test_only_bfloat16_layers_on_a_cpu_are_packed() -> None:
    plain = _net().eval()
    assert pack_bf16_linears(plain) == 0  # float32: left as it is
    assert sum(type(m) is nn.Linear for m in plain.modules()) == 2
