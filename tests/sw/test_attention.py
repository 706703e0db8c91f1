"""Attention-map pattern pruning against a loop reference, and through a tiny Hugging Face BERT.

The reference below is written for clarity, not speed: float64, explicit loops over (batch, head, block
row, block column) and over the pool patterns. Kept sets must match it exactly. Outputs match to float64
round-off only, not bit for bit: the reference sums block masses with ``math.fsum`` and normalises each row
on its own, while the implementation uses a batched matmul and ``torch.softmax``, which add in other
orders.
"""

import copy
import functools
import itertools
import json
import math

import pytest
import torch
from torch import nn
from transformers import AttentionInterface, BertConfig, BertForSequenceClassification, BertModel
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from sw.attention import (ATTENTION_IMPLEMENTATION, DEFAULT_ATTENTION_PATTERN, AttentionPruningConfig,
                          AttentionPruningStats, attach_attention_pool, attention_keep_mask, attention_pruning_stats,
                          build_attention_pool, collect_attention_maps, disable_attention_pruning,
                          enable_attention_pruning, keep_mask_stats, pattern_attention_forward, pattern_pruned_softmax,
                          select_attention_patterns)
from core.pattern import PatternConfig, PatternPool

TIGHT = dict(rtol=1e-12, atol=1e-12)  # float64 round-off of a different summation order (module docstring)


# ----------------------------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------------------------


def reference_keep_mask(probs, valid, masks):
    """Kept set by brute force: every pattern's mass per block, first maximum wins, valid keys only."""
    batch, heads, lq, lk = probs.shape
    k = math.isqrt(masks.shape[1])
    patterns = [[p for p in range(k * k) if masks[i, p]] for i in range(masks.shape[0])]
    values, valid = probs.tolist(), valid.expand(batch, heads, lq, lk).tolist()

    def prob(b, h, row, col):
        return values[b][h][row][col] if row < lq and col < lk else 0.0  # zero padding to multiples of k

    keep = torch.zeros(batch, heads, lq, lk, dtype=torch.bool)
    block_rows, block_cols = -(-lq // k), -(-lk // k)
    for b, h, block_row, block_col in itertools.product(*map(range, (batch, heads, block_rows, block_cols))):
        cells = [(block_row * k + p // k, block_col * k + p % k) for p in range(k * k)]
        masses = [math.fsum(prob(b, h, *cells[p]) for p in pattern) for pattern in patterns]
        best = masses.index(max(masses))  # the first maximum: ties → lowest pattern id
        for p in patterns[best]:
            row, col = cells[p]
            if row < lq and col < lk and valid[b][h][row][col]:
                keep[b, h, row, col] = True
    return keep


def reference_softmax(scores, allowed):
    """Row by row softmax over the allowed entries; a row with none stays zero."""
    out = torch.zeros_like(scores)
    for b, h, i in itertools.product(*(range(n) for n in scores.shape[:3])):
        cols = torch.nonzero(allowed[b, h, i]).flatten()
        if len(cols):
            e = torch.exp(scores[b, h, i, cols] - scores[b, h, i, cols].max())
            out[b, h, i, cols] = e / e.sum()
    return out


def reference_attention(query, key, value, valid, masks, scaling):
    """Float64 reference: ``(output [B, Lq, H, D], probabilities, kept set)``; ``valid`` bool [B, 1, Lq, Lk]."""
    query, key, value = (t.to(torch.float64) for t in (query, key, value))
    scores = query @ key.transpose(-1, -2) * scaling
    valid = valid.expand_as(scores)
    keep = reference_keep_mask(reference_softmax(scores, valid), valid, masks)
    probs = reference_softmax(scores, keep)
    return (probs @ value).transpose(1, 2), probs, keep


# ----------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------


def random_pool(config, seed):
    g = torch.Generator().manual_seed(seed)
    masks, seen = [], set()
    while len(masks) < config.pool_size:
        mask = torch.zeros(config.positions, dtype=torch.bool)
        mask[torch.randperm(config.positions, generator=g)[: config.kept_per_block]] = True
        if tuple(mask.tolist()) not in seen:
            seen.add(tuple(mask.tolist()))
            masks.append(mask)
    return PatternPool(config, torch.stack(masks))


def key_padding(lengths, lq, lk):
    """Bool [B, 1, Lq, Lk]: key j of element b is valid when j < lengths[b]."""
    keys = torch.arange(lk)[None, :] < torch.tensor(lengths)[:, None]
    return keys[:, None, None, :].expand(len(lengths), 1, lq, lk)


def as_mask_form(valid, form):
    if form == "bool":
        return valid
    if form == "additive":
        return torch.zeros(valid.shape, dtype=torch.float64).masked_fill(~valid, torch.finfo(torch.float64).min)
    assert form == "none" and bool(valid.all())
    return None


def qkv(batch, heads, lq, lk, dim=8, seed=0, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    return tuple(scale * torch.randn(batch, heads, length, dim, generator=g, dtype=torch.float64)
                 for length in (lq, lk, lk))


def attention_module(pool, training=False):
    module = nn.Module()
    attach_attention_pool(module, pool)
    return module.train(training)


def tiny_bert_config(**kwargs):
    return BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100,
                      **kwargs)


def padded_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, 100, (3, 13), generator=g)
    attention_mask = (torch.arange(13)[None, :] < torch.tensor([13, 9, 6])[:, None]).long()
    return {"input_ids": input_ids * attention_mask, "attention_mask": attention_mask}


# ----------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------


def test_config_defaults_and_json_round_trip():
    assert AttentionPruningConfig().pattern == DEFAULT_ATTENTION_PATTERN == PatternConfig(4, 8, 16)
    config = AttentionPruningConfig(pattern=PatternConfig(2, 3, 4), enabled=False)
    assert AttentionPruningConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert AttentionPruningConfig.from_dict(AttentionPruningConfig().to_dict()) == AttentionPruningConfig()


def test_attach_refuses_config_not_matching_the_pool():
    pool = random_pool(PatternConfig(2, 2, 3), seed=0)
    with pytest.raises(ValueError, match="does not match the pool"):
        attach_attention_pool(nn.Module(), pool, AttentionPruningConfig(pattern=PatternConfig(2, 2, 4)))


# ----------------------------------------------------------------------------------------------------------
# The pruned attention against the reference
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern, lq, lk, lengths", [
    (PatternConfig(4, 8, 16), 13, 13, [13, 9, 5]),
    (PatternConfig(4, 8, 16), 7, 7, [7, 2, 6]),
    (PatternConfig(4, 6, 8), 13, 7, [7, 3, 1]),  # Lq ≠ Lk, as in cross-attention
    (PatternConfig(3, 4, 8), 13, 13, [11, 13, 4]),  # k not a power of two
    (PatternConfig(4, 2, 4), 9, 9, [9, 5, 9]),  # sparse enough to leave empty rows
])
@pytest.mark.parametrize("form", ["bool", "additive", "none"])
def test_matches_loop_reference(pattern, lq, lk, lengths, form):
    if form == "none":
        lengths = [lk] * len(lengths)
    pool = random_pool(pattern, seed=lq + lk)
    query, key, value = qkv(len(lengths), 3, lq, lk, seed=lq)
    valid = key_padding(lengths, lq, lk)
    scaling = 0.7

    output, weights = pattern_attention_forward(attention_module(pool), query, key, value, as_mask_form(valid, form),
                                                scaling=scaling)
    _, keep = pattern_pruned_softmax(query @ key.transpose(-1, -2) * scaling, as_mask_form(valid, form), pool.masks)
    expected_output, expected_probs, expected_keep = reference_attention(query, key, value, valid, pool.masks, scaling)

    assert torch.equal(keep, expected_keep)
    if pattern.kept_per_block == 2:
        assert keep_mask_stats(keep, valid).empty_rows > 0  # the case covers empty rows
    assert torch.equal(weights != 0, expected_keep)  # nothing kept underflows here, so nonzero ⇔ kept
    torch.testing.assert_close(weights, expected_probs, **TIGHT)
    torch.testing.assert_close(output, expected_output, **TIGHT)
    # Where no padding meets a block, every full block keeps exactly n entries.
    k = pattern.block_size
    full = keep[..., : lq // k * k, : min(lengths) // k * k]
    per_block = full.reshape(*full.shape[:2], full.shape[2] // k, k, full.shape[3] // k, k).sum((3, 5))
    assert bool((per_block == pattern.kept_per_block).all())


def test_vectorised_blocks_follow_the_row_major_convention():
    # One block, probability on a single position p = row·k + col: the chosen pattern must contain p.
    masks = torch.tensor([[p == q for q in range(9)] for p in range(9)])  # pool of singletons, id = position
    for row, col in itertools.product(range(3), range(3)):
        probs = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
        probs[0, 0, row, col] = 1.0
        assert select_attention_patterns(probs, masks).tolist() == [[[[row * 3 + col]]]]


def test_ties_go_to_the_lower_pattern_id():
    masks = torch.tensor([[True, True, False, False], [False, False, True, True], [True, False, True, False]])
    uniform = torch.full((1, 1, 2, 2), 0.25, dtype=torch.float64)  # dyadic: every pattern keeps exactly 0.5
    assert select_attention_patterns(uniform, masks).item() == 0
    assert select_attention_patterns(uniform, masks.flip(0)).item() == 0
    # Exact tie between patterns 1 and 2 only (both keep 0.75), pattern 0 keeps less.
    probs = torch.tensor([[[[0.125, 0.0], [0.5, 0.25]]]], dtype=torch.float64)
    assert select_attention_patterns(probs, masks).item() == 1
    # An all-zero (padding) block ties everywhere → pattern 0.
    assert select_attention_patterns(torch.zeros(1, 1, 2, 2), masks).item() == 0


def test_padded_keys_never_receive_probability():
    query, key, value = qkv(3, 2, 13, 13, seed=5)
    valid = key_padding([13, 10, 3], 13, 13)
    # Keep-everything pool: every padded position is inside a chosen pattern, yet none may be kept.
    everything = PatternPool(PatternConfig(4, 16, 1), torch.ones(1, 16, dtype=torch.bool))
    for pool in (everything, random_pool(PatternConfig(4, 8, 16), seed=1)):
        for form in ("bool", "additive"):
            probs, keep = pattern_pruned_softmax(query @ key.transpose(-1, -2), as_mask_form(valid, form), pool.masks)
            padded = ~valid.expand_as(probs)
            assert not bool(keep[padded].any())
            assert bool((probs[padded] == 0).all())
    # With the keep-everything pool the pruned attention is plain masked attention.
    probs, _ = pattern_pruned_softmax(query @ key.transpose(-1, -2), valid, everything.masks)
    torch.testing.assert_close(probs, reference_softmax(query @ key.transpose(-1, -2), valid.expand_as(probs)), **TIGHT)


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
def test_empty_rows_give_zero_output_not_nan():
    # Pool of one 2×2 pattern keeping column 0 of every block: only even keys can be kept.
    pool = PatternPool(PatternConfig(2, 2, 1), torch.tensor([[True, False, True, False]]))
    query, key, value = qkv(2, 2, 5, 5, seed=2)
    query.requires_grad_(True)
    valid = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    valid[1, ..., 0::2] = False  # element 1: only odd keys valid → every row is empty
    valid[0, :, 3, 0::2] = False  # element 0: query row 3 sees odd keys only → empty

    output, weights = pattern_attention_forward(attention_module(pool), query, key, value, valid)
    assert bool(torch.isfinite(output).all()) and bool(torch.isfinite(weights).all())
    assert bool((output[1] == 0).all()) and bool((weights[1] == 0).all())
    assert bool((output[0, 3] == 0).all()) and bool((weights[0, :, 3] == 0).all())
    row_sums = weights[0].sum(-1)
    torch.testing.assert_close(row_sums[:, [0, 1, 2, 4]], torch.ones(2, 4, dtype=torch.float64), **TIGHT)
    expected_output, expected_probs, _ = reference_attention(query.detach(), key, value, valid, pool.masks, 8**-0.5)
    torch.testing.assert_close(output, expected_output, **TIGHT)

    with torch.autograd.detect_anomaly(check_nan=True):  # no NaN anywhere in the backward pass either
        output.square().sum().backward()
    assert bool(torch.isfinite(query.grad).all())
    assert bool((query.grad[1] == 0).all()) and bool((query.grad[0, :, 3] == 0).all())

    _, keep = pattern_pruned_softmax(query @ key.transpose(-1, -2), valid, pool.masks)
    stats = keep_mask_stats(keep, valid)
    assert stats.empty_rows == 2 * 5 + 2 * 1  # element 1: 2 heads × 5 rows; element 0: 2 heads × row 3
    assert stats.rows == 2 * 2 * 5
    assert stats.valid_entries == int(valid.sum()) * 2
    assert stats.kept_entries == int(keep.sum())


def test_gradient_flows_through_kept_scores_only():
    pool = random_pool(PatternConfig(4, 8, 16), seed=3)
    query, key, _ = qkv(2, 2, 11, 11, seed=4)
    valid = key_padding([11, 7], 11, 11)
    scores = (query @ key.transpose(-1, -2)).requires_grad_(True)
    probs, keep = pattern_pruned_softmax(scores, valid, pool.masks)
    weights = torch.randn(probs.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (probs * weights).sum().backward()
    assert bool((scores.grad[~keep] == 0).all())
    assert bool((scores.grad[keep] != 0).any())
    # The analytic gradient is the masked softmax's (the selection is constant around this point).
    def probs_of(s):
        return pattern_pruned_softmax(s, valid, pool.masks)[0]

    assert torch.autograd.gradcheck(probs_of, (scores.detach().requires_grad_(True),))


def test_dropout_only_in_training_mode():
    pool = random_pool(PatternConfig(4, 8, 16), seed=6)
    query, key, value = qkv(2, 2, 9, 9, seed=7)
    valid = key_padding([9, 6], 9, 9)
    _, eval_weights = pattern_attention_forward(attention_module(pool), query, key, value, valid, dropout=0.5)
    _, plain = pattern_attention_forward(attention_module(pool), query, key, value, valid)
    assert torch.equal(eval_weights, plain)

    torch.manual_seed(11)
    training = attention_module(pool, training=True)
    output, train_weights = pattern_attention_forward(training, query, key, value, valid, dropout=0.5)
    torch.manual_seed(11)
    expected = nn.functional.dropout(plain, p=0.5, training=True)
    assert torch.equal(train_weights, expected)
    assert not torch.equal(train_weights, plain)
    assert bool((train_weights[plain == 0] == 0).all())  # pruned entries stay pruned
    torch.testing.assert_close(output, (expected @ value).transpose(1, 2), **TIGHT)


def test_module_without_pool_computes_dense_attention():
    query, key, value = qkv(2, 2, 6, 6, seed=8)
    valid = key_padding([6, 4], 6, 6)
    output, weights = pattern_attention_forward(nn.Module().eval(), query, key, value, valid)
    scores = query @ key.transpose(-1, -2) * 8**-0.5
    expected = reference_softmax(scores, valid.expand_as(scores))
    torch.testing.assert_close(weights, expected, **TIGHT)
    torch.testing.assert_close(output, (expected @ value).transpose(1, 2), **TIGHT)


# ----------------------------------------------------------------------------------------------------------
# Through a Hugging Face BERT
# ----------------------------------------------------------------------------------------------------------

REFERENCE_IMPLEMENTATION = "tessera_test_reference"


def reference_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, *, masks, kept,
                                **kwargs):
    """The loop reference as a transformers attention function; it gets eager's additive float mask."""
    valid = torch.ones(query.shape[0], 1, query.shape[2], key.shape[2], dtype=torch.bool)
    if attention_mask is not None:
        valid = attention_mask == 0
    output, probs, keep = reference_attention(query, key, value, valid, masks, scaling)
    kept.append(keep)
    return output, probs


AttentionMaskInterface.register(REFERENCE_IMPLEMENTATION, eager_mask)


@pytest.fixture
def bert():
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config(attn_implementation="eager", initializer_range=0.3)).eval()


def test_the_pruned_implementation_receives_the_padding_mask(bert):
    batch = padded_batch()
    seen = []

    def spy(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        seen.append(attention_mask)
        return pattern_attention_forward(module, query, key, value, attention_mask, scaling, dropout, **kwargs)

    AttentionInterface.register("tessera_test_spy", spy)
    AttentionMaskInterface.register("tessera_test_spy", AttentionMaskInterface()[ATTENTION_IMPLEMENTATION])
    bert.set_attn_implementation("tessera_test_spy")
    bert(**batch)
    assert seen[0].dtype == torch.bool and seen[0].shape == (3, 1, 13, 13)
    assert torch.equal(seen[0], batch["attention_mask"].bool()[:, None, None, :].expand(3, 1, 13, 13))
    seen.clear()
    bert(input_ids=batch["input_ids"], attention_mask=torch.ones_like(batch["attention_mask"]))
    assert seen[0] is None  # no padding: no mask at all


def test_keep_everything_pool_equals_eager(bert):
    batch = padded_batch()
    dense = bert(**batch, output_attentions=True, output_hidden_states=True)
    everything = PatternPool(PatternConfig(4, 16, 1), torch.ones(1, 16, dtype=torch.bool))
    enable_attention_pruning(bert, everything)
    assert bert.config._attn_implementation == ATTENTION_IMPLEMENTATION
    pruned = bert(**batch, output_attentions=True, output_hidden_states=True)
    torch.testing.assert_close(pruned.logits, dense.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pruned.hidden_states[-1], dense.hidden_states[-1], rtol=1e-5, atol=1e-6)
    for pruned_map, dense_map in zip(pruned.attentions, dense.attentions, strict=True):
        torch.testing.assert_close(pruned_map, dense_map, rtol=1e-5, atol=1e-7)
    stats = attention_pruning_stats(bert)
    assert stats.kept_entries == stats.valid_entries == 2 * 4 * 13 * (13 + 9 + 6) and stats.empty_rows == 0


def test_pruned_model_equals_per_layer_reference(bert):
    batch = padded_batch()
    bert = bert.double()
    pool = build_attention_pool(collect_attention_maps(bert, [batch]), AttentionPruningConfig())
    dense = bert(**batch, output_attentions=True)

    kept = []
    AttentionInterface.register(REFERENCE_IMPLEMENTATION,
                                functools.partial(reference_attention_forward, masks=pool.masks, kept=kept))
    reference_model = copy.deepcopy(bert)
    reference_model.set_attn_implementation(REFERENCE_IMPLEMENTATION)
    expected = reference_model(**batch, output_attentions=True)

    enable_attention_pruning(bert, pool)
    pruned = bert(**batch, output_attentions=True)

    torch.testing.assert_close(pruned.logits, expected.logits, **TIGHT)
    assert len(kept) == len(pruned.attentions) == 2
    layers = zip(pruned.attentions, expected.attentions, kept, dense.attentions, strict=True)
    for layer_map, expected_map, keep, dense_map in layers:
        assert torch.equal(layer_map != 0, keep)  # the zero structure is exactly the reference kept set
        torch.testing.assert_close(layer_map, expected_map, **TIGHT)
        assert not bool(keep[1, :, :, 9:].any()) and not bool(keep[2, :, :, 6:].any())  # padded keys
        assert not torch.allclose(layer_map, dense_map)
    assert (pruned.logits - dense.logits).abs().max() > 1e-6  # pruning changed the model's output

    stats = attention_pruning_stats(bert)
    assert stats.kept_entries == sum(int(keep.sum()) for keep in kept)
    assert stats.valid_entries == 2 * 4 * 13 * (13 + 9 + 6)
    assert 0.3 < stats.kept_fraction < 0.7


def test_user_given_4d_masks_match_the_2d_mask(bert):
    batch = padded_batch()
    enable_attention_pruning(bert, random_pool(PatternConfig(4, 8, 16), seed=9))
    expected = bert(**batch).logits
    valid = batch["attention_mask"].bool()[:, None, None, :].expand(3, 1, 13, 13)
    additive = torch.where(valid, 0.0, torch.finfo(torch.float32).min)
    for mask in (valid, additive):
        logits = bert(input_ids=batch["input_ids"], attention_mask=mask).logits
        torch.testing.assert_close(logits, expected, rtol=0, atol=0)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_disable_restores_the_previous_implementation(implementation):
    torch.manual_seed(0)
    model = BertModel(tiny_bert_config(attn_implementation=implementation)).eval()
    batch = padded_batch()
    before = model(**batch).last_hidden_state
    enable_attention_pruning(model, random_pool(PatternConfig(4, 8, 16), seed=10))
    enable_attention_pruning(model, random_pool(PatternConfig(4, 8, 16), seed=12))  # enabling twice keeps the memory
    assert not torch.allclose(model(**batch).last_hidden_state, before)
    disable_attention_pruning(model)
    assert model.config._attn_implementation == implementation
    assert not any(name.startswith("tessera") for name, _ in model.named_buffers())
    assert torch.equal(model(**batch).last_hidden_state, before)
    assert attention_pruning_stats(model) == AttentionPruningStats(0, 0, 0, 0)


def test_pruning_buffers_stay_out_of_the_state_dict(bert):
    keys = set(bert.state_dict())
    enable_attention_pruning(bert, random_pool(PatternConfig(4, 8, 16), seed=13))
    assert set(bert.state_dict()) == keys


def test_disabled_config_keeps_dense_attention(bert):
    batch = padded_batch()
    before = bert(**batch).logits
    pool = random_pool(PatternConfig(4, 8, 16), seed=14)
    enable_attention_pruning(bert, pool, AttentionPruningConfig(pattern=pool.config, enabled=False))
    torch.testing.assert_close(bert(**batch).logits, before, rtol=1e-5, atol=1e-6)


def test_training_step_with_pruning_backpropagates(bert):
    batch = padded_batch()
    bert.config.attention_probs_dropout_prob = 0.1
    enable_attention_pruning(bert, random_pool(PatternConfig(4, 8, 16), seed=15))
    bert.train()
    loss = bert(**batch, labels=torch.tensor([0, 1, 1])).loss
    loss.backward()
    query_grad = bert.bert.encoder.layer[0].attention.self.query.weight.grad
    assert torch.isfinite(loss) and query_grad is not None and bool(torch.isfinite(query_grad).all())
    assert bool((query_grad != 0).any())


# ----------------------------------------------------------------------------------------------------------
# Calibration maps and the pool
# ----------------------------------------------------------------------------------------------------------


def test_collected_maps_are_dense_and_zero_on_padding(bert):
    batches = [padded_batch(seed) for seed in range(3)]
    maps = collect_attention_maps(bert, batches, max_batches=2)
    assert len(maps) == 2 * 2 and all(m.shape == (3, 4, 13, 13) and m.dtype == torch.float32 for m in maps)
    token = batches[0]["attention_mask"].bool()
    pair = token[:, None, :, None] & token[:, None, None, :]
    assert bool((maps[0][~pair.expand_as(maps[0])] == 0).all())
    torch.testing.assert_close(maps[0].sum(-1), token[:, None, :].float().expand(3, 4, 13))  # valid rows sum to 1

    # Collection is dense even with pruning on, and leaves the model as it found it.
    enable_attention_pruning(bert, random_pool(PatternConfig(4, 8, 16), seed=16))
    bert.train()
    again = collect_attention_maps(bert, iter(batches), max_batches=2)
    assert bert.config._attn_implementation == ATTENTION_IMPLEMENTATION and bert.training
    for first, second in zip(maps, again, strict=True):
        assert torch.equal(first, second)


def test_pool_from_maps_is_deterministic_and_valid(bert):
    maps = collect_attention_maps(bert, [padded_batch(seed) for seed in range(2)])
    pool = build_attention_pool(maps, AttentionPruningConfig())
    assert isinstance(pool, PatternPool) and pool.config == DEFAULT_ATTENTION_PATTERN
    PatternPool(pool.config, pool.masks.clone())  # re-validates: bool [P, k²], n per row, no duplicates
    assert torch.equal(build_attention_pool([m.clone() for m in maps], DEFAULT_ATTENTION_PATTERN).masks, pool.masks)
    # All-padding blocks carry no mass and must not change the pool.
    with_padding = build_attention_pool(maps + [torch.zeros(2, 4, 13, 13)], AttentionPruningConfig())
    assert torch.equal(with_padding.masks, pool.masks)
    with pytest.raises(ValueError, match="no attention block"):
        build_attention_pool([torch.zeros(1, 1, 4, 4)], AttentionPruningConfig())


def test_pool_keeps_more_mass_than_a_random_pool(bert):
    maps = collect_attention_maps(bert, [padded_batch(seed) for seed in range(2)])
    pool = build_attention_pool(maps, AttentionPruningConfig())

    def kept_mass(masks):
        return sum(float((m * attention_keep_mask(m, None, masks)).sum()) for m in maps)

    assert kept_mass(pool.masks) > kept_mass(random_pool(DEFAULT_ATTENTION_PATTERN, seed=17).masks)
