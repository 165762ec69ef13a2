"""Whisper encoder-decoder in plain PyTorch.

The module layout follows the CTranslate2 Whisper spec (fused q/k/v projections), so the
bundled ``model.bin`` maps onto it one tensor to one parameter. Numerically fragile steps
(layer norm, the final logits) run in float32 whatever the weights' dtype, which is what
makes float16 on a GPU safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class WhisperDims:
    n_mels: int
    n_audio_ctx: int
    n_text_ctx: int
    width: int
    n_heads: int
    n_encoder_layers: int
    n_decoder_layers: int
    n_vocab: int

    @property
    def multilingual(self) -> bool:
        # English-only checkpoints have 51864 tokens; multilingual ones 51865 or more.
        return self.n_vocab >= 51865


class LayerNorm(nn.LayerNorm):
    """Layer norm with float32 statistics whatever the input dtype.

    PyTorch's layer norm kernels (CUDA and CPU) already accumulate float16 and bfloat16
    inputs in float32 and round only the output, so for matching dtypes no casts are
    needed: casting in and out cost two extra kernels per norm, 24 per decoding step of
    tiny.en, which on a GPU (where a step is bound by kernel launches) made float16 about
    25% slower than float32.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == self.weight.dtype:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps).to(
            x.dtype
        )


# On a CPU, MKL multiplies a few rows by a weight 2-3x faster as W @ x.T than as x @ W.T
# (measured on this box's EPYC: 5 rows x 512 -> 2048 in 0.33 against 0.79 ms), and decoding
# steps are a few rows (items times beams); the encoder's 1500 rows per window are not.
SMALL_ROWS = 64


def linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """``layer(x)``, computed as W @ x.T for a few rows on a CPU. Quantized layers (not
    ``nn.Linear`` itself) and everything on a GPU go as they are."""
    rows = x.numel() // x.shape[-1]
    if type(layer) is not nn.Linear or x.device.type != "cpu" or not 1 < rows <= SMALL_ROWS:
        out: Tensor = layer(x)
        return out
    flat = x.reshape(rows, x.shape[-1]).T
    product = layer.weight @ flat if layer.bias is None else torch.addmm(layer.bias[:, None], layer.weight, flat)
    return product.T.contiguous().view(*x.shape[:-1], layer.out_features)


class FeedForward(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.layer_norm = LayerNorm(width)
        self.linear_0 = nn.Linear(width, 4 * width)
        self.linear_1 = nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = linear(self.linear_1, F.gelu(linear(self.linear_0, self.layer_norm(x))))
        return out


def _split_heads(x: Tensor, n_heads: int) -> Tensor:
    batch, length, width = x.shape
    return x.view(batch, length, n_heads, width // n_heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)


class SelfAttention(nn.Module):
    """Pre-norm self-attention with fused q/k/v (``linear_0``) and output (``linear_1``)."""

    def __init__(self, width: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.layer_norm = LayerNorm(width)
        self.linear_0 = nn.Linear(width, 3 * width)
        self.linear_1 = nn.Linear(width, width)

    def forward(
        self,
        x: Tensor,
        cache: tuple[Tensor, Tensor] | None = None,
        causal: bool = False,
        mask: Tensor | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``mask`` (bool, broadcastable to [batch, heads, new, all keys], True = may attend)
        replaces the causal flag when the batch holds sequences of different lengths."""
        q, k, v = linear(self.linear_0, self.layer_norm(x)).chunk(3, dim=-1)
        q, k, v = (_split_heads(t, self.n_heads) for t in (q, k, v))
        if cache is not None:
            k = torch.cat([cache[0], k], dim=2)
            v = torch.cat([cache[1], v], dim=2)
        if mask is not None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            # A causal mask is only needed while several new positions are processed at
            # once; with a cache, one new query may see every earlier key.
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal and q.shape[2] > 1)
        return linear(self.linear_1, _merge_heads(out)), (k, v)


class CrossAttention(nn.Module):
    """Decoder-to-encoder attention: query ``linear_0``, fused k/v ``linear_1``, out ``linear_2``."""

    def __init__(self, width: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.layer_norm = LayerNorm(width)
        self.linear_0 = nn.Linear(width, width)
        self.linear_1 = nn.Linear(width, 2 * width)
        self.linear_2 = nn.Linear(width, width)

    def project_memory(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.linear_1(memory).chunk(2, dim=-1)
        return _split_heads(k, self.n_heads), _split_heads(v, self.n_heads)

    def forward(self, x: Tensor, memory_kv: tuple[Tensor, Tensor]) -> Tensor:
        """``x`` [rows, n, width]; ``memory_kv`` per item [items, heads, frames, head_dim],
        where ``rows`` is ``items`` times the beams per item (beams are consecutive rows)."""
        k, v = memory_kv
        q = _split_heads(linear(self.linear_0, self.layer_norm(x)), self.n_heads)
        rows, items = q.shape[0], k.shape[0]
        if rows == items:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            # The beams of an item read the same encoder output, and cross-attention has no
            # mask: their queries go in as one longer query block per item. Same result as
            # repeating the keys/values per beam, without copying them (a beam-5 batch of 16
            # would copy 80 items' worth) or reading them once per beam.
            _, heads, n, dim = q.shape
            beams = rows // items
            grouped = q.view(items, beams, heads, n, dim).transpose(1, 2).reshape(items, heads, beams * n, dim)
            out = F.scaled_dot_product_attention(grouped, k, v)
            out = out.view(items, heads, beams, n, dim).transpose(1, 2).reshape(rows, heads, n, dim)
        projected: Tensor = linear(self.linear_2, _merge_heads(out))
        return projected


class EncoderLayer(nn.Module):
    def __init__(self, width: int, n_heads: int) -> None:
        super().__init__()
        self.self_attention = SelfAttention(width, n_heads)
        self.ffn = FeedForward(width)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attention(x)[0]
        out: Tensor = x + self.ffn(x)
        return out


class DecoderLayer(nn.Module):
    def __init__(self, width: int, n_heads: int) -> None:
        super().__init__()
        self.self_attention = SelfAttention(width, n_heads)
        self.attention = CrossAttention(width, n_heads)
        self.ffn = FeedForward(width)


class Positions(nn.Module):
    def __init__(self, length: int, width: int) -> None:
        super().__init__()
        self.encodings = nn.Parameter(torch.zeros(length, width), requires_grad=False)


class Encoder(nn.Module):
    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(dims.n_mels, dims.width, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(dims.width, dims.width, kernel_size=3, stride=2, padding=1)
        self.position_encodings = Positions(dims.n_audio_ctx, dims.width)
        self.layer = nn.ModuleList(EncoderLayer(dims.width, dims.n_heads) for _ in range(dims.n_encoder_layers))
        self.layer_norm = LayerNorm(dims.width)

    def forward(self, mel: Tensor) -> Tensor:
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        x = x + self.position_encodings.encodings[: x.shape[1]]
        for layer in self.layer:
            x = layer(x)
        out: Tensor = self.layer_norm(x)
        return out


class Embeddings(nn.Module):
    def __init__(self, n_vocab: int, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_vocab, width), requires_grad=False)


KVCache = list[tuple[Tensor, Tensor]]


class Decoder(nn.Module):
    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        self.embeddings = Embeddings(dims.n_vocab, dims.width)
        self.position_encodings = Positions(dims.n_text_ctx, dims.width)
        self.layer = nn.ModuleList(DecoderLayer(dims.width, dims.n_heads) for _ in range(dims.n_decoder_layers))
        self.layer_norm = LayerNorm(dims.width)
        # The same layers, typed, for the attribute access the decoder loop needs.
        self.layers: list[DecoderLayer] = [cast(DecoderLayer, m) for m in self.layer]

    def project_memory(self, memory: Tensor) -> KVCache:
        """Cross-attention keys and values for each layer, computed once per utterance."""
        return [layer.attention.project_memory(memory) for layer in self.layers]

    def forward(
        self,
        tokens: Tensor,
        memory_kv: KVCache,
        cache: KVCache | None,
        positions: Tensor | None = None,
        key_valid: Tensor | None = None,
    ) -> tuple[Tensor, KVCache]:
        """Float32 logits for ``tokens`` [batch, n] given the cache of earlier positions.

        Sequences of different lengths share a batch left-padded: ``positions`` [batch, n]
        gives each token's own position and ``key_valid`` [batch, cached + n] marks the
        padding (False) that no query may attend to.
        """
        offset = 0 if cache is None else cache[0][0].shape[2]
        x = self.embeddings.weight[tokens]
        if positions is None:
            x = x + self.position_encodings.encodings[offset : offset + tokens.shape[1]]
        else:
            x = x + self.position_encodings.encodings[positions]
        mask = None
        if key_valid is not None:
            n_new, n_keys = tokens.shape[1], key_valid.shape[1]
            causal = torch.ones(n_new, n_keys, dtype=torch.bool, device=tokens.device).tril(n_keys - n_new)
            # Each position may always see itself, so a padding row is never all-masked
            # (that would give NaN, which would leak through the values into real rows).
            itself = torch.zeros(n_new, n_keys, dtype=torch.bool, device=tokens.device)
            itself[:, n_keys - n_new :] = torch.eye(n_new, dtype=torch.bool, device=tokens.device)
            mask = (key_valid[:, None, None, :] & causal) | itself
        new_cache: KVCache = []
        for i, layer in enumerate(self.layers):
            attn, kv = layer.self_attention(x, None if cache is None else cache[i], causal=True, mask=mask)
            x = x + attn
            x = x + layer.attention(x, memory_kv[i])
            x = x + layer.ffn(x)
            new_cache.append(kv)
        x = self.layer_norm(x)
        # The product runs in the weights' dtype; the logits (and so the log-probabilities)
        # are float32 from here on.
        return self._logits(x).float(), new_cache

    def _logits(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] == 1 and self._embeddings_t is not None:
            out = rows @ self._embeddings_t
        else:
            out = (self.embeddings.weight @ rows.T).T
        return out.reshape(*x.shape[:-1], -1)

    _embeddings_t: Tensor | None = None

    def prepare_output_projection(self) -> None:
        """On a CPU, keep a contiguous transposed copy of the token embeddings for one-row
        decoding steps.

        The output projection reads every embedding at every step. CPU BLAS is about 2.5x
        faster for one row against a contiguous [width, vocab] matrix (2.9 against 7.3 ms
        for tiny.en), while for several rows W @ x.T on the original layout is fastest
        (5 against 13 ms for five rows). The copy costs vocab x width floats (80 MB for
        tiny.en); on a GPU both layouts are fast and no copy is kept.
        """
        weight = self.embeddings.weight
        self._embeddings_t = weight.detach().t().contiguous() if weight.device.type == "cpu" else None


class Whisper(nn.Module):
    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        self.dims = dims
        self.encoder = Encoder(dims)
        self.decoder = Decoder(dims)
