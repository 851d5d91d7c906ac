"""The GPU path, checked on CPU: what collectives refuse (their runs in a 2-rank group are in tests/test_engine.py,
whose spawned groups start DeepSpeed once), the resources every Ray workload requests (a local Ray with logical GPUs
assigns them), the device prefetcher's resume position and the host-side mask ramp."""

from __future__ import annotations

import json

import pytest
import torch

from msg_ray.data.loader import BlockLoader
from msg_ray.masked_layers import GrowthMask
from msg_ray.train import collectives
from msg_ray.train.prefetch import DevicePrefetcher


def test_an_nccl_only_group_refuses_a_cpu_tensor():
    with pytest.raises(RuntimeError, match="NCCL-only process group"):
        collectives.check_device("nccl", "cpu")
    collectives.check_device("nccl", "cuda:0")
    collectives.check_device("cpu:gloo,cuda:nccl", "cpu")  # a group with a CPU backend takes both
    collectives.check_device("gloo", "cpu")
    assert collectives.max_over_ranks(3.5, "meta") == 3.5  # no group: no collective, no tensor


# -- the device prefetcher ------------------------------------------------------------------------------------------


def test_prefetcher_resumes_at_the_first_batch_training_did_not_use():
    blocks = torch.arange(40 * 4).reshape(40, 4)
    straight = DevicePrefetcher(BlockLoader(blocks, batch_size=4, seed=3), "cpu")
    expected = [next(straight)["input_ids"] for _ in range(14)]  # crosses an epoch (10 batches each)
    first = DevicePrefetcher(BlockLoader(blocks, batch_size=4, seed=3), "cpu")
    got = [next(first)["input_ids"] for _ in range(6)]
    # data/tokens_seen and data/passes count what training used, not the batch held ahead
    assert first.tokens_seen == 6 * 4 * 4 and first.passes == 6 * 4 / 40
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint records (one batch is held ahead)
    resumed = DevicePrefetcher(BlockLoader(blocks, batch_size=4, seed=3), "cpu")
    resumed.load_state_dict(state)
    got += [next(resumed)["input_ids"] for _ in range(8)]
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    first.load_state_dict(state)  # a rollback on the same prefetcher drops the batch it held ahead
    assert torch.equal(next(first)["input_ids"], expected[6])


# -- the mask ramp reads no device tensor -------------------------------------------------------------------------


def test_growth_mask_ramp_touches_no_device_value():
    mask = GrowthMask(6, 4, c=0.25).to("meta")  # a meta tensor cannot be read: any int()/float() of it raises
    mask.set(0.5)
    assert mask.c == 0.5
    restored = GrowthMask(6, 2)
    restored.load_state_dict(GrowthMask(6, 4, c=0.75).state_dict())
    assert restored.c == 0.75 and restored._n_old == 4
    restored.set(0.9)
    assert restored.value.tolist() == pytest.approx([1, 1, 1, 1, 0.9, 0.9])


# -- what every Ray workload asks for ---------------------------------------------------------------------------------


def _run_config(tmp_path, **kw):
    from msg_ray.train.config import RunConfig

    return RunConfig.from_dict(
        {
            "name": "gpu-request",
            "schedule": "mini-sch1-b",
            "data": {"source": "wikitext2", "tokenizer": "bpe:1024", "seq_len": 32},
            "storage_path": str(tmp_path / "ray"),
            "cpus_per_worker": 1.0,
            **kw,
        }
    )


def _checkpoint(tmp_path, use_gpu: bool):
    d = tmp_path / f"ckpt-gpu{int(use_gpu)}"
    d.mkdir()
    (d / "meta.json").write_text(json.dumps({"config": {"use_gpu": use_gpu}}))
    (d / "model.pt").write_bytes(b"")
    return d


@pytest.fixture(scope="module")
def ray_gpus():
    """A local Ray with 2 logical GPUs (no CUDA needed: Ray only counts them). The suite's shared Ray has none, so
    it is stopped here and the next module's ``ray_local`` starts it again."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


def test_each_workload_requests_a_gpu_when_its_run_used_one(tmp_path):
    from ray.train import ScalingConfig

    from msg_ray.compare.evaluate import EvalConfig, eval_task_options
    from msg_ray.compare.resources import trial_concurrency, trial_resources
    from msg_ray.compare.runner import extend_options
    from msg_ray.train.worker import worker_resources

    gpu, cpu = _run_config(tmp_path, use_gpu=True), _run_config(tmp_path)
    assert trial_resources(gpu) == {"CPU": 1.0, "GPU": 1.0} and trial_resources(cpu) == {"CPU": 1.0}
    scaling = ScalingConfig(num_workers=2, use_gpu=True, resources_per_worker=worker_resources(gpu))
    assert scaling.num_gpus_per_worker == 1 and scaling.num_cpus_per_worker == 1
    assert trial_concurrency(None, gpu, {"CPU": 64.0, "GPU": 2.0}) == 2  # sized by GPUs, not CPUs
    assert trial_concurrency(5, gpu, {"GPU": 4.0}) == 4 and trial_concurrency(3, gpu, {"GPU": 4.0}) == 3
    assert trial_concurrency(None, cpu, {"CPU": 64.0, "GPU": 2.0}) is None
    on_gpu, on_cpu = _checkpoint(tmp_path, True), _checkpoint(tmp_path, False)
    assert eval_task_options(on_gpu, EvalConfig())["num_gpus"] == 1  # evaluated where it trained
    assert eval_task_options(on_cpu, EvalConfig())["num_gpus"] == 0
    assert eval_task_options(on_gpu, EvalConfig(use_gpu=False))["num_gpus"] == 0  # the user's choice wins
    assert extend_options(str(on_gpu))["num_gpus"] == 1 and extend_options(str(on_cpu))["num_gpus"] == 0


def test_ray_assigns_the_requested_gpus(tmp_path, ray_gpus):
    from ray import tune

    from msg_ray.compare.evaluate import EvalConfig, eval_task_options
    from msg_ray.compare.resources import trial_concurrency, trial_resources

    def _assigned() -> dict:  # nested: Ray ships it by value (this test module is not importable in a worker)
        import ray

        from msg_ray.compare.resources import task_device

        return {**ray.get_runtime_context().get_assigned_resources(), "device": task_device(True).type}

    opts = eval_task_options(_checkpoint(tmp_path, True), EvalConfig())
    got = ray_gpus.get(ray_gpus.remote(_assigned).options(**opts).remote())
    assert got == {"CPU": 1.0, "GPU": 1.0, "device": "cpu"}  # no CUDA here: the task falls back to the CPU

    cfg = _run_config(tmp_path, use_gpu=True)
    trainable = tune.with_resources(lambda config: None, trial_resources(cfg))  # as compare's parallel mode
    assert trainable._resources.bundles == [{"CPU": 1.0, "GPU": 1.0}]
    assert trial_concurrency(None, cfg, ray_gpus.cluster_resources()) == 2
