"""SenseVoice-Small's network: query embeddings, the SAN-M encoder, the CTC head.

Parameter names follow FunASR's ``model.pt`` (``encoder.encoders0.0.self_attn.linear_q_k_v``,
``ctc.ctc_lo``, ``embed``), so its state dict loads as it is. SAN-M ("self-attention with
memory") adds to each attention a depthwise 1-D convolution over the values (the FSMN
memory block); the first block maps the 560 stacked features to the model width without
a residual; after ``num_blocks`` blocks and a norm come ``tp_blocks`` more and a second
norm. Four query rows go in front of the features: language, emotion, audio event, text
normalization; the CTC head's first four output rows are read as those tags.

Padding: every length-dependent step is masked (the convolution's input and output, the
attention's keys), so a padded batch gives each item what it gives alone; a batch with no
padding skips the masks. Layer norms run in float32 whatever the weights' dtype (the
reference does the same) and the fused attention accumulates its softmax in float32;
that is what keeps float16 on a GPU from overflowing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Rows of the query embedding table (FunASR's lid_dict / textnorm_dict; 1 and 2 ask for the
# emotion and the audio event, in the order the output writes them).
LANGUAGE_QUERIES = {"auto": 0, "zh": 3, "en": 4, "yue": 7, "ja": 11, "ko": 12, "nospeech": 13}
TEXT_NORM_QUERIES = {"withitn": 14, "woitn": 15}
EMOTION_QUERY, EVENT_QUERY = 1, 2
QUERY_ROWS = 4


@dataclass(frozen=True)
class EncoderConfig:
    input_size: int = 560
    output_size: int = 512
    attention_heads: int = 4
    linear_units: int = 2048
    num_blocks: int = 50
    tp_blocks: int = 20
    kernel_size: int = 11
    sanm_shift: int = 0
    vocab_size: int = 25055
    query_rows: int = 16  # 7 + len(LANGUAGE_QUERIES) + len(TEXT_NORM_QUERIES)


class LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight.float(), self.bias.float()
        out: torch.Tensor = F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)
        return out.type_as(x)


class FeedForward(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.w_1 = nn.Linear(width, hidden)
        self.w_2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.w_2(F.relu(self.w_1(x)))
        return out


class SanmAttention(nn.Module):
    def __init__(self, in_size: int, width: int, heads: int, kernel: int, shift: int) -> None:
        super().__init__()
        self.heads, self.d_k = heads, width // heads
        self.linear_q_k_v = nn.Linear(in_size, width * 3)
        self.linear_out = nn.Linear(width, width)
        self.fsmn_block = nn.Conv1d(width, width, kernel, groups=width, bias=False)
        left = (kernel - 1) // 2 + max(0, shift)
        self.padding = (left, kernel - 1 - left)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, key_mask: torch.Tensor | None) -> torch.Tensor:
        """``mask`` (B, T, 1) 1.0 on real frames; ``key_mask`` (B, 1, 1, T) True on them;
        both None when no item of the batch is padded (nothing to mask)."""
        b, t, _ = x.shape
        q, k, v = self.linear_q_k_v(x).split(self.heads * self.d_k, dim=-1)
        memory = v if mask is None else v * mask
        conv = self.fsmn_block(F.pad(memory.transpose(1, 2), self.padding)).transpose(1, 2)
        memory = conv + memory if mask is None else (conv + memory) * mask

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.reshape(b, t, self.heads, self.d_k).transpose(1, 2)

        # Fused attention: the softmax accumulates in float32 for half inputs. A padded query
        # row attends to the real keys (never to none, which would give NaN) and is masked
        # out of the memory and the next layers' keys.
        context = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=key_mask)
        out: torch.Tensor = self.linear_out(context.transpose(1, 2).reshape(b, t, -1)) + memory
        return out


class SanmLayer(nn.Module):
    def __init__(self, in_size: int, config: EncoderConfig) -> None:
        super().__init__()
        width = config.output_size
        self.self_attn = SanmAttention(in_size, width, config.attention_heads, config.kernel_size, config.sanm_shift)
        self.feed_forward = FeedForward(width, config.linear_units)
        self.norm1 = LayerNorm(in_size)
        self.norm2 = LayerNorm(width)
        self.residual = in_size == width

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, key_mask: torch.Tensor | None) -> torch.Tensor:
        attended: torch.Tensor = self.self_attn(self.norm1(x), mask, key_mask)
        x = x + attended if self.residual else attended
        out: torch.Tensor = x + self.feed_forward(self.norm2(x))
        return out


def positions(length: int, depth: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """FunASR's sinusoidal encoding: positions from 1, sines then cosines, (1, T, depth)."""
    position = torch.arange(1, length + 1, device=device, dtype=torch.float32)[:, None]
    increment = math.log(10000.0) / (depth / 2 - 1)
    inv = torch.exp(torch.arange(depth // 2, device=device, dtype=torch.float32) * -increment)
    scaled = position * inv[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)[None].to(dtype)


class SenseVoiceEncoder(nn.Module):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.encoders0 = nn.ModuleList([SanmLayer(config.input_size, config)])
        self.encoders = nn.ModuleList([SanmLayer(config.output_size, config) for _ in range(config.num_blocks - 1)])
        self.tp_encoders = nn.ModuleList([SanmLayer(config.output_size, config) for _ in range(config.tp_blocks)])
        self.after_norm = LayerNorm(config.output_size)
        self.tp_norm = LayerNorm(config.output_size)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
        mask: torch.Tensor | None = valid[:, :, None].to(x.dtype)
        key_mask: torch.Tensor | None = valid[:, None, None, :]
        if bool(valid.all()):  # one item, or all of one length: masking would change nothing
            mask = key_mask = None
        # The reference scales by the model width, not the input width.
        x = x * self.config.output_size**0.5
        x = x + positions(x.shape[1], x.shape[2], x.dtype, x.device)
        for layer in [*self.encoders0, *self.encoders]:
            x = layer(x, mask, key_mask)
        x = self.after_norm(x)
        for layer in self.tp_encoders:
            x = layer(x, mask, key_mask)
        out: torch.Tensor = self.tp_norm(x)
        return out


class CtcHead(nn.Module):
    def __init__(self, width: int, vocab: int) -> None:
        super().__init__()
        self.ctc_lo = nn.Linear(width, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.ctc_lo(x)
        return torch.log_softmax(logits.float(), dim=-1)


class SenseVoiceModel(nn.Module):
    """Features in, CTC log-probabilities out (the four query rows first)."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.query_rows, config.input_size)
        self.encoder = SenseVoiceEncoder(config)
        self.ctc = CtcHead(config.output_size, config.vocab_size)

    def queries(self, batch: int, language: str, text_norm: str) -> torch.Tensor:
        rows = [LANGUAGE_QUERIES[language], EMOTION_QUERY, EVENT_QUERY, TEXT_NORM_QUERIES[text_norm]]
        index = torch.tensor(rows, device=self.embed.weight.device)
        rows_out: torch.Tensor = self.embed(index)
        return rows_out[None].expand(batch, -1, -1)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor, language: str, text_norm: str) -> torch.Tensor:
        """``feats`` (B, T, input_size) padded, ``lengths`` (B,); (B, 4 + T, vocab) float32."""
        x = torch.cat([self.queries(feats.shape[0], language, text_norm).to(feats.dtype), feats], dim=1)
        logprobs: torch.Tensor = self.ctc(self.encoder(x, lengths + QUERY_ROWS))
        return logprobs
