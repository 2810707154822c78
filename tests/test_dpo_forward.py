"""DPO's forward on CPUs gives the plain forward's log-probabilities and gradients, through trl's fused LM head
and a peft LoRA adapter, the way trl's DPO calls the model: the head scoring only labelled positions, the backbone
running shared prefixes once."""

import copy

import pytest
import torch
import trl.trainer.utils as trl_utils
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM
from trl.kernels import chunked_logprob
from trl.trainer.utils import add_fused_lm_head

from kka_ray.llm import dpo_forward
from kka_ray.llm.dpo_forward import score_completions_only, share_prefixes

PAD = 0


def tiny_lora_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=PAD)
    model = LlamaForCausalLM(cfg)
    add_fused_lm_head(model)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                             init_lora_weights=False, task_type="CAUSAL_LM"))
    return model.double().train()  # float64: what is left is the attention kernels' own rounding


def dpo_batch(prompts, chosen, rejected):
    """trl's layout: [chosen rows; rejected rows], prompt + completion, right-padded, completion labelled."""
    rows = [*zip(prompts, chosen, strict=True), *zip(prompts, rejected, strict=True)]
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), width), PAD)
    mask, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
    for i, (p, c) in enumerate(rows):
        ids[i, :len(p) + len(c)] = torch.tensor(p + c)
        mask[i, :len(p) + len(c)] = 1
        labels[i, len(p):len(p) + len(c)] = torch.tensor(c)
    return ids, mask, labels


def run(model, ids, mask, labels):
    model.zero_grad()
    out = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False, fused_lm_head=True)
    logps = out.log_probs.sum(1)  # per row: sum over completion tokens (0 elsewhere), as trl's DPO
    logps.pow(2).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return logps.detach(), grads


FEW_SHOT = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
CASES = {
    "few-shot prefix, own prompts and completions": (
        [FEW_SHOT + [20, 21, 22], FEW_SHOT + [23], FEW_SHOT + [24, 25, 26, 27, 28]],
        [[30, 31, 32], [33], [34, 35, 36, 37, 38, 39]], [[40, 41], [42, 43, 44, 45, 46, 47, 48], [49]]),
    "completions that start alike": (
        [FEW_SHOT + [20], FEW_SHOT + [21, 22]], [[30, 31, 32, 33], [34, 35]], [[30, 31, 40], [34, 41, 42, 43]]),
    "no pair beyond the shared prefix": ([FEW_SHOT, FEW_SHOT], [[30, 31], [32]], [[40], [41, 42, 43]]),
}


@pytest.mark.parametrize("case", CASES)
def test_shared_forward_gives_the_plain_log_probs_and_gradients(case, monkeypatch):
    calls = []
    shared_run = dpo_forward.prefix_shared_forward
    monkeypatch.setattr(dpo_forward, "prefix_shared_forward", lambda *a, **k: calls.append(1) or shared_run(*a, **k))
    plain = tiny_lora_llama()
    shared = copy.deepcopy(plain)
    share_prefixes(shared)
    batch = dpo_batch(*CASES[case])
    logps, grads = run(plain, *batch)
    shared_logps, shared_grads = run(shared, *batch)
    assert calls == [1]  # the shared path ran
    torch.testing.assert_close(shared_logps, logps, rtol=1e-10, atol=1e-10)
    assert grads.keys() == shared_grads.keys() and len(grads) == 8  # 2 layers x (q, v) x (A, B)
    for name, g in grads.items():  # the kernels differ by shape (one query per cached key here), and round so
        torch.testing.assert_close(shared_grads[name], g, rtol=1e-6, atol=1e-6 * float(g.abs().max()))


def test_calls_it_cannot_share_go_to_the_plain_forward():
    """Left padding (generation's layout), a cache, one row, rows that differ from the first token."""
    model = tiny_lora_llama().eval()
    shared = copy.deepcopy(model)
    share_prefixes(shared)
    backbone, shared_backbone = model.get_base_model().model, shared.get_base_model().model
    ids = torch.tensor([[PAD, PAD, 5, 6], [PAD, 5, 6, 7]])
    left = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
    differ = torch.tensor([[5, 6, 7, 8], [9, 6, 7, 8]])
    ones = torch.ones_like(ids)
    with torch.no_grad():
        for x, m, kw in [(ids, left, {}), (ids[1:], ones[1:], {}), (differ, ones, {}), (differ, ones,
                                                                                        {"use_cache": True})]:
            torch.testing.assert_close(shared_backbone(input_ids=x, attention_mask=m, **kw).last_hidden_state,
                                       backbone(input_ids=x, attention_mask=m, **kw).last_hidden_state)


def test_the_fused_head_scores_only_labelled_positions(monkeypatch):
    plain = trl_utils._use_triton
    scored = []
    head = chunked_logprob.ChunkedLogProbFunction.apply
    monkeypatch.setattr(chunked_logprob.ChunkedLogProbFunction, "apply",
                        lambda hidden, *a: scored.append(len(hidden)) or head(hidden, *a))
    model = tiny_lora_llama()
    ids, mask, labels = dpo_batch(*CASES["few-shot prefix, own prompts and completions"])
    logps, grads = run(model, ids, mask, labels)
    with score_completions_only():
        compact_logps, compact_grads = run(model, ids, mask, labels)
    assert trl_utils._use_triton is plain  # the process's trl as it was (a local-mode fit runs in the driver)
    labelled = int((labels[:, 1:] != -100).sum())
    assert scored == [ids.numel() - len(ids), labelled] and labelled < ids.numel() / 3
    torch.testing.assert_close(compact_logps, logps, rtol=1e-10, atol=1e-10)
    for name, g in grads.items():
        torch.testing.assert_close(compact_grads[name], g, rtol=1e-10, atol=1e-12)
