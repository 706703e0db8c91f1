"""Data-parallel training (``sw.distributed``): two gloo processes on CPU against one process, tiny BERT.

The two-rank run and the one-process run train on the same global batches (16 examples: two shards of 8
against one batch of 16), from the same checkpoint with dropout off and ``max`` calibration (the ``mse``
rule picks a scale from a grid, a discrete choice a rounding difference can flip), so they differ only in
the order floats are summed: one process takes the mean loss over 16 examples; two processes each take
the mean over their 8, weight it by 8·2/16, and ``DistributedDataParallel`` averages the two gradients.

Between the two ranks everything must be bit-identical: Z, U, ρ, hard-pruning masks, weight pattern
pools, the attention pool, every parameter and buffer (both apply the same all-reduced gradients).

Against the one-process artifact: the same tensors, dtypes and shapes; masks, pools, pattern ids and
the attention pool identical; every other entry within ``1e-5 + 1e-3·|y|`` (floats) or ``1 + 1e-3·|y|``
(integers: one rounding step on top) — float32 rounding differences are ~1e-7 relative per step, 1e-3
leaves room for their growth over ~16 steps. AdamW, though, divides each step by √v: a weight whose
gradient is near zero (a rarely seen word or position embedding, a weight SR-STE only decays) moves by up
to a whole learning rate in a direction a rounding difference decides, and that weight's row scale then
moves the row's int8 levels, requantization multiplier and bias with it. So at most 0.05 % of the
artifact's entries may lie outside the tolerance above (about 0.01 % do), floats by at most the run's
summed learning rate (Σ lr over its steps, what AdamW can move a weight), integers by at most
``1 + 5e-2·|y|``.
"""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from sw import distributed, glue
from sw.tiny import make_tiny_checkpoint
from tests.sw.tiny_run import GLUE, tiny_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, checkpoint: str, output_dir: str, dump: str) -> None:
    if world_size > 1:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from sw.pipeline import run

    try:
        result = run(tiny_config(checkpoint, output_dir, threads=1, calibration="max"))
        model_state = {k: v.detach().clone() for k, v in result.model.state_dict().items()}
        torch.save({
            "admm": result.admm_state, "masks": result.masks, "pools": result.pools, "metrics": result.metrics,
            "failures": result.failures, "world_size": distributed.current().world_size,
            "artifact": str(result.artifact), "model_state": model_state,
            "lr_budget": sum(p.steps * p.learning_rate for p in result.phases),
        }, Path(dump) / f"rank{rank}.pt")
    finally:
        distributed.shutdown()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same tiny recipe (ADMM, pattern int8, attention pruning, export) on 2 gloo ranks and on 1 process."""
    examples = glue.load_glue_split(GLUE, "mrpc", "train", limit=300)
    checkpoint = make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_nodrop"), [e.text_a for e in examples] + [e.text_b for e in examples],
                                      dropout=0.0)
    out = {}
    for world_size in (2, 1):
        folder = tmp_path_factory.mktemp(f"world{world_size}")
        mp.start_processes(_worker, args=(world_size, _free_port(), str(checkpoint), str(folder / "run"), str(folder)),
                           nprocs=world_size, join=True, start_method="spawn")
        out[world_size] = [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
    return out


def test_ranks_hold_identical_admm_state_masks_and_pools(runs):
    rank0, rank1 = runs[2]
    assert rank0["world_size"] == rank1["world_size"] == 2
    for part in ("Z", "U", "pools"):
        assert rank0["admm"][part].keys() == rank1["admm"][part].keys() and rank0["admm"][part]
        for name in rank0["admm"][part]:
            assert torch.equal(rank0["admm"][part][name], rank1["admm"][part][name]), (part, name)
    assert rank0["admm"]["rho"] == rank1["admm"]["rho"] and rank0["admm"]["updates"] == rank1["admm"]["updates"] > 0
    assert rank0["masks"].keys() == rank1["masks"].keys() and len(rank0["masks"]) == 12
    for name in rank0["masks"]:
        assert torch.equal(rank0["masks"][name], rank1["masks"][name]), name
        assert torch.equal(rank0["pools"][name], rank1["pools"][name]), name
    assert rank0["model_state"].keys() == rank1["model_state"].keys()
    for name in rank0["model_state"]:
        assert torch.equal(rank0["model_state"][name], rank1["model_state"][name]), name
    assert rank0["metrics"] == rank1["metrics"]  # same weights, same dev scores, and the artifact's broadcast


def _outside_float_order(x: torch.Tensor, y: torch.Tensor, lr_budget: float, name: str) -> int:
    """Entries of ``x`` outside the float-order tolerance around ``y`` (see the module docstring); every
    entry must be within the outlier bound."""
    difference, size = (x.double() - y.double()).abs(), y.double().abs()
    if x.is_floating_point():
        tight, bound = 1e-5 + 1e-3 * size, torch.full_like(size, lr_budget)
    else:
        tight, bound = 1 + 1e-3 * size, 1 + 5e-2 * size
    assert bool((difference <= bound).all()), (name, float((difference - bound).max()))
    return int((difference > tight).sum())


def test_two_ranks_write_the_artifact_one_process_writes(runs):
    two, one = runs[2][0], runs[1][0]
    a = load_file(Path(two["artifact"]) / "tensors.safetensors")
    b = load_file(Path(one["artifact"]) / "tensors.safetensors")
    assert a.keys() == b.keys()
    discrete = ("mask", "pool", "pattern_ids")
    outside, entries = 0, 0
    for name in a:
        x, y = a[name], b[name]
        assert x.dtype == y.dtype and x.shape == y.shape, name
        if name.rsplit(".", 1)[-1] in discrete or name.startswith("attention."):
            assert torch.equal(x, y), name
        else:
            outside += _outside_float_order(x, y, one["lr_budget"], name)
            entries += x.numel()
    assert outside <= 5e-4 * entries, f"{outside} of {entries} artifact entries outside the float-order tolerance"
    # the two-rank ADMM state is the one-process state up to the same float differences; pools and masks equal
    outside, entries = 0, 0
    for part in ("Z", "U"):
        for name, value in one["admm"][part].items():
            outside += _outside_float_order(two["admm"][part][name], value, one["lr_budget"], f"{part} {name}")
            entries += value.numel()
    assert outside <= 5e-4 * entries, f"{outside} of {entries} Z/U entries outside the float-order tolerance"
    for name, pool in one["admm"]["pools"].items():
        assert torch.equal(two["admm"]["pools"][name], pool), name
    for name, mask in one["masks"].items():
        assert torch.equal(two["masks"][name], mask), name


def test_only_rank_zero_writes_and_the_run_is_not_flagged_differently(runs):
    (rank0, rank1), (one,) = runs[2], runs[1]
    assert rank0["artifact"] == rank1["artifact"]  # same path; rank 1 wrote nothing of its own
    folder = Path(rank0["artifact"])
    assert (folder / "manifest.json").is_file() and not list(folder.parent.glob("*.tmp*"))
    assert rank0["failures"].keys() == one["failures"].keys()


def test_sharded_batches_are_the_one_process_batches():
    """Every rank's shards, put side by side, are the one-process loader's batches in order (same
    generator draws), over several epochs; a last batch smaller than the number of ranks is skipped."""
    data = torch.utils.data.TensorDataset(torch.arange(22))
    single = torch.utils.data.DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(3))
    shards = []
    for rank in range(3):
        generator = torch.Generator().manual_seed(3)
        batches = torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(data, generator=generator), 4, drop_last=False)
        loader = torch.utils.data.DataLoader(data, batch_sampler=distributed.ShardedBatchSampler(batches, rank, 3), generator=generator)
        shards.append([[int(v) for v in batch[0]] for _ in range(2) for batch in loader])
        assert len(loader) == 5  # 22 = 5·4 + 2, and 2 < 3 ranks
    expected = [[int(v) for v in batch[0]] for _ in range(2) for batch in single]
    expected = [batch for batch in expected if len(batch) >= 3]
    assert [sum((s[i] for s in shards), []) for i in range(len(expected))] == expected
    assert all(len(s) == len(expected) for s in shards)


@pytest.mark.parametrize("rank, world, batch, message", [(2, 2, 8, "rank 2 is outside 0..1"), (0, 4, 2, "batch_size 2 is smaller than the 4 processes")])
def test_sharded_sampler_refuses_bad_arguments(rank, world, batch, message):
    batches = torch.utils.data.BatchSampler(range(10), batch, drop_last=False)
    with pytest.raises(ValueError, match=message):
        distributed.ShardedBatchSampler(batches, rank, world)


def test_single_process_context_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = distributed.init()
    assert ctx is distributed.SINGLE and ctx.is_main and not ctx.distributed
    ctx.check_replicated({"x": torch.ones(3)}, "x")  # nothing to compare against: no error
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(RuntimeError, match="not set: launch with torchrun"):
        distributed.init()


def _diverging_worker(rank: int, port: int, dump: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        ctx = distributed.current()
        same = {"a": torch.arange(6.0), "b": torch.ones(3, dtype=torch.bool)}
        ctx.check_replicated(same, "state")  # identical: passes
        weight = torch.linspace(-1, 1, 12).reshape(3, 4)
        if rank == 1:  # one ulp of one element
            weight[2, 1] = torch.nextafter(weight[2, 1], torch.tensor(2.0))
        try:
            ctx.check_replicated({**same, "layer.weight": weight}, "a target weight")
            message = "no error"
        except RuntimeError as error:
            message = str(error)
        Path(dump, f"rank{rank}.txt").write_text(message)
    finally:
        dist.destroy_process_group()


def test_replica_check_names_a_tensor_that_differs_by_one_ulp(tmp_path):
    mp.start_processes(_diverging_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    for rank in (0, 1):
        message = (tmp_path / f"rank{rank}.txt").read_text()
        assert message.startswith("a target weight differs between ranks: ['layer.weight'] (1 of 3 tensors)"), message
