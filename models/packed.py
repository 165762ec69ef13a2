"""Linear layers with their bfloat16 weights packed once for oneDNN (CPU only).

torch's bfloat16 ``F.linear`` on a CPU hands oneDNN a plain row-major weight, and oneDNN
reorders it into its blocked layout on every call. For a few dozen rows that reorder is a
large share of the call: on this box's AMD EPYC (Zen 4, AVX-512 BF16) an 88-row x 512 ->
2048 product took 609 us plain and 487 us with the weight packed ahead, with the same bits
out; at 1500 rows (Whisper's 30 s window) the two are within 3%. SenseVoice runs 281 such
products a pass on ~90 rows for 5 s of audio, so packing is where its bfloat16 time goes
down; the packed copy replaces the plain weight, so memory does not grow.

The packing ops are torch's own (``torch.ops.mkldnn._reorder_linear_weight`` and
``_linear_pointwise``, what torch.compile's CPU backend uses for frozen linear layers), but
private: where they are missing or refuse a weight, the layer stays as it was.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

# oneDNN picks the blocked layout with a row count in mind; any count works with any
# layout. 128 is about SenseVoice's rows for 5-10 s and Whisper's decoder batches.
ROWS_HINT = 128


class PackedLinear(nn.Module):
    """``nn.Linear``'s forward on a weight oneDNN has already reordered (inference only)."""

    def __init__(self, layer: nn.Linear, packed: torch.Tensor) -> None:
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.packed = packed
        self.bias = None if layer.bias is None else layer.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed bfloat16"


def _pack(layer: nn.Linear, reorder: Callable[[torch.Tensor, int], torch.Tensor]) -> torch.Tensor | None:
    weight = layer.weight
    if weight.device.type != "cpu" or weight.dtype != torch.bfloat16:
        return None
    bias = None if layer.bias is None else layer.bias.detach()
    probe = torch.linspace(-1.0, 1.0, weight.shape[1], dtype=weight.dtype)[None]
    try:
        packed: torch.Tensor = reorder(weight.detach(), ROWS_HINT)
        same = torch.equal(
            torch.ops.mkldnn._linear_pointwise(probe, packed, bias, "none", [], ""),
            torch.nn.functional.linear(probe, weight.detach(), bias),
        )
    except RuntimeError:  # a CPU or torch build oneDNN has no kernel for
        return None
    # The packed product must be the plain one: where it is not, keep the plain layer.
    return packed if same else None


def pack_bf16_linears(module: nn.Module) -> int:
    """Swap every bfloat16 ``nn.Linear`` on the CPU inside ``module`` for a ``PackedLinear``;
    returns how many were packed (0 where the CPU or torch build cannot)."""
    reorder = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None)
    if reorder is None or not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return 0
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear:
                continue
            packed = _pack(child, reorder)
            if packed is not None:
                setattr(parent, name, PackedLinear(child, packed))
                count += 1
    return count
