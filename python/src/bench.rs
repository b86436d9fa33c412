//! The Rust side of `python -m tidepool.bench`: the same tidepool-client
//! calls the Python methods make, timed in Rust on the same runtime, so the
//! benchmark's ratio is what the Python layer costs.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use tidepool_client::{ClientError, ClientOptions};

use crate::rt::block_on;

/// A long-lived Rust client, as the Python client it is compared with is:
/// both then map the server's arena once, and neither pays page faults
/// that the other does not.
#[pyclass(frozen)]
pub struct _RustBench {
    client: Arc<tidepool_client::Client>,
}

#[pymethods]
impl _RustBench {
    /// Connects over `plane` ("shm", "tcp", "inline" or "auto").
    #[new]
    fn new(py: Python<'_>, addr: String, plane: &str) -> PyResult<_RustBench> {
        let plane = match plane {
            "shm" => tidepool_client::PlaneChoice::Shm,
            "tcp" => tidepool_client::PlaneChoice::Tcp,
            "inline" => tidepool_client::PlaneChoice::Inline,
            _ => tidepool_client::PlaneChoice::Auto,
        };
        let client = block_on(py, async move {
            tidepool_client::Client::connect_with(
                &addr,
                ClientOptions {
                    plane,
                    ..ClientOptions::default()
                },
            )
            .await
        })?;
        Ok(_RustBench {
            client: Arc::new(client),
        })
    }

    /// Times `rounds` rounds of `op` ("put", "get" or "match"): put and
    /// get move `blocks` blocks of `block` bytes in calls of `batch`
    /// blocks (seconds per round); match asks for a stored chain of
    /// `blocks` keys once a round (seconds per call). Puts go to fresh
    /// keys each round, deleted after it (untimed); a first round of each
    /// is not timed, as on the Python side.
    fn run(
        &self,
        py: Python<'_>,
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
        let (client, op) = (self.client.clone(), op.to_string());
        block_on(py, async move {
            bench(&client, &op, block, blocks, batch, rounds).await
        })
    }
}

async fn bench(
    client: &tidepool_client::Client,
    op: &str,
    block: usize,
    blocks: usize,
    batch: usize,
    rounds: usize,
) -> Result<Vec<f64>, ClientError> {
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
    match op {
        "put" => {
            for r in 0..=rounds {
                let pairs: Vec<(Bytes, Bytes)> = keys(r).into_iter().zip(values.clone()).collect();
                let t = Instant::now();
                for chunk in pairs.chunks(batch) {
                    for res in client.put_many(chunk, false, None).await? {
                        res?;
                    }
                }
                if r > 0 {
                    out.push(t.elapsed().as_secs_f64());
                }
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
            for r in 0..=rounds {
                let t = Instant::now();
                for (kc, bc) in ks.chunks(batch).zip(storage.chunks_mut(batch)) {
                    let mut bufs: Vec<&mut [u8]> = bc.iter_mut().map(|b| &mut b[..]).collect();
                    let got = client.get_many_into(kc, &mut bufs).await?;
                    if got.iter().any(|g| *g != Some(block)) {
                        return Err(ClientError::Unexpected("a block went missing".into()));
                    }
                }
                if r > 0 {
                    out.push(t.elapsed().as_secs_f64());
                }
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
            for r in 0..=rounds {
                let t = Instant::now();
                let m = client.match_prefix(&ks, None).await?;
                if r > 0 {
                    out.push(t.elapsed().as_secs_f64());
                }
                if m.matched != ks.len() {
                    return Err(ClientError::Unexpected("the chain went missing".into()));
                }
            }
            client.delete(&ks[..1]).await?;
        }
    }
    Ok(out)
}
