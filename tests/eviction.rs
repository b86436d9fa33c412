//! A small DRAM tier flooded with chains and independent blocks: capacity is
//! never exceeded, chains stay prefix-closed, pinned and leased blocks survive.

use redis::{cmd, Value};
use tidepool_tests::Server;

const CAPACITY: u64 = 256 * 1024;
const BLOCK: usize = 1000;

fn exists(c: &mut redis::Connection, keys: &[String]) -> Vec<bool> {
    let tiers: Vec<Option<String>> = cmd("KV.EXISTS").arg(keys).query(c).unwrap();
    tiers.into_iter().map(|t| t.is_some()).collect()
}

fn chain_keys(chain: usize, len: usize) -> Vec<String> {
    (0..len).map(|i| format!("chain{chain}:{i}")).collect()
}

#[test]
fn flood_keeps_capacity_chains_and_pins() {
    let s = Server::start(&["--dram", &CAPACITY.to_string()]);
    let mut c = s.redis();
    let value = vec![7u8; BLOCK];

    // Pinned blocks and a leased chain, before the flood.
    for i in 0..5 {
        let _: () = cmd("KV.PUT")
            .arg(format!("pinned{i}"))
            .arg(&value)
            .arg("PIN")
            .query(&mut c)
            .unwrap();
    }
    let leased = chain_keys(9999, 4);
    let mut mput = cmd("KV.MPUT");
    mput.arg(leased.len());
    for k in &leased {
        mput.arg(k).arg(&value);
    }
    let _: Vec<String> = mput.arg("CHAIN").query(&mut c).unwrap();
    let m: Value = cmd("KV.MATCH")
        .arg(leased.len())
        .arg(&leased)
        .arg("LEASE")
        .arg(600_000)
        .query(&mut c)
        .unwrap();
    assert!(format!("{m:?}").contains("lease"));

    let chains = 60;
    let len = 16;
    for chain in 0..chains {
        let keys = chain_keys(chain, len);
        let mut mput = cmd("KV.MPUT");
        mput.arg(len);
        for k in &keys {
            mput.arg(k).arg(&value);
        }
        let replies: Vec<Value> = mput.arg("CHAIN").query(&mut c).unwrap();
        assert_eq!(replies.len(), len);
        for i in 0..10 {
            let _: () = cmd("SET")
                .arg(format!("solo{chain}:{i}"))
                .arg(&value)
                .query(&mut c)
                .unwrap();
        }
        // Re-read an older chain now and then so recency matters.
        if chain >= 3 {
            let old = chain_keys(chain - 3, len);
            let _: Value = cmd("KV.MATCH").arg(len).arg(&old).query(&mut c).unwrap();
        }
        let used = s.info_u64("dram_used");
        assert!(used <= CAPACITY, "used {used} > capacity {CAPACITY}");
    }
    assert!(
        s.info_u64("dram_evictions") > 500,
        "the flood must have evicted"
    );

    // Every chain is prefix-closed: present blocks form a prefix.
    let mut partial = 0;
    for chain in 0..chains {
        let present = exists(&mut c, &chain_keys(chain, len));
        let n = present.iter().take_while(|p| **p).count();
        assert!(
            present[n..].iter().all(|p| !p),
            "chain {chain} has a gap: {present:?}"
        );
        if n > 0 && n < len {
            partial += 1;
        }
    }
    assert!(
        partial > 0,
        "eviction should have trimmed some chains from the tail"
    );
    // Pinned and leased blocks survived.
    let pinned: Vec<String> = (0..5).map(|i| format!("pinned{i}")).collect();
    assert!(exists(&mut c, &pinned).iter().all(|p| *p));
    assert!(exists(&mut c, &leased).iter().all(|p| *p));
    // Recently matched chains are favoured over old unread ones.
    let recent = exists(&mut c, &chain_keys(chains - 4, len));
    assert!(
        recent[0],
        "a chain matched last round should still be there"
    );
}

#[test]
fn shrinking_capacity_live_evicts() {
    let s = Server::start(&["--dram", "1MiB"]);
    let mut c = s.redis();
    for i in 0..500 {
        let _: () = cmd("SET")
            .arg(format!("k{i}"))
            .arg(vec![1u8; BLOCK])
            .query(&mut c)
            .unwrap();
    }
    let _: () = cmd("CONFIG")
        .arg("SET")
        .arg("dram")
        .arg("100KiB")
        .query(&mut c)
        .unwrap();
    assert!(s.info_u64("dram_used") <= 100 * 1024);
    let n: i64 = cmd("DBSIZE").query(&mut c).unwrap();
    assert!(n > 0 && n < 100, "{n}");
    let newest: Option<Vec<u8>> = cmd("GET").arg("k499").query(&mut c).unwrap();
    assert!(newest.is_some(), "LRU keeps the newest");
}
