"""Reference (test-oracle) implementation of OVQ attention: docs/ovq.md sections 3-5 written as code.
Deliberately literal and slow (Python loops over batch, heads, chunks and tokens); not the fast path.
The fast op is checked against `reference_ovq_attention`; S(t) is `OVQConfig.size_after`."""

import math

import torch

from ovq.memory.config import OVQConfig


def _normalise(x):
    """x / max(||x||, 1e-6) along the last dimension (L2)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)


def _one_head(q, k, v, s, config: OVQConfig):
    """One (batch, head): q, k [T, D] already normalised, v [T, Dv], s positive scalar."""
    T, L, N = q.shape[0], config.chunk_size, config.capacity
    mu_k, mu_v, cnt = [], [], []  # dictionary slots: key centroid [D], value centroid [Dv], count (int)
    outs, assign = [], []
    for c in range(math.ceil(T / L)):
        lo, hi = c * L, min((c + 1) * L, T)
        n = len(cnt)  # n_c: slots folded from chunks 0..c-1
        # ---- read (section 3.4): one softmax over [dictionary entries n < n_c] ++ [chunk keys j <= t]
        for t in range(lo, hi):
            logits = s * (k[lo : t + 1] @ q[t])
            vals = v[lo : t + 1]
            if n > 0:
                log_cnt = torch.log(torch.tensor(cnt, dtype=q.dtype, device=q.device))
                logits = torch.cat([s * (torch.stack(mu_k) @ q[t]) + log_cnt, logits])
                vals = torch.cat([torch.stack(mu_v), vals])
            outs.append(torch.softmax(logits, dim=0) @ vals)
        if hi - lo < L:
            break  # the last, incomplete chunk is read but never folded
        # ---- fold the complete chunk (section 4), after its queries were read
        m = config.size_after(hi) - n  # OVQConfig guarantees m >= 1 when n == 0
        kc, vc = k[lo:hi], v[lo:hi]
        with torch.no_grad():  # selection and assignment carry no gradient
            kd = kc.detach()
            if n == 0:  # token 0 is taken first (slot 0), coverage is k_j . k_0
                cov = kd @ kd[0]
                seeds, candidates, need = [0], range(1, L), m - 1
            else:  # coverage best_j = max_{i<n} k_j . mu_k_i
                cov = (kd @ torch.stack(mu_k).detach().T).max(dim=1).values
                seeds, candidates, need = [], range(L), m
            # m smallest coverage, ties: earlier position first; slots n..n+m-1 in this (sorted) order
            seeds += sorted(candidates, key=lambda j: (cov[j].item(), j))[:need]
            seed_slot = {j: n + i for i, j in enumerate(seeds)}
            # candidates for assignment: old slots as they were before this chunk, then the new seeds
            cand = kd[seeds] if n == 0 else torch.cat([torch.stack(mu_k).detach(), kd[seeds]])
            a = [seed_slot[j] if j in seed_slot else int(torch.argmax(cand @ kd[j])) for j in range(L)]
            # torch.argmax returns the first maximal index: ties go to the lowest slot
        for j in seeds:  # new slot: mu = seed key/value, count 1
            mu_k.append(kc[j])
            mu_v.append(vc[j])
            cnt.append(1)
        for slot in range(n + m):  # exact cumulative mean over the non-seed members
            members = [j for j in range(L) if a[j] == slot and j not in seed_slot]
            if members:
                idx = torch.tensor(members, device=k.device)
                c_old, c_new = cnt[slot], cnt[slot] + len(members)
                mu_k[slot] = (c_old * mu_k[slot] + kc[idx].sum(0)) / c_new
                mu_v[slot] = (c_old * mu_v[slot] + vc[idx].sum(0)) / c_new
                cnt[slot] = c_new
        assign.extend(a)
    size = len(cnt)
    D, Dv = k.shape[1], v.shape[1]
    pad = lambda width: torch.zeros(N - size, width, dtype=k.dtype, device=k.device)  # noqa: E731
    keys = torch.cat([torch.stack(mu_k), pad(D)]) if size else pad(D)
    values = torch.cat([torch.stack(mu_v), pad(Dv)]) if size else pad(Dv)
    counts = torch.zeros(N, dtype=torch.int64, device=k.device)
    counts[:size] = torch.tensor(cnt, dtype=torch.int64, device=k.device)
    return torch.stack(outs), keys, values, counts, size, assign


def reference_ovq_attention(q, k, v, scale, config: OVQConfig):
    """q, k: [B, H, T, D]; v: [B, H, T, Dv]; scale: float or tensor [H] (positive).
    Returns (out [B,H,T,Dv], keys [B,H,N,D], values [B,H,N,Dv], counts [B,H,N] int64,
             size int, assign) where assign[b][h] is a Python list of length (T // L) * L giving, for every
    folded token position, the dictionary slot it was assigned to (seeds: their own slot)."""
    B, H, T, _ = q.shape
    qn, kn = _normalise(q), _normalise(k)  # computed in the input dtype; values are not normalised
    outs, keys, values, counts, assign, size = [], [], [], [], [], 0
    for b in range(B):
        row = [[], [], [], [], []]
        for h in range(H):
            s = scale[h] if torch.is_tensor(scale) and scale.dim() > 0 else scale
            res = _one_head(qn[b, h], kn[b, h], v[b, h], s, config)
            for lst, x in zip(row, res[:4] + (res[5],)):
                lst.append(x)
            size = res[4]  # depends only on tokens folded: the same for every head
        for acc, lst in zip((outs, keys, values, counts), row[:4]):
            acc.append(torch.stack(lst))
        assign.append(row[4])
    return (torch.stack(outs), torch.stack(keys), torch.stack(values), torch.stack(counts), size, assign)
