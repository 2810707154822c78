"""The transformers backend's fast paths give what the plain ones give: nucleus filtering over the top tokens,
and the shared prompt prefix computed once."""

import numpy as np
import pytest
import torch
from transformers import TopPLogitsWarper

from kka_ray.llm.hf import SeededSampler, load_causal_lm, shared_prefix_inputs, top_p_filter


@pytest.mark.parametrize("scale", [0.3, 2.0, 8.0])
@pytest.mark.parametrize("top_p", [0.5, 0.95])
def test_top_p_filter_matches_transformers(scale, top_p):
    scores = torch.randn(16, 5000, generator=torch.Generator().manual_seed(0)) * scale
    ours, theirs = top_p_filter(scores, top_p), TopPLogitsWarper(top_p)(None, scores.clone())
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    assert torch.equal(ours[~torch.isinf(ours)], scores[~torch.isinf(theirs)])


def test_top_p_filter_sorts_only_candidates_yet_equals_the_full_sort():
    """Rows from flat to peaked over a real vocabulary's width: the bucket pruning drops only tokens the full
    sort drops too."""
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(12, 49152, generator=g) * torch.linspace(0.2, 8.0, 12)[:, None]
    probs = scores.softmax(-1)
    vals, idx = probs.sort(-1, descending=True)
    full = torch.full_like(scores, float("-inf")).scatter_(
        1, idx, torch.where((vals.cumsum(-1) - vals) < 0.95, scores.gather(1, idx), float("-inf")))
    assert torch.equal(top_p_filter(scores, 0.95), full)


def test_shared_prefix_generation_equals_plain_padding(tiny):
    from kka_ray.llm import LMConfig

    tok, model = load_causal_lm(LMConfig(model=tiny["lm"], dtype="float32"))
    texts = ["shared few shot turns then row one", "shared few shot turns then a longer second row",
             "shared few shot turns then row one"]
    ids, mask, cache = shared_prefix_inputs(model, tok, texts, "cpu", new_tokens=12)
    assert cache is not None and cache.get_seq_length() > 0
    assert (mask.sum(1) == torch.tensor([len(tok(t)["input_ids"]) for t in texts])).all()

    def sample(**inputs):
        out = model.generate(**inputs, do_sample=False, max_new_tokens=12, pad_token_id=tok.pad_token_id,
                             logits_processor=[SeededSampler([1, 2, 3], 0.9, 0.95)])
        return out[:, -12:]

    plain = tok(texts, return_tensors="pt", padding=True)
    expected = sample(**plain).numpy()  # transformers' own padding and dynamic cache
    np.testing.assert_array_equal(sample(input_ids=ids, attention_mask=mask, cache=cache).numpy(), expected)
    ids, mask, cache = shared_prefix_inputs(model, tok, texts, "cpu", new_tokens=12, share=False)
    assert cache.get_seq_length() == 0  # nothing shared: an empty static cache that generate fills
    np.testing.assert_array_equal(sample(input_ids=ids, attention_mask=mask, cache=cache).numpy(), expected)
