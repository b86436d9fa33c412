//! The Rust side of `python -m tidepool.bench`: the same tidepool-client
//! calls the Python methods make, timed in Rust on the same runtime, so the
//! benchmark's ratio is what the Python layer costs.

use std::time::Instant;

use bytes::Bytes;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use tidepool_client::{ClientError, ClientOptions};

use crate::rt::block_on;

/// Times `rounds` rounds of `op` ("put", "get" or "match") with the Rust
/// client over `plane`: put and get move `blocks` blocks of `block` bytes
/// in calls of `batch` blocks (seconds per round); match asks for a
/// stored chain of `blocks` keys once a round (seconds per call). Puts go
/// to fresh keys each round, deleted after it (untimed).
#[pyfunction]
#[pyo3(signature = (addr, plane, op, block, blocks, batch, rounds))]
#[allow(clippy::too_many_arguments)]
pub fn _bench_rust(
    py: Python<'_>,
    addr: String,
    plane: &str,
    op: &str,
    block: usize,
    blocks: usize,
    batch: usize,
    rounds: usize,
) -> PyResult<Vec<f64>> {
    if block == 0 || blocks == 0 || batch == 0 || !matches!(op, "put" | "get" | "match") {
        return Err(PyValueError::new_err(
            "op is put, get or match; sizes at least 1",
        ));
    }
    let plane = match plane {
        "shm" => tidepool_client::PlaneChoice::Shm,
        "tcp" => tidepool_client::PlaneChoice::Tcp,
        "inline" => tidepool_client::PlaneChoice::Inline,
        _ => tidepool_client::PlaneChoice::Auto,
    };
    let op = op.to_string();
    block_on(py, async move {
        let client = tidepool_client::Client::connect_with(
            &addr,
            ClientOptions {
                plane,
                ..ClientOptions::default()
            },
        )
        .await?;
        // Distinct memory per block, as the Python side has.
        let values: Vec<Bytes> = (0..blocks)
            .map(|i| Bytes::from(vec![i as u8; block]))
            .collect();
        let nonce = std::process::id();
        let keys = |round: usize| -> Vec<Bytes> {
            (0..blocks)
                .map(|i| Bytes::from(format!("rust-bench-{nonce}-{round}-{i}")))
                .collect()
        };
        let mut out = Vec::with_capacity(rounds);
        match op.as_str() {
            "put" => {
                for r in 0..rounds {
                    let pairs: Vec<(Bytes, Bytes)> =
                        keys(r).into_iter().zip(values.clone()).collect();
                    let t = Instant::now();
                    for chunk in pairs.chunks(batch) {
                        for res in client.put_many(chunk, false, None).await? {
                            res?;
                        }
                    }
                    out.push(t.elapsed().as_secs_f64());
                    let ks: Vec<Bytes> = pairs.into_iter().map(|(k, _)| k).collect();
                    client.delete(&ks).await?;
                }
            }
            "get" => {
                let ks = keys(usize::MAX);
                let pairs: Vec<(Bytes, Bytes)> = ks.iter().cloned().zip(values).collect();
                for res in client.put_many(&pairs, false, None).await? {
                    res?;
                }
                let mut storage = vec![vec![0u8; block]; blocks];
                for _ in 0..rounds {
                    let t = Instant::now();
                    for (kc, bc) in ks.chunks(batch).zip(storage.chunks_mut(batch)) {
                        let mut bufs: Vec<&mut [u8]> = bc.iter_mut().map(|b| &mut b[..]).collect();
                        let got = client.get_many_into(kc, &mut bufs).await?;
                        if got.iter().any(|g| *g != Some(block)) {
                            return Err(ClientError::Unexpected("a block went missing".into()));
                        }
                    }
                    out.push(t.elapsed().as_secs_f64());
                }
                client.delete(&ks).await?;
            }
            _ => {
                let chain: Vec<(Bytes, Bytes)> = keys(usize::MAX)
                    .into_iter()
                    .map(|k| (k, Bytes::from_static(b"m")))
                    .collect();
                client.put_chain(&chain, None).await?;
                let ks: Vec<Bytes> = chain.into_iter().map(|(k, _)| k).collect();
                for _ in 0..rounds {
                    let t = Instant::now();
                    let m = client.match_prefix(&ks, None).await?;
                    out.push(t.elapsed().as_secs_f64());
                    if m.matched != ks.len() {
                        return Err(ClientError::Unexpected("the chain went missing".into()));
                    }
                }
                client.delete(&ks[..1]).await?;
            }
        }
        Ok(out)
    })
}
