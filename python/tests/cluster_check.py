"""The Python client in cluster mode, against the nodes named by
$TIDEPOOL_CLUSTER (comma-separated seeds). tests/python.rs starts three
nodes on a real etcd and runs this (it is not named test_*: without a
cluster there is nothing for it to do).
"""

import asyncio
import os
import unittest
import uuid

import tidepool

SEEDS = os.environ["TIDEPOOL_CLUSTER"].split(",")


class ClusterTest(unittest.TestCase):
    def test_a_chain_across_the_nodes(self):
        with tidepool.Client.connect_cluster(SEEDS) as c:
            nodes = c.cluster_nodes()
            self.assertEqual(len(nodes), len(SEEDS), nodes)
            seed = uuid.uuid4().hex.encode()
            keys = tidepool.chain_keys(seed, 4, list(range(64 * 4)))
            values = [bytes([i]) * (64 << 10) for i in range(len(keys))]
            c.put_chain(list(zip(keys, values)))
            # The chain's blocks are spread over the nodes by their slots.
            holding = 0
            for seed_addr in SEEDS:
                with tidepool.Client(seed_addr, connections=1) as node:
                    holding += node.command("DBSIZE") > 0
            self.assertGreater(holding, 1, "the chain's blocks all went to one node")
            hit = c.match_prefix(keys, lease_ms=30_000)
            self.assertEqual(hit.matched, len(keys))
            self.assertEqual(c.match_tokens(seed, 4, list(range(64 * 4))).matched, len(keys))
            bufs = [bytearray(64 << 10) for _ in keys]
            self.assertEqual(c.get_many_into(keys, bufs), [64 << 10] * len(keys))
            self.assertEqual([bytes(b) for b in bufs], values)
            self.assertTrue(c.release(hit.lease))
            self.assertEqual(c.exists(keys[:3]), ["dram"] * 3)
            self.assertEqual(c.delete(keys[:1]), 1)
            self.assertEqual(c.match_prefix(keys).matched, 0)

    def test_asyncio_in_cluster_mode(self):
        async def main():
            c = await tidepool.AsyncClient.connect_cluster(SEEDS)
            keys = tidepool.chain_keys(uuid.uuid4().hex, 2, list(range(40)))
            await c.put_chain([(k, b"v" * 100) for k in keys])
            self.assertEqual((await c.match_prefix(keys)).matched, len(keys))
            self.assertEqual(await c.get_many(keys[:2]), [b"v" * 100] * 2)
            c.close()

        asyncio.run(main())


if __name__ == "__main__":
    unittest.main()
