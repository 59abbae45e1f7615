"""Short causal convolution: the `conv` layer kind.

Each position's output is a dense linear map of the inputs at its own and the K-1 previous positions:

    y_t = sum_{i=0}^{K-1} W_i x_{t-i}        (x_t = 0 before the stream starts)

It gives the layers above it n-gram features for free. In recall tasks a key spans several tokens (a
3-letter key is 3-4 BPE tokens), and attention can match it only after some layer has gathered those
tokens into one position; learning that with attention alone is the slow, seed-dependent step of the
README's reproduction. Streaming state: the last K-1 inputs, allocated once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ConvState:
    """The last K-1 inputs of a `conv` layer, oldest first (zeros before the stream's start)."""

    x: torch.Tensor  # [B, K-1, d]
    pos: int  # tokens seen

    @property
    def nbytes(self) -> int:
        return self.x.numel() * self.x.element_size()

    def scalars(self) -> dict[str, int]:
        """The ints a snapshot records beside the tensors."""
        return {"pos": self.pos}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"x": self.x}

    def clone(self) -> ConvState:
        return ConvState(self.x.detach().clone(), self.pos)

    def detach(self) -> ConvState:
        return ConvState(self.x.detach(), self.pos)


class ShortConv(nn.Module):
    def __init__(self, d_model: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(d_model, d_model, kernel, bias=False)  # weight [d, d, K]; tap K-1 is x_t

    @property
    def kernel(self) -> int:
        return self.conv.kernel_size[0]

    def init_state(self, B: int, dtype=torch.float32, device=None) -> ConvState:
        device = self.conv.weight.device if device is None else device
        return ConvState(
            torch.zeros(B, self.kernel - 1, self.conv.in_channels, dtype=dtype, device=device), 0
        )

    def forward(self, x: torch.Tensor, state: ConvState | None) -> tuple[torch.Tensor, ConvState | None]:
        """x [B, T, d] -> y [B, T, d]. `state` None: a fresh stream whose state is not wanted
        (training); returns None. Without autograd the given state is updated in place."""
        B, T, _ = x.shape
        past = x.new_zeros(B, self.kernel - 1, x.shape[-1]) if state is None else state.x.to(x.dtype)
        xs = torch.cat([past, x], dim=1)  # [B, K-1+T, d]: positions pos-K+1 .. pos+T-1
        y = self.conv(xs.transpose(1, 2)).transpose(1, 2)  # unpadded: [B, T, d], causal by the past rows
        if state is None:
            return y, None
        tail = xs[:, T:]  # [B, K-1, d]: the last K-1 inputs
        if torch.is_grad_enabled() and (tail.requires_grad or state.x.requires_grad):
            return y, ConvState(tail.to(state.x.dtype), state.pos + T)
        state.x.copy_(tail)
        state.pos += T
        return y, state
