//! Replies as Python objects.

use bytes::Bytes;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};
use pyo3::IntoPyObjectExt;
use tidepool_client::{ClientError, Frame, Stats};

use crate::rt::to_py;

/// How many leading keys of a chain are stored, and the lease holding
/// them when one was asked for (give it back with `release`).
#[pyclass(frozen, eq, get_all, module = "tidepool")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    /// How many leading keys are stored.
    pub matched: usize,
    /// The lease id, or None when no lease was asked for (or nothing matched).
    pub lease: Option<u64>,
}

#[pymethods]
impl Match {
    #[new]
    #[pyo3(signature = (matched, lease=None))]
    fn new(matched: usize, lease: Option<u64>) -> Match {
        Match { matched, lease }
    }

    fn __repr__(&self) -> String {
        match self.lease {
            Some(l) => format!("Match(matched={}, lease={l})", self.matched),
            None => format!("Match(matched={}, lease=None)", self.matched),
        }
    }
}

impl From<tidepool_client::Match> for Match {
    fn from(m: tidepool_client::Match) -> Match {
        Match {
            matched: m.matched,
            lease: m.lease,
        }
    }
}

/// A block read: `bytes`, or None for a miss.
pub struct Blob(pub Option<Bytes>);

impl<'py> IntoPyObject<'py> for Blob {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(match self.0 {
            Some(b) => PyBytes::new(py, &b).into_any(),
            None => py.None().into_bound(py),
        })
    }
}

/// Blocks read: a list of `bytes` or None.
pub struct Blobs(pub Vec<Option<Bytes>>);

impl<'py> IntoPyObject<'py> for Blobs {
    type Target = PyList;
    type Output = Bound<'py, PyList>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, self.0.into_iter().map(Blob))
    }
}

/// Per-block outcomes of a batch put: None where the block is stored, the
/// exception (not raised) where it was refused.
pub struct PutResults(pub Vec<Result<(), ClientError>>);

impl<'py> IntoPyObject<'py> for PutResults {
    type Target = PyList;
    type Output = Bound<'py, PyList>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let items: Vec<Bound<'py, PyAny>> = self
            .0
            .into_iter()
            .map(|r| match r {
                Ok(()) => py.None().into_bound(py),
                Err(e) => to_py(py, e).into_value(py).into_bound(py).into_any(),
            })
            .collect();
        PyList::new(py, items)
    }
}

/// A raw command's reply: simple strings as `str`, bulk strings as `bytes`,
/// integers as `int`, arrays as lists, nil as None; an error inside an
/// array is the exception (not raised).
pub struct Reply(pub Frame);

impl<'py> IntoPyObject<'py> for Reply {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(match self.0 {
            Frame::SimpleString(s) => PyString::new(py, &String::from_utf8_lossy(&s)).into_any(),
            Frame::BulkString(b) => PyBytes::new(py, &b).into_any(),
            Frame::Integer(i) => i.into_bound_py_any(py)?,
            Frame::Null => py.None().into_bound(py),
            Frame::Error(e) => to_py(py, ClientError::server(&e))
                .into_value(py)
                .into_bound(py)
                .into_any(),
            Frame::Array(items) => PyList::new(py, items.into_iter().map(Reply))?.into_any(),
        })
    }
}

/// `KV.STATS` as a dict: `tiers` (per tier, its counters), `matches`,
/// `keys_queried`, `keys_matched`, `prefix_hit_ratio`.
pub struct StatsOut(pub Stats);

impl<'py> IntoPyObject<'py> for StatsOut {
    type Target = PyDict;
    type Output = Bound<'py, PyDict>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.0;
        let out = PyDict::new(py);
        out.set_item("tiers", s.tiers)?;
        out.set_item("matches", s.matches)?;
        out.set_item("keys_queried", s.keys_queried)?;
        out.set_item("keys_matched", s.keys_matched)?;
        out.set_item("prefix_hit_ratio", s.prefix_hit_ratio)?;
        Ok(out)
    }
}
