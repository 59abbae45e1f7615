"""Bounded memory for a pretrained attention layer: sinks + an exact window + an OVQ dictionary.

A pretrained layer keeps the attention it was trained with on what it can afford to keep exactly:
the first S tokens of the stream (attention sinks) and the most recent tokens (at least W, at most
W + L - 1). Tokens that leave the window are folded, a chunk of L at a time, into a per-(layer,
KV head) dictionary of at most N key/value centroids (docs/ovq.md 4-5: plateau growth, seeds of
least coverage, nearest assignment by cosine, exact cumulative means, counts). A query reads sinks,
window and centroids in ONE softmax; a centroid's logit is s * q.mu_k + log(count_n), the mixture
weight of the tokens it stands for. Query heads of a GQA group share their KV head's dictionary.

Positions (the layer was trained with RoPE and a bounded context):
- window keys are rotated by their absolute position, as the query is: their relative distances are
  the trained ones, whatever the stream length (angles are computed in float64, so rotations at
  position 10^9 are still accurate);
- sinks sit at positions 0..S-1 and the query reads them from its position *in the cache*
  (t - tokens dropped between sinks and window), as StreamingLLM does, so no distance ever exceeds
  S + W + L;
- centroids (key_space "pre_rope", the default) are means of un-rotated keys, read as if they lay
  `read_distance` positions before the query (InfLLM's choice for its memory units); "post_rope"
  averages rotated keys instead (measured in the model card, not the default).

Which token a query at stream position t sees exactly (F(t): chunks that left the window before t):
  memory, window: sinks, and positions p with S + F(t)*L <= p <= t,
                  F(t) = max(0, floor((t - S - W + 1) / L))
  full:           every position (bounded by the checkpoint's context; a baseline)
Chunk c (positions [S + cL, S + (c+1)L)) leaves the window right before query S + W - 1 + (c+1)L:
memory layers fold it into their dictionary, window layers (StreamingLLM, evicting a chunk at a time)
drop it. Chunks are fixed by stream position, so any split of a stream into calls gives the same
outputs and state.

The read is two passes merged exactly (as the OVQ op's CPU path does): attention over sinks + window,
attention over the centroids (+log count), each with its log-sum-exp; the window's share of the
softmax mass is sigmoid(lse_window - lse_dict). A decoding query reads sinks and window as two passes
too (joining them would copy the window at every token). Every query between two folds sees the same
sinks offset, so sink keys are re-rotated once per fold (as the count bias is recomputed) and one query
rotation serves sinks and window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Literal, NamedTuple

import torch

from ovq import kernels
from ovq.memory.config import SCHEDULES, schedule_size

Kind = Literal["memory", "window", "full"]
KINDS = ("memory", "window", "full")
KEY_SPACES = ("pre_rope", "post_rope")


@dataclass(frozen=True)
class RetrofitConfig:
    """How a pretrained model's attention is bounded. Part of the model's fingerprint."""

    kind: Kind = "memory"  # memory: window + dictionaries; window: StreamingLLM; full: no bound
    sinks: int = 4  # S
    window: int = 512  # W
    chunk: int = 256  # L: tokens folded at a time (and the most a prefill segment holds)
    capacity: int = 1024  # N: centroids per (layer, KV head)
    memory_layers: str = "all"  # which layers carry a dictionary: all | every:K | 0,2,5 (others: window)
    schedule: str = "plateau"  # dictionary growth, docs/ovq.md 5
    key_space: str = "pre_rope"  # what a centroid averages: un-rotated keys, or rotated ones
    read_distance: int | None = None  # pre_rope: centroids read as if this far back (None: W)
    count_bias: float = 1.0  # alpha: a centroid's logit gains alpha * log(count)
    count_cap: float | None = None  # log(count) capped here (None: no cap)
    # Heavy hitters: of each folded chunk, the `exact` tokens per KV head that received the most
    # attention while in the window are also kept exactly (beside their centroid), in a store of
    # `exact_capacity` per KV head that keeps the most attended when full. 0: none.
    exact: int = 0
    exact_capacity: int = 256

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"retrofit kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("sinks", "window", "chunk", "capacity"):
            v = getattr(self, name)
            if (
                isinstance(v, bool)
                or not isinstance(v, int)
                or v < (0 if name in ("sinks", "capacity") else 1)
            ):
                raise ValueError(
                    f"retrofit {name} must be an int >= {0 if name in ('sinks', 'capacity') else 1}"
                )
        if self.kind == "memory" and self.capacity < 2:
            raise ValueError("a memory retrofit needs capacity >= 2 (centroids per KV head)")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.key_space not in KEY_SPACES:
            raise ValueError(f"key_space must be one of {KEY_SPACES}, got {self.key_space!r}")
        if self.read_distance is not None and self.read_distance < 0:
            raise ValueError("read_distance must be >= 0")
        if self.count_bias < 0 or (self.count_cap is not None and self.count_cap < 0):
            raise ValueError("count_bias and count_cap must be >= 0")
        if (
            isinstance(self.exact, bool)
            or not isinstance(self.exact, int)
            or not 0 <= self.exact <= self.chunk
        ):
            raise ValueError(f"retrofit exact must be an int in [0, chunk={self.chunk}], got {self.exact!r}")
        if self.exact and (not isinstance(self.exact_capacity, int) or self.exact_capacity < self.exact):
            raise ValueError(f"retrofit exact_capacity must be an int >= exact ({self.exact})")
        self.layer_mask(1)  # raises on a malformed memory_layers

    def layer_mask(self, n_layers: int) -> list[bool]:
        """Which of `n_layers` layers carry a dictionary."""
        if self.kind != "memory":
            return [False] * n_layers
        spec = self.memory_layers.replace(" ", "")
        if spec == "all":
            return [True] * n_layers
        if spec == "none":
            return [False] * n_layers
        if spec.startswith("every:") and spec[6:].isdigit() and int(spec[6:]) >= 1:
            return [i % int(spec[6:]) == 0 for i in range(n_layers)]
        try:
            chosen = {int(x) for x in spec.split(",") if x}
        except ValueError:
            chosen = None
        if not chosen or any(i < 0 for i in chosen):
            raise ValueError(
                f"memory_layers must be all, none, every:K or a comma list of layers, got {spec!r}"
            )
        if max(chosen) >= n_layers and n_layers > 1:
            raise ValueError(f"memory_layers names layer {max(chosen)}; the model has {n_layers}")
        return [i in chosen for i in range(n_layers)]

    @property
    def distance(self) -> int:
        return self.window if self.read_distance is None else self.read_distance

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        if not self.exact:  # settings added later are left out at their off value, so a model's
            del d["exact"], d["exact_capacity"]  # fingerprint (and its saved sessions) stay as they were
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RetrofitConfig:
        known = {f.name for f in fields(cls)}
        if unknown := set(d) - known:
            raise ValueError(f"unknown retrofit settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def with_(self, **changes) -> RetrofitConfig:
        return replace(self, **changes)


PRESETS = {
    "memory": RetrofitConfig(),
    "streaming": RetrofitConfig(kind="window", capacity=0),
    "full": RetrofitConfig(kind="full", capacity=0),
}


def parse_retrofit(spec: str | None) -> RetrofitConfig:
    """`memory` / `streaming` / `full` (presets), or `key=value,...` over the memory preset
    (`capacity=4096,window=1024`, `kind=window`); None: the memory preset."""
    if spec is None or spec.strip() in PRESETS:
        return PRESETS[(spec or "memory").strip()]
    base, changes = PRESETS["memory"], {}
    types = {f.name: f.type for f in fields(RetrofitConfig)}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in types:
            raise ValueError(
                f"retrofit settings are a preset ({', '.join(PRESETS)}) or key=value pairs with keys "
                f"{sorted(types)}; got {item!r}"
            )
        changes[key] = _value(key, value.strip(), types[key])
    return replace(base, **changes)


def _value(key: str, text: str, kind: str):
    if text.lower() == "none" and "None" in kind:
        return None
    try:
        if kind.startswith("int"):
            return int(text)
        if kind.startswith("float"):
            return float(text)
    except ValueError:
        raise ValueError(f"retrofit {key} must be a number, got {text!r}") from None
    return text


@dataclass(frozen=True)
class LayerPlan:
    """What one layer does, resolved from the config and the model's shape."""

    S: int
    W: int  # exact window (full: the checkpoint's context)
    L: int
    N: int  # 0: no dictionary
    kind: Kind  # "memory" only for layers with a dictionary
    schedule: str
    key_space: str
    distance: int
    count_bias: float
    count_cap: float | None
    context: int  # full: the most positions a stream may hold
    exact: int = 0  # tokens per chunk kept exactly (memory layers only)
    X: int = 0  # exact store capacity

    @classmethod
    def resolve(cls, config: RetrofitConfig, n_layers: int, context: int) -> list[LayerPlan]:
        mask = config.layer_mask(n_layers)
        plans = []
        for has_memory in mask:
            kind: Kind = "memory" if has_memory else ("full" if config.kind == "full" else "window")
            plans.append(
                cls(
                    S=config.sinks,
                    W=context if kind == "full" else config.window,
                    L=config.chunk,
                    N=config.capacity if has_memory else 0,
                    kind=kind,
                    schedule=config.schedule,
                    key_space=config.key_space,
                    distance=config.distance,
                    count_bias=config.count_bias,
                    count_cap=config.count_cap,
                    context=context,
                    exact=config.exact if has_memory else 0,
                    X=config.exact_capacity if has_memory and config.exact else 0,
                )
            )
        return plans

    @property
    def buffer(self) -> int:
        """Rows of the exact buffer: at most W + L - 1 are ever in use (module docstring)."""
        return self.W + self.L


@dataclass
class WindowMemoryState:
    """One layer's bounded state, allocated once at its bound (its bytes never change).

    k_sink, v_sink  [B, Hkv, S, D]    the first S tokens (keys rotated at positions 0..S-1)
    k_buf, v_buf    [B, Hkv, W+L, D]  the exact window: rows [0, buf_len) hold positions
                                      [pos - buf_len, pos), keys rotated at those positions
    keys, values    [B, Hkv, N, D]    centroids; rows [0, size) in use
    counts          [B, Hkv, N]       tokens each centroid stands for (int64)
    with exact tokens (plan.X > 0; otherwise None and not part of the state):
    attn            [B, Hkv, W+L]     attention mass each buffer row has received (float32)
    k_exact, v_exact [B, Hkv, X, D]   tokens kept exactly; rows [0, exact_len) in use, keys in the
                                      dictionary's key space
    exact_score     [B, Hkv, X]       the attention mass each had received when its chunk was folded
    """

    k_sink: torch.Tensor
    v_sink: torch.Tensor
    k_buf: torch.Tensor
    v_buf: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    counts: torch.Tensor
    pos: int = 0  # tokens this layer has seen
    buf_len: int = 0
    size: int = 0  # centroids in use (the same for every head: it depends only on tokens folded)
    folded: int = 0  # tokens that left the window (folded into the dictionary, or dropped)
    attn: torch.Tensor | None = None
    k_exact: torch.Tensor | None = None
    v_exact: torch.Tensor | None = None
    exact_score: torch.Tensor | None = None
    exact_len: int = 0

    TENSORS = ("k_sink", "v_sink", "k_buf", "v_buf", "keys", "values", "counts")
    SCALARS = ("pos", "buf_len", "size", "folded")
    EXACT_TENSORS = ("attn", "k_exact", "v_exact", "exact_score")

    @classmethod
    def allocate(cls, plan: LayerPlan, B: int, Hkv: int, D: int, dtype, device) -> WindowMemoryState:
        z = lambda n: torch.zeros(B, Hkv, n, D, dtype=dtype, device=device)  # noqa: E731
        counts = torch.zeros(B, Hkv, plan.N, dtype=torch.int64, device=device)
        state = cls(z(plan.S), z(plan.S), z(plan.buffer), z(plan.buffer), z(plan.N), z(plan.N), counts)
        if plan.X:
            f32 = lambda n: torch.zeros(B, Hkv, n, dtype=torch.float32, device=device)  # noqa: E731
            state.attn, state.exact_score = f32(plan.buffer), f32(plan.X)
            state.k_exact, state.v_exact = z(plan.X), z(plan.X)
        return state

    def tensors(self) -> dict[str, torch.Tensor]:
        names = self.TENSORS + (self.EXACT_TENSORS if self.k_exact is not None else ())
        return {name: getattr(self, name) for name in names}

    def scalars(self) -> dict[str, int]:
        names = self.SCALARS + (("exact_len",) if self.k_exact is not None else ())
        return {name: getattr(self, name) for name in names}

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def clone(self) -> WindowMemoryState:
        return WindowMemoryState(**{k: t.clone() for k, t in self.tensors().items()}, **self.scalars())

    def validate(self, plan: LayerPlan) -> None:
        """Raise ValueError if the scalars cannot describe a state of `plan` (a corrupt snapshot)."""
        sinks = min(self.pos, plan.S)
        if not 0 <= self.buf_len <= min(plan.buffer - 1, self.pos - sinks):
            raise ValueError(f"buf_len {self.buf_len} does not fit position {self.pos}")
        if not 0 <= self.size <= plan.N or self.folded % plan.L or self.folded > self.pos:
            raise ValueError(f"size {self.size} / folded {self.folded} do not fit the layer")
        if self.pos - sinks - self.folded != self.buf_len:
            raise ValueError("sinks + window + tokens that left it do not add up to the position")
        if plan.kind == "memory":
            if self.size != schedule_size(self.folded, plan.N, plan.schedule):
                raise ValueError(f"size {self.size} is not the schedule's after {self.folded} tokens folded")
            if int(self.counts.sum()) != self.folded * self.counts.shape[0] * self.counts.shape[1]:
                raise ValueError("centroid counts do not sum to the tokens folded")
        if plan.X and self.exact_len != min(plan.X, plan.exact * (self.folded // plan.L)):
            raise ValueError(f"exact_len {self.exact_len} does not fit {self.folded} tokens folded")


# ---- rotary positions ------------------------------------------------------------------------


class Rotary:
    """cos/sin tables for runs of positions (first, first + step, ...), made once per forward call and
    shared by every layer: all layers rotate the same positions, and the tables cost more Python than
    the rotations when decoding one token."""

    def __init__(self, inv_freq: torch.Tensor) -> None:
        self.inv_freq = inv_freq.to(torch.float64)  # [D/2]
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def apply(self, x: torch.Tensor, first: int, step: int = 1) -> torch.Tensor:
        """x [..., T, D] rotated at positions first + step * i (i < T), HF's rotate_half pairs."""
        key = (first, x.shape[-2], step, x.dtype, x.device)
        if key not in self._tables:
            pos = first + step * torch.arange(x.shape[-2], dtype=torch.float64, device=x.device)
            ang = pos[:, None] * self.inv_freq.to(x.device)[None, :]  # [T, D/2]
            self._tables[key] = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
        cos, sin = self._tables[key]
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


# ---- the layer op ----------------------------------------------------------------------------


class MemoryRead(NamedTuple):
    """A layer's learned reading of its dictionary (memory_read.py trains them; absent: the rule as
    written above, which these reduce to at zero). Only the dictionary's logits change:
    s * exp(log_scale_h) * q.mu_k + exp(log_gain_g) * alpha * log(count_k) + bias_h, for query head h of
    KV group g. Sinks and window are read as the checkpoint was trained to, so a stream that has not
    folded a chunk yet is unchanged."""

    log_scale: torch.Tensor  # [Hq]
    bias: torch.Tensor  # [Hq]
    log_gain: torch.Tensor  # [Hkv]


def window_memory_attention(
    q: torch.Tensor,  # [B, Hq, T, D]  before RoPE
    k: torch.Tensor,  # [B, Hkv, T, D] before RoPE
    v: torch.Tensor,  # [B, Hkv, T, D]
    state: WindowMemoryState,
    plan: LayerPlan,
    inv_freq: torch.Tensor,  # [D/2]
    backend: str = "torch",
    rotary: Rotary | None = None,  # tables shared by the layers of one forward call
    read: MemoryRead | None = None,
) -> tuple[torch.Tensor, WindowMemoryState]:
    """Attention of T new tokens over the layer's bounded state; the state is updated in place and
    returned. Output [B, Hq, T, D] in q's dtype.

    Under autograd (training the memory's reading) the output carries gradients to q, k, v and `read`;
    the state only ever holds detached values, so a stream is trained a segment at a time (truncated
    back-propagation: a segment's loss reaches this segment's tokens, not the ones before it)."""
    rotary = Rotary(inv_freq) if rotary is None else rotary
    B, Hq, T, D = q.shape
    if plan.kind == "full" and state.pos + T > plan.context:
        raise ValueError(
            f"full attention holds at most {plan.context} tokens (the checkpoint's context); this stream "
            f"would reach {state.pos + T}. Use a bounded retrofit (sinks + window, with or without memory)"
        )
    pieces = []  # [B, Hq, T_i, D] per segment
    fresh: list[torch.Tensor] = []  # under autograd: this call's window keys and values, as computed
    i = 0
    while i < T:
        j = i + _segment_length(state, plan, T - i)
        pieces.append(_segment(q[:, :, i:j], k[:, :, i:j], v[:, :, i:j], state, plan, rotary, read, fresh))
        if plan.kind != "full" and state.pos == _next_fold(state, plan):
            if plan.kind == "memory":
                _fold(state, plan, rotary, backend)
            else:  # StreamingLLM: the chunk is forgotten
                _drop_front(state, plan.L)
                state.folded += plan.L
        i = j
    if len(pieces) == 1:
        return pieces[0], state
    return (torch.cat(pieces, dim=2) if pieces else torch.empty_like(q)), state


def _next_fold(state: WindowMemoryState, plan: LayerPlan) -> int:
    """The position right before which the next chunk is folded: S + W - 1 + (c+1) L."""
    c = state.folded // plan.L
    return plan.S + plan.W - 1 + (c + 1) * plan.L


def _segment_length(state: WindowMemoryState, plan: LayerPlan, remaining: int) -> int:
    """Queries processed together: at most L, never across a fold (they must share a dictionary)."""
    n = min(remaining, plan.L)
    if plan.kind != "full":
        n = min(n, _next_fold(state, plan) - state.pos)
    return n


def _segment(
    q, k, v, state: WindowMemoryState, plan: LayerPlan, rotary: Rotary, read: MemoryRead | None, fresh: list
) -> torch.Tensor:
    B, Hq, Tq, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    sdt = state.k_buf.dtype
    t0 = state.pos  # the queries sit at t0 .. t0 + Tq - 1
    grad = torch.is_grad_enabled()  # training: the state gets detached copies, the read the originals

    # store the new keys (rotated at their positions): sinks first, the rest into the buffer
    k_rot, v_new = rotary.apply(k.to(sdt), t0), v.to(sdt)
    n_sink = max(0, min(plan.S - state.pos, Tq))
    if n_sink:
        a = state.pos
        state.k_sink[:, :, a : a + n_sink] = k_rot[:, :, :n_sink].detach()
        state.v_sink[:, :, a : a + n_sink] = v_new[:, :, :n_sink].detach()
    rest = Tq - n_sink
    if rest:
        a = state.buf_len
        state.k_buf[:, :, a : a + rest] = k_rot[:, :, n_sink:].detach()
        state.v_buf[:, :, a : a + rest] = v_new[:, :, n_sink:].detach()
        state.buf_len += rest
    state.pos += Tq

    # [B, Hkv, G*Tq, D]: a GQA group's query heads read their KV head's keys as one matrix
    qf = q.to(sdt)
    q_abs = rotary.apply(qf, t0).reshape(B, Hkv, G * Tq, D)
    scale = 1.0 / math.sqrt(D)

    # pass 1: sinks + window. Sinks sit at their cache positions: each lies `offset` positions further
    # back for every query of the segment (the tokens dropped or folded between sinks and window).
    n_s, n_b = min(plan.S, state.pos), state.buf_len
    k_sink, v_sink = _sinks_read(state, n_s, rotary), state.v_sink[:, :, :n_s]
    causal = None  # one query sees every key held: the mask would hide nothing
    if Tq == 1 and n_s and n_b and not grad:
        # decoding: one query sees every key held, so sinks and window are read as two passes merged
        # exactly, sparing the copy of the whole window that joining them would take at every token
        out, lse = _attend(q_abs, state.k_buf[:, :, :n_b], state.v_buf[:, :, :n_b], None, scale)
        out, lse = _merge(out, lse, *_attend(q_abs, k_sink, v_sink, None, scale))
    else:
        k_win, v_win = state.k_buf[:, :, :n_b], state.v_buf[:, :, :n_b]
        if grad and rest:  # this call's window tokens as computed, with their gradient (the buffer
            # holds detached copies); what earlier calls left there stays detached
            if fresh:
                fresh[:] = [
                    torch.cat([fresh[0], k_rot[:, :, n_sink:]], 2),
                    torch.cat([fresh[1], v_new[:, :, n_sink:]], 2),
                ]
            else:
                fresh[:] = [k_rot[:, :, n_sink:], v_new[:, :, n_sink:]]
            m = min(fresh[0].shape[2], n_b)  # the newest m rows of the window
            k_win = torch.cat([k_win[:, :, : n_b - m], fresh[0][:, :, -m:]], dim=2)
            v_win = torch.cat([v_win[:, :, : n_b - m], fresh[1][:, :, -m:]], dim=2)
        keys = torch.cat([k_sink, k_win], dim=2)  # [B, Hkv, n_s + n_b, D]
        values = torch.cat([v_sink, v_win], dim=2)
        if Tq > 1:
            key_pos = torch.cat(
                [
                    torch.arange(n_s, device=q.device),
                    torch.arange(state.pos - n_b, state.pos, device=q.device),
                ]
            )
            t = torch.arange(t0, t0 + Tq, device=q.device)
            hidden = key_pos > t[:, None]  # [Tq, n_s + n_b]
            causal = torch.zeros(Tq, n_s + n_b, dtype=sdt, device=q.device).masked_fill_(
                hidden, float("-inf")
            )
            causal = causal.repeat(G, 1)
        out, lse = _attend(q_abs, keys, values, causal, scale)

    # pass 2: the dictionary (and pass 3: tokens kept exactly), merged with pass 1 as one softmax
    n, x = state.size, state.exact_len
    if n or x:
        if plan.key_space == "pre_rope":  # the query rotated by the read distance: centroids at 0
            q_read = rotary.apply(qf, plan.distance, step=0).reshape(B, Hkv, G * Tq, D)
        else:
            q_read = q_abs
    if n:
        bias = _count_bias(state, plan, sdt)  # [B, Hkv, 1, n]
        q_dict, k_dict, v_dict = q_read, state.keys[:, :, :n], state.values[:, :, :n]
        if grad:  # a fold rewrites the dictionary in place before the backward pass reads it
            k_dict, v_dict = k_dict.clone(), v_dict.clone()
        if read is not None:
            per_head = read.log_scale.exp().to(sdt).view(Hkv, G, 1, 1)
            q_dict = (q_read.view(B, Hkv, G, Tq, D) * per_head).view(B, Hkv, G * Tq, D)
            bias = bias * read.log_gain.exp().to(sdt).view(1, Hkv, 1, 1)
        o_dict, lse_dict = _attend(q_dict, k_dict, v_dict, bias, scale)
        if read is not None:  # + bias_h on every centroid's logit: the same softmax, e^bias_h the mass
            lse_dict = lse_dict + read.bias.to(lse_dict.dtype).view(1, Hkv, G, 1).expand(
                B, Hkv, G, Tq
            ).reshape(B, Hkv, G * Tq)
        out, lse = _merge(out, lse, o_dict, lse_dict)
    if x:
        k_x, v_x = state.k_exact[:, :, :x], state.v_exact[:, :, :x]
        if grad:
            k_x, v_x = k_x.clone(), v_x.clone()
        out, lse = _merge(out, lse, *_attend(q_read, k_x, v_x, None, scale))
    if state.attn is not None and n_b:
        _add_attention_mass(state, q_abs, lse, causal, n_s, n_b, scale)
    return out.reshape(B, Hq, Tq, D).to(q.dtype)


@torch.no_grad()
def _add_attention_mass(state: WindowMemoryState, q_abs, lse, causal, n_s: int, n_b: int, scale) -> None:
    """The attention mass each window row receives, from every query head of its group: the rows a
    chunk's most attended tokens are chosen by when it is folded."""
    s_win = (q_abs @ state.k_buf[:, :, :n_b].transpose(-1, -2)).float() * scale  # [B, Hkv, G*Tq, n_b]
    if causal is not None:
        s_win = s_win + causal[:, n_s:].float()
    state.attn[:, :, :n_b] += (s_win - lse.float().unsqueeze(-1)).exp().sum(dim=2)


def _merge(out_a, lse_a, out_b, lse_b) -> tuple[torch.Tensor, torch.Tensor]:
    """Two attention passes over disjoint keys as one softmax over their union: pass a's share of the
    mass is sigmoid(lse_a - lse_b)."""
    return torch.lerp(out_b, out_a, torch.sigmoid(lse_a - lse_b).unsqueeze(-1)), torch.logaddexp(lse_a, lse_b)


# Derived from the state and changed only by a fold (every L tokens), so kept beside it between folds
# rather than recomputed by every layer at every token: the sinks rotated by the current offset, and
# the dictionary's count bias. Keyed by `folded`; a state restored or cloned starts without them.
def _sinks_read(state: WindowMemoryState, n_s: int, rotary: Rotary) -> torch.Tensor:
    k_sink = state.k_sink[:, :, :n_s]
    if not state.folded or not n_s:
        return k_sink
    cached = state.__dict__.get("_sinks_read")
    if cached is None or cached[0] != (state.folded, n_s) or cached[1].dtype != k_sink.dtype:
        cached = ((state.folded, n_s), rotary.apply(k_sink, state.folded, step=0))
        state.__dict__["_sinks_read"] = cached
    return cached[1]


# CPU flash attention that also returns the log-sum-exp (what the OVQ op's CPU read uses too)
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _attend(q, k, v, bias, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scale + bias) v and its log-sum-exp per row: ([B, H, R, D], [B, H, R])."""
    # (the flash op's log-sum-exp carries no gradient: training reads with the math below)
    if _FLASH_CPU is not None and q.device.type == "cpu" and not _needs_grad(q, k, v, bias):
        out, lse = _FLASH_CPU(q, k, v, attn_mask=bias, scale=scale)
        return out, lse.to(q.dtype)
    s = (q @ k.transpose(-1, -2)) * scale
    if bias is not None:
        s = s + bias
    lse = torch.logsumexp(s, dim=-1)
    return torch.softmax(s, dim=-1) @ v, lse


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _count_bias(state: WindowMemoryState, plan: LayerPlan, dtype: torch.dtype) -> torch.Tensor:
    """alpha * log(count) per centroid in use, [B, Hkv, 1, size] (capped if configured)."""
    cached = state.__dict__.get("_count_bias")
    if cached is None or cached[0] != state.folded or cached[1].dtype != dtype:
        logc = state.counts[:, :, : state.size].to(torch.float32).log()
        if plan.count_cap is not None:
            logc = logc.clamp(max=plan.count_cap)
        cached = (state.folded, (plan.count_bias * logc).to(dtype).unsqueeze(2))
        state.__dict__["_count_bias"] = cached
    return cached[1]


def _drop_front(state: WindowMemoryState, n: int) -> None:
    """Forget the n oldest buffer rows (shifting the rest to the front)."""
    if n <= 0:
        return
    keep = state.buf_len - n
    if keep > 0:
        state.k_buf[:, :, :keep] = state.k_buf[:, :, n : n + keep].clone()
        state.v_buf[:, :, :keep] = state.v_buf[:, :, n : n + keep].clone()
    if state.attn is not None:
        if keep > 0:
            state.attn[:, :, :keep] = state.attn[:, :, n : n + keep].clone()
        state.attn[:, :, max(keep, 0) :] = 0  # rows new tokens will fill have received nothing yet
    state.buf_len = max(keep, 0)


def _fold(state: WindowMemoryState, plan: LayerPlan, rotary: Rotary, backend: str) -> None:
    """Fold the oldest L buffer rows (chunk c) into the dictionary (docs/ovq.md 4)."""
    L = plan.L
    chunk_k, chunk_v = state.k_buf[:, :, :L], state.v_buf[:, :, :L]  # [B, Hkv, L, D]
    if plan.key_space == "pre_rope":  # un-rotate: the centroid averages what the token said
        chunk_k = rotary.apply(chunk_k, -(plan.S + state.folded), step=-1)
    else:
        chunk_k = chunk_k.clone()
    chunk_v = chunk_v.clone()
    ops = kernels.get_ops(backend)
    n = state.size
    M = schedule_size(state.folded + L, plan.N, plan.schedule)
    unit = lambda x: x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)  # noqa: E731  nearest by cosine
    _, assign = ops.coverage_assign(unit(chunk_k), unit(state.keys[:, :, :n]), M - n)
    ops.fold_update(state.keys, state.values, state.counts, n, chunk_k, chunk_v, assign, M, inplace=True)
    if plan.X:
        _keep_exact(state, plan, chunk_k, chunk_v)
    state.size, state.folded = M, state.folded + L
    _drop_front(state, L)


def _keep_exact(state: WindowMemoryState, plan: LayerPlan, chunk_k, chunk_v) -> None:
    """Add the chunk's `exact` most attended tokens per KV head to the exact store; when it would
    overflow, it keeps the X most attended of old and new."""
    x, E = state.exact_len, plan.exact
    score, pick = state.attn[:, :, : plan.L].topk(E, dim=-1)  # [B, Hkv, E]
    take = lambda t, i: t.gather(2, i.unsqueeze(-1).expand(*i.shape, t.shape[-1]))  # noqa: E731
    keys = torch.cat([state.k_exact[:, :, :x], take(chunk_k.to(state.k_exact.dtype), pick)], dim=2)
    values = torch.cat([state.v_exact[:, :, :x], take(chunk_v.to(state.v_exact.dtype), pick)], dim=2)
    scores = torch.cat([state.exact_score[:, :, :x], score], dim=2)
    if x + E > plan.X:
        scores, keep = scores.topk(plan.X, dim=-1)
        keys, values = take(keys, keep), take(values, keep)
    m = scores.shape[-1]
    state.k_exact[:, :, :m], state.v_exact[:, :, :m], state.exact_score[:, :, :m] = keys, values, scores
    state.exact_len = m


__all__ = [
    "KINDS",
    "parse_retrofit",
    "PRESETS",
    "LayerPlan",
    "MemoryRead",
    "RetrofitConfig",
    "Rotary",
    "WindowMemoryState",
    "window_memory_attention",
]
