"""tidepool.vllm.TidepoolConnector, created by vLLM's own KVConnectorFactory
from a KVTransferConfig naming it by kv_connector_module_path, with vLLM's
real Request objects, against a real server at $TIDEPOOL_ADDR. No GPU here:
the paged KV cache is CPU tensors in the per-layer [blocks, heads, block
size, head dim] layout the connector sees, and the scheduler's and forward
pass's objects it reads are stand-ins with the fields it uses.
"""

import os
import unittest
import uuid
from types import SimpleNamespace

ADDR = os.environ.get("TIDEPOOL_ADDR", "127.0.0.1:6379")

try:
    import torch
    from vllm.config import KVTransferConfig
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
    from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorBase_V1, KVConnectorRole
    from vllm.sampling_params import SamplingParams
    from vllm.v1.core.sched.output import CachedRequestData
    from vllm.v1.request import Request
except Exception as e:  # scripts/test.sh installs vllm where it can
    SKIP = f"vllm is not importable here: {e}"
else:
    SKIP = None

import tidepool

BS, BLOCKS, LAYERS = 4, 16, ["model.layers.0.attn", "model.layers.1.attn", "model.layers.10.attn"]


def leases():
    with tidepool.Client(ADDR) as c:
        for line in c.command("INFO", "kvcache").decode().splitlines():
            if line.startswith("kv_leases:"):
                return int(line.split(":")[1])
    raise KeyError("kv_leases")


@unittest.skipIf(SKIP, SKIP)
class VllmConnectorTest(unittest.TestCase):
    def setUp(self):
        self.model = f"test/{uuid.uuid4().hex[:8]}"
        config = SimpleNamespace(
            kv_transfer_config=KVTransferConfig(
                kv_connector="TidepoolConnector",
                kv_connector_module_path="tidepool.vllm",
                kv_role="kv_both",
                kv_connector_extra_config={"tidepool_addr": ADDR},
            ),
            cache_config=SimpleNamespace(block_size=BS),
            model_config=SimpleNamespace(model=self.model),
            parallel_config=SimpleNamespace(tensor_parallel_size=1),
            scheduler_config=SimpleNamespace(disable_hybrid_kv_cache_manager=True),
        )
        self.sched = KVConnectorFactory.create_connector(config, KVConnectorRole.SCHEDULER, None)
        self.worker = KVConnectorFactory.create_connector(config, KVConnectorRole.WORKER, None)
        g = torch.Generator().manual_seed(7)
        self.kv = {n: torch.randn(BLOCKS, 2, BS, 8, generator=g).to(torch.bfloat16) for n in LAYERS}
        self.worker.register_kv_caches(self.kv)
        self.forward = SimpleNamespace(
            no_compile_layers={n: SimpleNamespace(kv_cache=t) for n, t in self.kv.items()},
            attn_metadata={n: None for n in LAYERS},
        )

    def tearDown(self):
        self.sched.shutdown()
        self.worker.shutdown()

    def request(self, tokens):
        return Request(uuid.uuid4().hex, tokens, SamplingParams(max_tokens=1), None)

    def output(self, new=(), scheduled=None, finished=()):
        return SimpleNamespace(
            scheduled_new_reqs=list(new),
            scheduled_cached_reqs=CachedRequestData.make_empty(),
            num_scheduled_tokens=scheduled or {},
            finished_req_ids=set(finished),
        )

    def step(self, meta):
        """A forward pass on the worker with the step's metadata."""
        self.worker.bind_connector_metadata(meta)
        self.worker.start_load_kv(self.forward)
        for name in LAYERS:
            self.worker.wait_for_layer_load(name)
            self.worker.save_kv_layer(name, self.kv[name], None)
        self.worker.wait_for_save()
        self.worker.clear_connector_metadata()

    def test_made_by_vllms_factory_from_the_module_path(self):
        self.assertIsInstance(self.sched, KVConnectorBase_V1)
        self.assertEqual(type(self.sched).__module__, "tidepool.vllm")

    def test_saved_prefix_is_matched_loaded_and_its_lease_given_back(self):
        prompt = list(range(1000, 1000 + 4 * BS + 1))  # four full blocks and a token
        a = self.request(prompt)
        self.assertEqual(self.sched.get_num_new_matched_tokens(a, 0), (0, False))
        self.sched.update_state_after_alloc(a, SimpleNamespace(get_block_ids=lambda: ([0, 1, 2, 3, 4],)), 0)
        new_a = SimpleNamespace(req_id=a.request_id, prompt_token_ids=prompt, block_ids=([0, 1, 2, 3, 4],),
                                num_computed_tokens=0)
        meta = self.sched.build_connector_meta(self.output([new_a], {a.request_id: len(prompt)}))
        self.assertEqual([(t.first, t.last) for t in meta.saves], [(0, 4)])
        self.step(meta)

        # A second prompt sharing the four blocks, then going elsewhere.
        b = self.request(prompt[: 4 * BS] + [7, 8, 9])
        before = leases()
        self.assertEqual(self.sched.get_num_new_matched_tokens(b, 0), (4 * BS, False))
        self.assertEqual(leases(), before + 1, "the match holds its blocks under a lease")
        b_blocks = [8, 9, 10, 11, 12]
        self.sched.update_state_after_alloc(b, SimpleNamespace(get_block_ids=lambda: (b_blocks,)), 4 * BS)
        new_b = SimpleNamespace(req_id=b.request_id, prompt_token_ids=b.prompt_token_ids,
                                block_ids=(b_blocks,), num_computed_tokens=4 * BS)
        meta = self.sched.build_connector_meta(self.output([new_b], {b.request_id: 3}))
        self.assertEqual([(t.first, t.last) for t in meta.loads], [(0, 4)])
        self.assertEqual(meta.saves, [], "the loaded blocks are stored already")
        self.step(meta)
        for name in LAYERS:
            self.assertTrue(torch.equal(self.kv[name][8:12], self.kv[name][0:4]), name)
        self.assertEqual(self.worker.get_block_ids_with_load_errors(), set())
        # The next step: the load has run, the lease is given back.
        self.sched.build_connector_meta(self.output())
        self.assertEqual(leases(), before)

    def test_a_block_gone_before_its_load_is_reported_for_recompute(self):
        prompt = list(range(5000, 5000 + 3 * BS + 1))
        from tidepool.vllm import TidepoolConnectorMetadata, Transfer

        # Nothing was ever saved under these tokens.
        meta = TidepoolConnectorMetadata(loads=[Transfer("r", prompt[: 3 * BS], [4, 5, 6, 7], 0, 3)])
        self.step(meta)
        self.assertEqual(self.worker.get_block_ids_with_load_errors(), {4, 5, 6})

    def test_saved_blocks_form_one_chain(self):
        prompt = list(range(9000, 9000 + 3 * BS + 2))
        r = self.request(prompt)
        new = SimpleNamespace(req_id=r.request_id, prompt_token_ids=prompt, block_ids=([1, 2, 3, 4],),
                              num_computed_tokens=0)
        self.step(self.sched.build_connector_meta(self.output([new], {r.request_id: len(prompt)})))
        keys = tidepool.chain_keys(self.worker.seed, BS, prompt[: 3 * BS])
        self.assertEqual(self.sched.client.match_prefix(keys).matched, 3)
        self.sched.client.delete(keys[:1])
        self.assertEqual(self.sched.client.exists(keys), [None, None, None])

    def test_chunked_prefill_saves_blocks_as_they_complete(self):
        prompt = list(range(7000, 7000 + 4 * BS + 1))
        r = self.request(prompt)
        new = SimpleNamespace(req_id=r.request_id, prompt_token_ids=prompt, block_ids=([0, 1],),
                              num_computed_tokens=0)
        meta = self.sched.build_connector_meta(self.output([new], {r.request_id: 2 * BS + 1}))
        self.assertEqual([(t.first, t.last) for t in meta.saves], [(0, 2)])
        self.step(meta)
        cached = CachedRequestData.make_empty()
        cached.req_ids.append(r.request_id)
        cached.new_block_ids.append(([2, 3, 4],))
        cached.num_computed_tokens.append(2 * BS + 1)
        out = SimpleNamespace(scheduled_new_reqs=[], scheduled_cached_reqs=cached,
                              num_scheduled_tokens={r.request_id: 2 * BS}, finished_req_ids=set())
        meta = self.sched.build_connector_meta(out)
        self.assertEqual([(t.first, t.last) for t in meta.saves], [(2, 4)])
        self.step(meta)
        keys = tidepool.chain_keys(self.worker.seed, BS, prompt[: 4 * BS])
        self.assertEqual(self.sched.client.match_prefix(keys).matched, 4)


if __name__ == "__main__":
    unittest.main()
