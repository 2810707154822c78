"""trl's DPO forward on CPUs, without paying for the same tokens twice or for tokens nothing reads.

The LM head: trl's fused head projects only the labelled (completion) positions onto the vocabulary on Triton
devices, but every position elsewhere (to keep tile shapes fixed for compilers), so on a CPU it projected the
~200 prompt tokens of each row onto 49k words, forward and backward, and that was most of a DPO step.
`score_completions_only` makes it score the labelled positions everywhere: the same log-probabilities.

The backbone: trl's DPO batch is [chosen rows; rejected rows], each row prompt + completion, right-padded: the
prompt of pair i is in rows i and i + B, and every prompt starts with the same few-shot turns (~200 tokens
against completions of at most 48), so the plain forward spends most of its time on the same tokens again.
Here the backbone runs the prefix all rows share once (batch 1), each pair's own rest of the prompt once
(batch B), and only the rows' own tails at batch 2B, each segment on the key-value cache of the ones before it.
Gradients flow through the cache, so the hidden states and the gradients are those of the plain forward (up to
the attention kernels' rounding; tested).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch

from kka_ray.llm.hf import cache_kwarg, common_prefix


@contextmanager
def score_completions_only():
    """While the block runs, trl's fused LM head scores only the positions with a label, as it does on CUDA (in
    this process; restored after, since a fit in Ray Train's local mode runs in the driver). The switch is trl's
    private `_use_triton` of trl.trainer.utils (trl 1.16, pinned in requirements/), where it decides only that;
    the kernels read their own copy. A trl without it keeps its head, with a warning."""
    import trl
    import trl.trainer.utils as trl_utils

    plain = getattr(trl_utils, "_use_triton", None)
    if not callable(plain):
        warnings.warn(f"trl {trl.__version__}: no trl.trainer.utils._use_triton; its fused LM head keeps scoring "
                      "every position on this device (slower DPO steps, same results)", stacklevel=3)
        yield
        return
    trl_utils._use_triton = _compact
    try:
        yield
    finally:
        trl_utils._use_triton = plain


def _compact(device) -> bool:
    return True


def share_prefixes(model) -> None:
    """Make the backbone of `model` (a causal LM, peft-wrapped or not) run shared prefixes once in no-cache
    forwards over right-padded batches, the calls trl's DPO makes; other calls (generation, left padding,
    gradient checkpointing) go to the backbone's own forward."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = lm.base_model  # what trl's fused LM head calls: the decoder stack without its head
    plain = backbone.forward

    def forward(input_ids=None, attention_mask=None, **kwargs):
        if _shareable(backbone, input_ids, attention_mask, kwargs):
            return prefix_shared_forward(plain, backbone.config, cache_kwarg(backbone), input_ids, attention_mask,
                                         **kwargs)
        return plain(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    backbone.forward = forward


def _shareable(backbone, ids, mask, kwargs: dict) -> bool:
    if ids is None or mask is None or kwargs.get("use_cache") or kwargs.get("position_ids") is not None:
        return False
    if any(kwargs.get(k) is not None for k in ("cache", "past_key_values", "inputs_embeds")):
        return False
    if backbone.training and backbone.is_activation_checkpointing:
        return False
    lengths = mask.sum(1, keepdim=True)
    right_padded = bool((mask == (torch.arange(mask.shape[1], device=mask.device) < lengths)).all())
    return right_padded and len(ids) > 1 and bool((lengths >= 2).all()) and bool((ids[:, 0] == ids[0, 0]).all())


NOT_PASSED_ON = ("use_cache", "position_ids", "inputs_embeds", "cache", "past_key_values")  # unset, or set here


def prefix_shared_forward(plain, config, cache_key: str, ids: torch.Tensor, mask: torch.Tensor, **kwargs):
    """What the backbone's forward `plain` returns over right-padded rows (last_hidden_state; zeros at padding),
    with the prefix of all rows run once and each pair's (rows i and i + n/2, when n is even) once."""
    from transformers import DynamicCache
    from transformers.modeling_outputs import BaseModelOutputWithPast

    kwargs = {k: v for k, v in kwargs.items() if k not in NOT_PASSED_ON}
    cache = DynamicCache(config=config)
    n, device = len(ids), ids.device
    lengths = mask.sum(1).tolist()
    rows = [ids[r, :lengths[r]].tolist() for r in range(n)]
    shared = common_prefix(rows, cap=min(lengths) - 1)  # >= 1: _shareable checked the first token
    half = n // 2 if n % 2 == 0 else 0
    pair_of = [r % half if half else r for r in range(n)]
    groups = half or n
    own = [max(shared, common_prefix([rows[g], rows[g + half]], cap=min(lengths[g], lengths[g + half]) - 1))
           if half else shared for g in range(groups)]  # where each pair's rows part

    ones = torch.ones(1, shared, dtype=mask.dtype, device=device)
    h_shared = plain(input_ids=ids[:1, :shared], attention_mask=ones, use_cache=True, **{cache_key: cache},
                     **kwargs).last_hidden_state[0]
    cache.batch_select_indices(torch.zeros(groups, dtype=torch.long, device=device))
    mid_ids, mid_mask = _segments([rows[g][shared:own[g]] for g in range(groups)], device)
    h_mid = None
    if mid_ids.shape[1]:
        h_mid = plain(input_ids=mid_ids, attention_mask=torch.cat([ones.expand(groups, -1), mid_mask], 1),
                      position_ids=shared + torch.arange(mid_ids.shape[1], device=device).expand(groups, -1),
                      use_cache=True, **{cache_key: cache}, **kwargs).last_hidden_state
    cache.batch_select_indices(torch.tensor(pair_of, device=device))
    tail_ids, tail_mask = _segments([rows[r][own[pair_of[r]]:] for r in range(n)], device)
    start = torch.tensor([own[g] for g in pair_of], device=device)[:, None]
    h_tail = plain(input_ids=tail_ids,
                   attention_mask=torch.cat([ones.expand(n, -1), mid_mask[pair_of], tail_mask], 1),
                   position_ids=start + torch.arange(tail_ids.shape[1], device=device), use_cache=True,
                   **{cache_key: cache}, **kwargs).last_hidden_state

    out = []
    for r in range(n):
        g, width = pair_of[r], own[pair_of[r]] - shared
        parts = [h_shared] + ([h_mid[g, :width]] if width else []) + [h_tail[r, :lengths[r] - own[g]]]
        row = torch.cat(parts)
        out.append(torch.cat([row, row.new_zeros(ids.shape[1] - len(row), row.shape[1])]))
    return BaseModelOutputWithPast(last_hidden_state=torch.stack(out))


def _segments(parts: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids (pad 0, masked) and their mask."""
    width = max(map(len, parts))
    ids = torch.zeros(len(parts), width, dtype=torch.long)
    mask = torch.zeros(len(parts), width, dtype=torch.long)
    for i, p in enumerate(parts):
        ids[i, :len(p)], mask[i, :len(p)] = torch.tensor(p, dtype=torch.long), 1
    return ids.to(device), mask.to(device)
