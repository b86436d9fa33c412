//! What a serving engine does with tidepool: store the KV blocks of a
//! prompt as a chain, then, for a later prompt that shares its prefix, ask
//! how much is cached and read those blocks into its own buffers.
//!
//!     cargo run --example engine -p tidepool-client -- 127.0.0.1:6379

use tidepool_client::{chain_keys, Bytes, Client, ClientError};

const BLOCK_TOKENS: usize = 16;
const BLOCK_BYTES: usize = 64 << 10;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), ClientError> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:6379".into());
    // Bulk calls from a task, as the client's documentation advises.
    tokio::spawn(async move { run(&addr).await })
        .await
        .expect("the example's task")
}

async fn run(addr: &str) -> Result<(), ClientError> {
    let client = Client::connect(addr, 4).await?;
    println!("connected to {addr}, data plane {:?}", client.data_plane());

    // The first prompt: 128 tokens, eight blocks, each block's KV bytes.
    let prompt: Vec<u32> = (0..128).collect();
    let keys = chain_keys(b"example-model", BLOCK_TOKENS, &prompt);
    let blocks: Vec<(Bytes, Bytes)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), Bytes::from(vec![i as u8; BLOCK_BYTES])))
        .collect();
    client.put_chain(&blocks, None).await?;
    println!("stored {} blocks", blocks.len());

    // A second prompt sharing the first 96 tokens, then going elsewhere.
    let mut next: Vec<u32> = (0..96).collect();
    next.extend(1000..1064);
    let next_keys = chain_keys(b"example-model", BLOCK_TOKENS, &next);
    let hit = client.match_prefix(&next_keys, Some(30_000)).await?;
    println!(
        "{} of {} blocks of the second prompt are cached",
        hit.matched,
        next_keys.len()
    );
    assert_eq!(hit.matched, 6, "96 shared tokens are six blocks");

    // Read them into the engine's buffers, then give the lease back.
    let mut storage = vec![vec![0u8; BLOCK_BYTES]; hit.matched];
    let mut bufs: Vec<&mut [u8]> = storage.iter_mut().map(|b| &mut b[..]).collect();
    let lens = client
        .get_many_into(&next_keys[..hit.matched], &mut bufs)
        .await?;
    for (i, (len, buf)) in lens.iter().zip(&storage).enumerate() {
        assert_eq!(*len, Some(BLOCK_BYTES));
        assert!(
            buf.iter().all(|b| *b == i as u8),
            "block {i} is the one stored"
        );
    }
    if let Some(lease) = hit.lease {
        client.release(lease).await?;
    }
    println!("read {} blocks back, each the one stored", hit.matched);
    Ok(())
}
