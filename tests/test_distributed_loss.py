"""SupCon under 2 gloo processes + DDP equals single-process SupCon on the concatenated batch (value and grads)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from bookmatch.training.losses import SupConLoss

WORLD_SIZE = 2
IN_DIM, OUT_DIM = 8, 6

# (labels of the global batch, rows held by rank 0; rank 1 holds the rest). Chunks of one book sit on BOTH
# ranks; some books have one chunk (anchors without positives); the last cases split the batch unevenly.
CASES = [
    ([0, 1, 2, 0, 1, 3, 0, 2], 4),
    ([5, 5, 5, 5, 6, 7, 8, 6], 4),
    ([0, 1, 2, 3, 0, 4, 5, 6], 4),
    ([3, 1, 3, 2, 1, 2, 3], 4),
    ([0, 1, 0, 1, 2, 2, 9], 2),
    ([0, 1, 2, 3, 4, 5], 3),  # no positive anywhere: zero loss, zero gradients
]
TEMPERATURE = 0.1


def _case_inputs(index: int, size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(100 + index)
    return torch.randn(size, IN_DIM, dtype=torch.float64, generator=generator)


def _encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(IN_DIM, OUT_DIM, dtype=torch.float64)


def _worker(rank: int, rendezvous: str, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from bookmatch.training.distributed import gather_no_grad, gather_with_grad

    # A file store: no port to probe and no store-server thread in rank 0 that could be torn down while rank 1
    # still talks to it (the likely source of a rare "terminate called" abort at exit under a TCP store).
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD_SIZE)
    try:
        results = []
        model = DistributedDataParallel(_encoder())
        for index, (labels, split) in enumerate(CASES):
            inputs = _case_inputs(index, len(labels))
            rows = slice(0, split) if rank == 0 else slice(split, len(labels))
            for gather_grad in (True, False):
                model.zero_grad()
                loss_fn = SupConLoss(TEMPERATURE, rank=rank, world_size=WORLD_SIZE, gather_with_grad=gather_grad)
                out = loss_fn(model(inputs[rows]), torch.tensor(labels)[rows])
                out["contrastive_loss"].backward()
                per_rank = out["contrastive_loss"].detach().clone()
                dist.all_reduce(per_rank)
                results.append(
                    {
                        "case": index,
                        "gather_grad": gather_grad,
                        "global": out["contrastive_global"].item(),
                        "mean_of_rank_losses": per_rank.item() / WORLD_SIZE,
                        "grads": [p.grad.clone() for p in model.parameters()],
                    }
                )
        # GradCache under DDP: mini-batches of 2, only the last re-embedding backward all-reduces.
        from bookmatch.training.gradcache import CachedSupCon

        for index, (labels, split) in enumerate(CASES):
            inputs = _case_inputs(index, len(labels))
            rows = slice(0, split) if rank == 0 else slice(split, len(labels))
            model.zero_grad()
            cached = CachedSupCon(SupConLoss(TEMPERATURE, rank=rank, world_size=WORLD_SIZE), mini_batch_size=2)
            total, terms = cached.step_with_terms(
                model, inputs[rows], torch.tensor(labels)[rows], no_sync=model.no_sync
            )
            results.append(
                {
                    "cached_case": index,
                    "global": terms["contrastive_global"].item(),
                    "grads": [p.grad.clone() for p in model.parameters()],
                }
            )
        # The gather helpers themselves, on uneven sizes: values and the gradient routed back to the owner.
        local = torch.arange(3 + rank, dtype=torch.float64).mul(rank + 1).reshape(-1, 1).requires_grad_(True)
        gathered = gather_with_grad(local, WORLD_SIZE)
        (gathered * torch.arange(1, gathered.shape[0] + 1, dtype=torch.float64)[:, None]).sum().backward()
        results.append(
            {
                "gathered": gathered.detach(),
                "labels": gather_no_grad(torch.tensor([rank] * (1 + rank)), WORLD_SIZE),
                "local_grad": local.grad.clone(),
            }
        )
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        del model  # DDP's reducer holds the process group: release it before the group is destroyed
        dist.barrier()  # neither rank tears down its side while the other still communicates
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    import torch.multiprocessing as mp

    out_dir = tmp_path_factory.mktemp("ddp")
    try:
        mp.spawn(_worker, args=(str(out_dir / "rendezvous-1"), str(out_dir)), nprocs=WORLD_SIZE, join=True)
    except mp.ProcessExitedException:
        # Two full-suite runs (of many, over twelve sessions) saw a worker abort ("terminate called without an
        # active exception", inside torch) that 64 standalone runs, 4 at a time on 2 cores, never showed: once more.
        mp.spawn(_worker, args=(str(out_dir / "rendezvous-2"), str(out_dir)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE)]


def _single_process(index: int) -> tuple[float, list[torch.Tensor]]:
    labels, _ = CASES[index]
    model = _encoder()
    out = SupConLoss(TEMPERATURE)(model(_case_inputs(index, len(labels))), torch.tensor(labels))
    out["contrastive_loss"].backward()
    return out["contrastive_loss"].item(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("index", range(len(CASES)))
def test_ddp_supcon_equals_single_process_on_concatenated_batch(rank_results, index):
    expected_loss, expected_grads = _single_process(index)
    for rank in range(WORLD_SIZE):
        result = next(r for r in rank_results[rank] if r.get("case") == index and r["gather_grad"])
        assert result["global"] == pytest.approx(expected_loss, rel=1e-12, abs=1e-12)
        assert result["mean_of_rank_losses"] == pytest.approx(expected_loss, rel=1e-12, abs=1e-12)
        for grad, expected in zip(result["grads"], expected_grads):
            assert torch.allclose(grad, expected, atol=1e-6, rtol=0), (rank, grad, expected)
            assert torch.allclose(grad, expected, atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("index", range(len(CASES)))
def test_ddp_gradcache_equals_single_process_on_concatenated_batch(rank_results, index):
    expected_loss, expected_grads = _single_process(index)
    for rank in range(WORLD_SIZE):
        result = next(r for r in rank_results[rank] if r.get("cached_case") == index)
        assert result["global"] == pytest.approx(expected_loss, rel=1e-12, abs=1e-12)
        for grad, expected in zip(result["grads"], expected_grads):
            assert torch.allclose(grad, expected, atol=1e-12, rtol=1e-9)


def test_gather_without_grad_keeps_the_value_but_not_the_gradient(rank_results):
    differs = False
    for index in range(len(CASES)):
        expected_loss, expected_grads = _single_process(index)
        result = next(r for r in rank_results[0] if r.get("case") == index and not r["gather_grad"])
        assert result["global"] == pytest.approx(expected_loss, rel=1e-12, abs=1e-12)
        differs |= not all(torch.allclose(g, e, atol=1e-6) for g, e in zip(result["grads"], expected_grads))
    assert differs, "without gathered gradients the DDP gradients should drop the cross-rank terms"


def test_gather_helpers_handle_uneven_sizes_and_route_gradients_back(rank_results):
    rank0, rank1 = rank_results[0][-1], rank_results[1][-1]
    expected = torch.tensor([0.0, 1.0, 2.0, 0.0, 2.0, 4.0, 6.0], dtype=torch.float64)[:, None]
    assert torch.equal(rank0["gathered"], expected) and torch.equal(rank1["gathered"], expected)
    assert rank0["labels"].tolist() == [0, 1, 1] and rank1["labels"].tolist() == [0, 1, 1]
    # Each rank's loss weights global row j by j + 1; both ranks' gradients are summed into the owning rank.
    assert rank0["local_grad"].flatten().tolist() == [2.0, 4.0, 6.0]
    assert rank1["local_grad"].flatten().tolist() == [8.0, 10.0, 12.0, 14.0]


def test_helpers_are_no_ops_without_a_process_group():
    from bookmatch.training.distributed import gather_no_grad, gather_with_grad

    tensor = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(tensor, world_size=4) is tensor
    assert torch.equal(gather_no_grad(tensor, world_size=1), tensor)
    labels = torch.tensor([0, 0, 1])
    values = SupConLoss(world_size=4)(tensor, labels)
    assert torch.allclose(values["contrastive_loss"], SupConLoss()(tensor, labels)["contrastive_loss"])


def test_single_process_reference_uses_the_plain_formula():
    # Guards the reference itself: the loss on a batch is what F.cross_entropy-style SupCon gives for 2 rows.
    z = F.normalize(torch.randn(2, 4, dtype=torch.float64), dim=-1)
    value = SupConLoss(TEMPERATURE)(z, torch.tensor([1, 1]))["contrastive_loss"]
    assert value.item() == pytest.approx(0.0, abs=1e-12)  # the only other row is the positive: log(1) = 0
