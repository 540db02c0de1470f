"""Log-likelihood of token sequences under a captioning decoder (MaMMUT, CoCa, cap), batched.

The quantity is the one LAION's clip_benchmark branch `log_likelihood_eval` scores
(`score_aligned` in `metrics/generative_zeroshot_classification.py`): for a sequence
`t_0 = SOT, t_1, ..., t_n = EOT` (then pads), `sum_{j=1..n} log_softmax(logits_{j-1})[t_j]`, the
log-softmax over the whole vocabulary of the decoder's next-token logits given the image; the EOT
counts, pads never do, no length normalisation.

The branch repeats every image's tokens once per prompt, so each prompt recomputes the
image-to-text projection and every cross-attention key/value of the image, and takes a
[images x prompts, L, vocab] log-softmax at once. Here, with the same numbers:

- `context` (what cross-attention reads, per image) is computed once per image batch, and each cross
  layer's keys/values once per image: all prompts of an image are one query set of that image;
- prompts are sorted so that those sharing leading tokens (a template's words before `{c}`) sit
  together; in every chunk of prompts the shared leading positions run once per image and the
  per-prompt positions attend to their cached self-attention keys/values (exact under the causal
  mask: a position never reads a later one);
- each chunk is cut to its own longest prompt (pads after the EOT cannot change earlier positions);
- the LM head runs only at positions whose target is not a pad, in row blocks of bounded memory,
  with the log-softmax as `logit[target] - logsumexp(logits)` in float32.

A family exposes its decoder as a `CaptionDecoder`; this module does the rest for every family.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

# Rows of vocabulary logits per LM-head block: 2**26 float32 elements (256 MiB) whatever the vocabulary.
LM_HEAD_ELEMENTS = 2**26
DEFAULT_PROMPT_BATCH = 64
MAX_PACKED = 1024  # own positions per chunk (packed self-attention is quadratic in them)


@dataclass
class CaptionDecoder:
    """A family's captioning decoder, as the scoring functions read it.

    `embed` maps token ids [S, L] to the decoder's image-independent input [S, L, D] (MaMMUT: token +
    position embeddings; CoCa: its unimodal text tower, causal); `layers` are the decoder blocks in
    order, each `("self", block)` (causal self-attention) or `("cross", block)` (attention to the
    image context); `final` is the last norm and `head` [D, V] the LM head. Blocks are open_clip-style
    residual blocks: `ln_1`, `attn` (an `nn.MultiheadAttention`), optional `ls_1`, `ln_1_kv` (cross),
    `ln_2`/`mlp`/`ls_2` (the MLP may be absent).
    """

    embed: object  # Callable[[Tensor], Tensor]
    layers: list[tuple[str, nn.Module]]
    final: nn.Module
    head: torch.Tensor
    pad_id: int = 0
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- attention

def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[..., L, D] -> [..., H, L, D/H]."""
    *lead, length, width = x.shape
    return x.view(*lead, length, n_heads, width // n_heads).transpose(-3, -2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """[..., H, L, hd] -> [..., L, H*hd]."""
    *lead, n_heads, length, hd = x.shape
    return x.transpose(-3, -2).reshape(*lead, length, n_heads * hd)


def _qkv(attn: nn.MultiheadAttention, x: torch.Tensor, which: str) -> list[torch.Tensor]:
    """The packed in-projection of `attn` applied to `x` for the parts in `which` ("q", "kv", "qkv")."""
    d = attn.embed_dim
    parts = {"q": slice(0, d), "kv": slice(d, 3 * d), "qkv": slice(0, 3 * d)}[which]
    w = attn.in_proj_weight[parts]
    b = attn.in_proj_bias[parts] if attn.in_proj_bias is not None else None
    return [_heads(t, attn.num_heads) for t in F.linear(x, w, b).chunk(len(which), dim=-1)]


def _out(blk: nn.Module, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Residual after attention, then the block's MLP (if it has one)."""
    a = blk.attn.out_proj(_merge(a))
    ls_1 = getattr(blk, "ls_1", None)
    x = x + (ls_1(a) if ls_1 is not None else a)
    if getattr(blk, "mlp", None) is not None:
        m = blk.mlp(blk.ln_2(x))
        ls_2 = getattr(blk, "ls_2", None)
        x = x + (ls_2(m) if ls_2 is not None else m)
    return x


def _cross_kv(dec: CaptionDecoder, context: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
    """Per layer, the keys/values [B, H, N, hd] of the image context (None for self-attention layers)."""
    out = []
    for kind, blk in dec.layers:
        out.append(tuple(_qkv(blk.attn, blk.ln_1_kv(context), "kv")) if kind == "cross" else None)
    return out


# ------------------------------------------------------------------------------------------- plans

@dataclass
class _Chunk:
    """Prompts scored together. Positions 0..p-1 are the same in every prompt (run once per image);
    each prompt's own positions p..n-2 are packed into one sequence of S positions (no padding; the
    last token, the EOT, predicts nothing and never enters the decoder), each attending to the shared
    positions and to its own prompt's earlier ones (`mask`)."""

    index: torch.Tensor        # [P] positions of its prompts in the caller's order
    tokens: torch.Tensor       # [P, Lc] the chunk's tokens cut to its longest prompt
    prefix: int                # p
    own_prompt: torch.Tensor   # [S] prompt of each packed position
    own_pos: torch.Tensor      # [S] its position in the prompt
    own_target: torch.Tensor   # [S] the token it predicts (the next one; never a pad)
    mask: torch.Tensor         # [S, p + S] bool: may attend


@dataclass
class SequencePlan:
    """Token sequences arranged for scoring (sorted, chunked, shared prefixes found); build it once
    and score many image batches with it."""

    n: int
    chunks: list[_Chunk]


def _lengths(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Tokens up to and including the last non-pad one (SOT..EOT)."""
    nonpad = tokens != pad_id
    pos = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    return torch.where(nonpad, pos + 1, torch.zeros_like(pos)).amax(dim=1)


def plan_sequences(tokens: torch.Tensor, prompt_batch_size: int | None = None, pad_id: int = 0,
                   share_prefix: bool = True) -> SequencePlan:
    """Sort `tokens` [P, L] lexicographically (sequences with common leading tokens together) and cut
    them into chunks of `prompt_batch_size`, each with its shared prefix length."""
    size = int(prompt_batch_size or DEFAULT_PROMPT_BATCH)
    if size < 1:
        raise ValueError(f"prompt_batch_size must be >= 1, not {prompt_batch_size}")
    rows = tokens.cpu().tolist()
    order = sorted(range(len(rows)), key=rows.__getitem__) if share_prefix else list(range(len(rows)))
    lengths = _lengths(tokens.cpu(), pad_id)
    ordered = tokens.cpu()[torch.tensor(order, dtype=torch.long)] if order else tokens.cpu()
    chunks = []
    start = 0
    while start < len(order):
        stop = min(start + size, len(order))
        # packed self-attention is quadratic in the chunk's positions: at most MAX_PACKED of them
        packed = (lengths[torch.tensor(order[start:stop])] - 1).clamp(min=0).cumsum(dim=0)
        stop = start + max(1, int((packed <= MAX_PACKED).sum()))
        if share_prefix and stop - start > 4:
            # where to end the chunk: a chunk of n prompts sharing p leading positions saves p (n - 1) / n
            # positions per prompt; take the largest n within 80 % of the best saving (big chunks run
            # faster), at least 4 prompts. With many classes a template's prompts fill whole chunks; with
            # few (10 classes), a chunk ends where its template's prompts end.
            block = ordered[start:stop]
            lcp = (block == block[:1]).long().cumprod(dim=1).sum(dim=1)  # with the first prompt; non-increasing
            shortest = lengths[torch.tensor(order[start:stop])].cummin(dim=0).values
            n = torch.arange(1, len(block) + 1)
            saving = torch.minimum(lcp, shortest - 1).clamp(min=0) * (n - 1) / n
            ok = (saving >= 0.8 * saving.max()) & (n >= 4)
            stop = start + int(n[ok].max()) if bool(ok.any()) else stop
        idx = torch.tensor(order[start:stop], dtype=torch.long)
        start = stop
        lens = lengths[idx]
        cut = max(int(lens.max()), 1)
        toks = tokens.cpu()[idx, :cut]
        prefix = 0
        if share_prefix and int(lens.min()) >= 2:
            same = (toks == toks[:1]).all(dim=0)
            lcp = int(same.long().cumprod(0).sum())
            prefix = min(lcp, int(lens.min()) - 1)  # every prompt keeps >= 1 own position (its EOT)
        chunks.append(_pack_chunk(idx, toks, lens, prefix, tokens.device))
    return SequencePlan(len(rows), chunks)


def _pack_chunk(idx: torch.Tensor, toks: torch.Tensor, lens: torch.Tensor, prefix: int,
                device: torch.device) -> _Chunk:
    own = [(i, k) for i in range(len(idx)) for k in range(prefix, int(lens[i]) - 1)]
    prompt = torch.tensor([i for i, _ in own], dtype=torch.long)
    pos = torch.tensor([k for _, k in own], dtype=torch.long)
    target = toks[prompt, pos + 1] if own else torch.zeros(0, dtype=torch.long)
    same = prompt[:, None] == prompt[None, :]
    causal = pos[None, :] <= pos[:, None]
    mask = torch.cat([torch.ones(len(own), prefix, dtype=torch.bool), same & causal], dim=1)
    return _Chunk(idx, toks.to(device), prefix, prompt.to(device), pos.to(device), target.to(device), mask.to(device))


# ------------------------------------------------------------------------------------------- LM head

def _target_logprobs(hidden: torch.Tensor, head: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log_softmax(hidden @ head)[target] per row [R], in row blocks of bounded memory (float32)."""
    rows = max(1, LM_HEAD_ELEMENTS // head.shape[1])
    out = []
    for s in range(0, hidden.shape[0], rows):
        logits = hidden[s:s + rows] @ head
        target = logits.gather(1, targets[s:s + rows, None]).squeeze(1).float()
        logits = logits.float()  # a copy under autocast (bf16 logits), the same tensor in fp32
        peak = logits.amax(dim=-1, keepdim=True)
        lse = logits.sub_(peak).exp_().sum(dim=-1).log_() + peak.squeeze(1)  # logsumexp, in place: one pass less
        out.append(target - lse)
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


# ------------------------------------------------------------------------------------------- scoring

def _score_chunk(dec: CaptionDecoder, kv: list, chunk: _Chunk, n_images: int) -> torch.Tensor:
    """[B, P] scores of one chunk's prompts against every image of the batch."""
    toks, p, B = chunk.tokens, chunk.prefix, n_images
    P = toks.shape[0]
    S = chunk.own_prompt.shape[0]
    emb = dec.embed(toks)                                                  # [P, Lc, D], image-independent
    D = emb.shape[-1]
    x0 = emb[:1, :p].expand(B, p, D) if p else None                        # shared positions, per image
    xs = emb[chunk.own_prompt, chunk.own_pos].expand(B, S, D) if S else None  # own positions, packed
    for (kind, blk), layer_kv in zip(dec.layers, kv):
        if kind == "self":
            if p:
                q0, k0, v0 = _qkv(blk.attn, blk.ln_1(x0), "qkv")           # [B, H, p, hd]
            if S:
                qs, ks, vs = _qkv(blk.attn, blk.ln_1(xs), "qkv")           # [B, H, S, hd]
                if p:
                    ks, vs = torch.cat([k0, ks], dim=2), torch.cat([v0, vs], dim=2)
                xs = _out(blk, xs, F.scaled_dot_product_attention(qs, ks, vs, attn_mask=chunk.mask))
            if p:
                x0 = _out(blk, x0, F.scaled_dot_product_attention(q0, k0, v0, is_causal=True))
        else:
            kc, vc = layer_kv                                              # [B, H, N, hd], once per image
            q = torch.cat([x for x in (x0, xs) if x is not None], dim=1)    # one query set per image
            (q,) = _qkv(blk.attn, blk.ln_1(q), "q")
            a = F.scaled_dot_product_attention(q, kc, vc)
            if p:
                x0 = _out(blk, x0, a[:, :, :p])
            if S:
                xs = _out(blk, xs, a[:, :, p:])

    head = dec.head
    scores = torch.zeros(B, P, dtype=torch.float32, device=toks.device)
    if p:
        h0 = dec.final(x0)                                                 # [B, p, D]
        if p > 1:  # targets inside the shared prefix: the same for every prompt of the chunk
            t = toks[0, 1:p].expand(B, p - 1).reshape(-1)
            scores += _target_logprobs(h0[:, :-1].reshape(-1, D), head, t).view(B, p - 1).sum(1, keepdim=True)
        last = (h0[:, -1] @ head).float().log_softmax(dim=-1)              # predicts each prompt's first own token
        scores += last.gather(1, toks[:, p].expand(B, P))
    if S:  # every packed position predicts a real token of its prompt
        hs = dec.final(xs)
        lp = _target_logprobs(hs.reshape(-1, D), head, chunk.own_target.repeat(B)).view(B, S)
        scores.index_add_(1, chunk.own_prompt, lp)
    return scores


@torch.no_grad()
def sequence_scores(dec: CaptionDecoder, context: torch.Tensor, tokens: torch.Tensor | SequencePlan,
                    prompt_batch_size: int | None = None) -> torch.Tensor:
    """log p(sequence | image) for every image of `context` [B, N, Dc] and every sequence of `tokens`
    [P, L] (or a plan of them): [B, P] float32. No Python loop over prompts beyond chunks of
    `prompt_batch_size` (memory: about B x prompt_batch_size x length x width per activation)."""
    plan = tokens if isinstance(tokens, SequencePlan) else plan_sequences(tokens, prompt_batch_size, dec.pad_id)
    B = context.shape[0]
    kv = _cross_kv(dec, context)
    out = torch.empty(B, plan.n, dtype=torch.float32, device=context.device)
    for chunk in plan.chunks:
        out[:, chunk.index.to(out.device)] = _score_chunk(dec, kv, chunk, B)
    return out


@torch.no_grad()
def aligned_scores(dec: CaptionDecoder, context: torch.Tensor, tokens: torch.Tensor,
                   prompt_batch_size: int | None = None) -> torch.Tensor:
    """log p(tokens[i] | image i) [B]: one sequence per image (caption selection's pairs)."""
    if tokens.shape[0] != context.shape[0]:
        raise ValueError(f"aligned scoring: {context.shape[0]} images but {tokens.shape[0]} sequences")
    size = int(prompt_batch_size or DEFAULT_PROMPT_BATCH)
    out = []
    for s in range(0, context.shape[0], size):
        ctx, toks = context[s:s + size], tokens[s:s + size]
        kv = _cross_kv(dec, ctx)
        cut = max(int(_lengths(toks, dec.pad_id).max()), 1)
        toks = toks[:, :cut]
        b, L = toks.shape
        x = dec.embed(toks)                                               # [b, L, D], each its own image
        D = x.shape[-1]
        for (kind, blk), layer_kv in zip(dec.layers, kv):
            if kind == "self":
                q, k, v = _qkv(blk.attn, blk.ln_1(x), "qkv")
                x = _out(blk, x, F.scaled_dot_product_attention(q, k, v, is_causal=True))
            else:
                (q,) = _qkv(blk.attn, blk.ln_1(x), "q")
                x = _out(blk, x, F.scaled_dot_product_attention(q, *layer_kv))
        h = dec.final(x)[:, :-1]
        m = toks[:, 1:] != dec.pad_id
        lp = _target_logprobs(h[m].reshape(-1, D), dec.head, toks[:, 1:][m])
        out.append(torch.zeros(b, dtype=torch.float32, device=x.device).index_add_(0, m.nonzero()[:, 0], lp))
    return torch.cat(out) if out else context.new_zeros(0, dtype=torch.float32)


@torch.no_grad()
def prior_scores(dec: CaptionDecoder, tokens: torch.Tensor, prompt_batch_size: int | None = None) -> torch.Tensor:
    """The branch's image-free prior of each sequence [P]: its `model.forward(image=None,
    image_embs=None, text=tokens)` with `score_aligned`, as the fork computes it.

    Quirk (kept for parity): without image embeddings the fork's decoder drops its causal mask as well
    as its cross-attention, so position j also reads tokens j+1.. (the one it predicts included) and the
    pads of `tokens`: the prior depends on how far `tokens` is cut. Pass the tokens cut exactly as the
    branch cuts them (to the longest sequence of the set scored together). Input `tokens[:, :-1]`,
    targets `tokens[:, 1:]`, pads excluded.
    """
    size = int(prompt_batch_size or DEFAULT_PROMPT_BATCH)
    out = []
    for s in range(0, tokens.shape[0], size):
        toks = tokens[s:s + size]
        x = dec.embed(toks)[:, :-1]
        D = x.shape[-1]
        for kind, blk in dec.layers:
            if kind == "self":
                q, k, v = _qkv(blk.attn, blk.ln_1(x), "qkv")
                x = _out(blk, x, F.scaled_dot_product_attention(q, k, v))
        h = dec.final(x)
        m = toks[:, 1:] != dec.pad_id
        lp = _target_logprobs(h[m].reshape(-1, D), dec.head, toks[:, 1:][m])
        out.append(torch.zeros(toks.shape[0], dtype=torch.float32, device=x.device).index_add_(0, m.nonzero()[:, 0], lp))
    return torch.cat(out) if out else tokens.new_zeros(0, dtype=torch.float32)
