//! The native half of the `tidepool` Python package: tidepool-client's
//! async client under PyO3, as a blocking `Client` and an asyncio
//! `AsyncClient` that share one tokio runtime.
//!
//! Every call parses its arguments with the interpreter attached, then runs
//! as a task on the runtime with the interpreter released (other Python
//! threads run meanwhile); blocking calls wait for the task, asyncio calls
//! return an awaitable of it. Block values are the callers' own memory
//! (the buffer protocol, or raw addresses), never copied in Python.

mod bench;
mod buffers;
mod client;
mod convert;
mod rt;

use pyo3::prelude::*;

pub use client::{AsyncClient, Client};
pub use convert::Match;

/// The chain keys of `tokens` cut into blocks of `block_tokens`, exactly as
/// the server's `KV.HASH` and `KV.MATCHTOKENS` make them: block i's key
/// hashes `seed`, the key before it and its own tokens. A trailing partial
/// block gets no key.
#[pyfunction]
fn chain_keys<'py>(
    py: Python<'py>,
    seed: &Bound<'py, PyAny>,
    block_tokens: usize,
    tokens: Vec<u32>,
) -> PyResult<Vec<Bound<'py, pyo3::types::PyBytes>>> {
    if block_tokens == 0 {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "block_tokens must be at least 1",
        ));
    }
    let seed = buffers::key(seed)?;
    Ok(tidepool_client::chain_keys(&seed, block_tokens, &tokens)
        .iter()
        .map(|k| pyo3::types::PyBytes::new(py, k))
        .collect())
}

/// The cluster slot (0..16384) of a key: CRC16 of the key, or of its
/// `{hash tag}`, as Redis Cluster computes it.
#[pyfunction]
fn key_slot(key: &Bound<'_, PyAny>) -> PyResult<u16> {
    Ok(tidepool_protocol::slot::key_slot(&buffers::key(key)?))
}

/// The 64-bit hash that names a block in the server's ZMQ KV events
/// (`--kv-events-zmq`): XXH3-64 (seed 0) of its key.
#[pyfunction]
fn event_hash(key: &Bound<'_, PyAny>) -> PyResult<u64> {
    Ok(xxhash_rust::xxh3::xxh3_64(&buffers::key(key)?))
}

#[pymodule]
fn _tidepool(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    rt::add_errors(m)?;
    m.add_class::<Client>()?;
    m.add_class::<AsyncClient>()?;
    m.add_class::<Match>()?;
    m.add_function(wrap_pyfunction!(chain_keys, m)?)?;
    m.add_function(wrap_pyfunction!(key_slot, m)?)?;
    m.add_function(wrap_pyfunction!(event_hash, m)?)?;
    m.add_class::<bench::_RustBench>()?;
    m.add_function(wrap_pyfunction!(rt::_quiesce, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    let _ = py;
    Ok(())
}
