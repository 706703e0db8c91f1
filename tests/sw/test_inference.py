"""Every inference path computes the dense masked layer: exactly for integer data, to rounding for floats."""

import pytest
import torch
import torch.nn.functional as F

from sw import inference
from sw.inference import PATHS, convert_model, sparse_linear, to_dense_model
from sw.projections import NM, BlockWise, GroupWise, Pattern, Unstructured, VectorWise
from sw.tiny import make_tiny_checkpoint

STRUCTURES = {
    "unstructured": Unstructured(0.5),
    "blocks": BlockWise(4, 4, 0.5),
    "nm": NM(2, 4),
    "vector_rows": VectorWise(8, 2, axis=1),
    "vector_columns": VectorWise(8, 3, axis=0),
    "groups": GroupWise(8, 0.25),
    "pattern": Pattern(4, 8, 6),
}
OPTIONS = {"bsr": {"block_size": 4}, "pattern": {"block_size": 4}, "group": {"group_size": 8}}


def integer_layer(shape, structure, seed=0):
    """int8-valued weights pruned by ``structure``, an integer bias, all in float64."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randint(-127, 128, shape, generator=g).double()
    projected = STRUCTURES[structure](weight)
    return projected.value, projected.mask, torch.randint(-1000, 1000, (shape[0],), generator=g).double()


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("path", PATHS)
def test_every_path_is_exact_on_integer_data(path, structure):
    weight, mask, bias = integer_layer((24, 40), structure)
    x = torch.randint(-127, 128, (2, 7, 40), generator=torch.Generator().manual_seed(1)).double()
    layer = sparse_linear(path, weight, bias, mask, **OPTIONS.get(path, {}))
    assert torch.equal(layer(x), F.linear(x, weight * mask, bias))
    assert torch.equal(layer.dense_weight(), weight * mask)


@pytest.mark.parametrize("path", PATHS)
def test_corrupting_one_stored_weight_breaks_equality(path):
    weight, mask, bias = integer_layer((24, 40), "pattern")
    x = torch.randint(-127, 128, (5, 40), generator=torch.Generator().manual_seed(1)).double()
    layer = sparse_linear(path, weight, bias, mask, **OPTIONS.get(path, {}))
    stored = [b for name, b in layer.named_buffers() if name.endswith(("values", "weight", "weights")) and b.is_floating_point()]
    stored[0].view(-1)[stored[0].view(-1).nonzero()[0]] += 1
    assert not torch.equal(layer(x), F.linear(x, weight * mask, bias))


@pytest.mark.parametrize("path", ["dense", "csr", "ell", "group"])
def test_shapes_that_are_not_block_multiples_work_where_the_format_allows(path):
    weight, mask, bias = integer_layer((10, 13), "unstructured")
    x = torch.randint(-127, 128, (3, 13), generator=torch.Generator().manual_seed(2)).double()
    layer = sparse_linear(path, weight, bias, mask, **({"group_size": 4} if path == "group" else {}))
    assert torch.equal(layer(x), F.linear(x, weight * mask, bias))


@pytest.mark.parametrize("path", ["bsr", "pattern"])
def test_block_formats_refuse_partial_blocks(path):
    weight, mask, _ = integer_layer((10, 13), "unstructured")
    with pytest.raises(ValueError, match=r"\(10, 13\) is not a whole number of 4×4 blocks"):
        sparse_linear(path, weight, mask=mask, block_size=4)


def test_float_inputs_agree_to_rounding():
    g = torch.Generator().manual_seed(3)
    weight = Pattern(4, 8, 8)(torch.randn(64, 96, generator=g)).value
    x = torch.randn(4, 96, generator=g)
    reference = F.linear(x, weight)
    for path in PATHS:
        out = sparse_linear(path, weight, **OPTIONS.get(path, {}))(x)
        # float32 sums in another order: within a few ulps of the largest partial sums
        torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)


def test_tiled_paths_give_the_same_result_in_small_tiles(monkeypatch):
    weight, mask, bias = integer_layer((24, 40), "pattern")
    x = torch.randint(-127, 128, (37, 40), generator=torch.Generator().manual_seed(4)).double()
    monkeypatch.setattr(inference, "GATHER_ELEMENTS", 64)  # several tiles of rows …
    monkeypatch.setattr(inference, "TILE_TOKENS", 8)  # … and of tokens
    monkeypatch.setattr(inference, "GROUP_GATHER_ELEMENTS", 200)  # token tiles of the group path
    for path in ("ell", "pattern", "group"):
        layer = sparse_linear(path, weight, bias, mask, **OPTIONS.get(path, {}))
        assert torch.equal(layer(x), F.linear(x, weight * mask, bias))


def test_ell_pads_nothing_for_nm_and_pads_unstructured_rows():
    nm_weight, nm_mask, _ = integer_layer((24, 40), "nm")
    assert sparse_linear("ell", nm_weight, mask=nm_mask).padding == 0
    un_weight, un_mask, _ = integer_layer((24, 40), "unstructured")
    counts = un_mask.sum(1)
    assert sparse_linear("ell", un_weight, mask=un_mask).padding == int((counts.max() - counts).sum()) > 0


def test_a_kept_weight_equal_to_zero_stays_kept_and_weights_outside_the_mask_are_refused():
    weight, mask, _ = integer_layer((8, 8), "nm")
    weight[mask.nonzero()[0].tolist()] = 0.0
    for path in PATHS:
        layer = sparse_linear(path, weight, mask=mask, **OPTIONS.get(path, {}))
        assert torch.equal(layer.dense_weight(), weight)
    with pytest.raises(ValueError, match="nonzero weights lie outside the mask"):
        sparse_linear("csr", weight + 1, mask=mask)


@pytest.mark.parametrize("bad, message", [
    (dict(path="nope"), "unknown inference path 'nope'"),
    (dict(path="group", group_size=0), "group_size must be positive"),
    (dict(path="bsr", colour=1), "bad options"),
])
def test_bad_requests_are_refused(bad, message):
    weight, mask, _ = integer_layer((8, 8), "nm")
    with pytest.raises(ValueError, match=message):
        sparse_linear(bad.pop("path"), weight, mask=mask, **bad)


def test_a_wrong_input_width_is_refused():
    weight, mask, _ = integer_layer((8, 8), "nm")
    with pytest.raises(ValueError, match="input has 9 features, layer takes 8"):
        sparse_linear("ell", weight, mask=mask)(torch.zeros(2, 9, dtype=torch.float64))


@pytest.fixture(scope="module")
def pruned_bert(tmp_path_factory):
    from transformers import AutoModelForSequenceClassification

    folder = make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), ["a tiny model for inference paths"] * 4)
    model = AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="eager").double().eval()
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and ".layer." in name:
                module.weight.copy_(Pattern(4, 8, 8)(module.weight).value)
    return model


@pytest.mark.parametrize("path", PATHS)
def test_whole_model_conversion_and_back(pruned_bert, path):
    import copy

    model = copy.deepcopy(pruned_bert)
    ids = torch.randint(5, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        reference = model(input_ids=ids).logits
        state = {k: v.clone() for k, v in model.state_dict().items()}
        names = convert_model(model, path, **OPTIONS.get(path, {}))
        assert names and all(isinstance(model.get_submodule(n), PATHS[path]) for n in names)
        # float64 products summed in another order: agreement to rounding of the logits
        torch.testing.assert_close(model(input_ids=ids).logits, reference, rtol=1e-10, atol=1e-10)
        assert to_dense_model(model) == names
        assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
        assert torch.equal(model(input_ids=ids).logits, reference)
