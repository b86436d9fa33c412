"""vLLM's external KV cache on tidepool: the connector vLLM loads by module
path, driven as vLLM's scheduler and workers drive it (a prompt's blocks
saved after its prefill; a later prompt sharing them matched, loaded into
its own blocks of the paged cache, the lease given back).

Serving with it (vLLM 0.34):

    vllm serve Qwen/Qwen3-8B --kv-transfer-config '{
        "kv_connector": "TidepoolConnector",
        "kv_connector_module_path": "tidepool.vllm",
        "kv_role": "kv_both",
        "kv_connector_extra_config": {"tidepool_addr": "127.0.0.1:6379"}}'

No GPU is needed here: the paged cache is CPU tensors. Runs against
$TIDEPOOL_ADDR (default 127.0.0.1:6379); exits 0 when the loaded blocks equal
the saved ones, 77 when vllm is not installed here.
"""

import os
import sys
from types import SimpleNamespace

try:
    import torch
    from vllm.config import KVTransferConfig
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
    from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole
    from vllm.sampling_params import SamplingParams
    from vllm.v1.core.sched.output import CachedRequestData
    from vllm.v1.request import Request
except Exception as e:
    print(f"vllm is not installed: {e}")
    sys.exit(77)

ADDR = os.environ.get("TIDEPOOL_ADDR", "127.0.0.1:6379")
BS = 16
LAYERS = [f"model.layers.{i}.self_attn.attn" for i in range(4)]


def main():
    config = SimpleNamespace(
        kv_transfer_config=KVTransferConfig(
            kv_connector="TidepoolConnector",
            kv_connector_module_path="tidepool.vllm",
            kv_role="kv_both",
            kv_connector_extra_config={"tidepool_addr": ADDR},
        ),
        cache_config=SimpleNamespace(block_size=BS),
        model_config=SimpleNamespace(model="example/model"),
        parallel_config=SimpleNamespace(tensor_parallel_size=1),
        scheduler_config=SimpleNamespace(disable_hybrid_kv_cache_manager=True),
    )
    scheduler = KVConnectorFactory.create_connector(config, KVConnectorRole.SCHEDULER, None)
    worker = KVConnectorFactory.create_connector(config, KVConnectorRole.WORKER, None)
    # The paged KV cache: per layer [blocks, kv heads, block size, head dim].
    kv = {n: torch.randn(32, 4, BS, 64).to(torch.bfloat16) for n in LAYERS}
    forward = SimpleNamespace(no_compile_layers={n: SimpleNamespace(kv_cache=t) for n, t in kv.items()})

    def step(meta):
        worker.bind_connector_metadata(meta)
        worker.start_load_kv(forward)
        for name in LAYERS:
            worker.save_kv_layer(name, kv[name], None)
        worker.wait_for_save()
        worker.clear_connector_metadata()

    def output(req, scheduled):
        return SimpleNamespace(scheduled_new_reqs=[req], scheduled_cached_reqs=CachedRequestData.make_empty(),
                               num_scheduled_tokens={req.req_id: scheduled}, finished_req_ids=set())

    # Request 1: 64 prompt tokens prefilled into blocks 0-4; 4 full blocks saved.
    prompt = list(range(100, 165))
    r1 = Request("r1", prompt, SamplingParams(max_tokens=1), None)
    scheduler.get_num_new_matched_tokens(r1, 0)
    new1 = SimpleNamespace(req_id="r1", prompt_token_ids=prompt, block_ids=([0, 1, 2, 3, 4],), num_computed_tokens=0)
    step(scheduler.build_connector_meta(output(new1, len(prompt))))

    # Request 2 shares those 64 tokens: matched in one KV.MATCHTOKENS.
    r2 = Request("r2", prompt[:64] + [7, 7, 7], SamplingParams(max_tokens=1), None)
    hit, _ = scheduler.get_num_new_matched_tokens(r2, 0)
    assert hit == 64, hit
    blocks = [10, 11, 12, 13, 14]
    scheduler.update_state_after_alloc(r2, SimpleNamespace(get_block_ids=lambda: (blocks,)), hit)
    new2 = SimpleNamespace(req_id="r2", prompt_token_ids=r2.prompt_token_ids, block_ids=(blocks,),
                           num_computed_tokens=hit)
    step(scheduler.build_connector_meta(output(new2, 3)))
    for name in LAYERS:
        assert torch.equal(kv[name][10:14], kv[name][0:4]), name
    print(f"{hit} tokens of request 2 loaded from tidepool instead of computed")
    scheduler.shutdown()
    worker.shutdown()
    print("vllm_connector: ok")


if __name__ == "__main__":
    main()
