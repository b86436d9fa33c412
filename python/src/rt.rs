//! The runtime the calls run on, and how their outcomes reach Python.

use std::future::Future;
use std::sync::{Mutex, OnceLock};

use pyo3::exceptions::{PyException, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::{create_exception, IntoPyObjectExt};
use tidepool_client::ClientError;
use tokio::runtime::Runtime;

create_exception!(
    tidepool,
    TidepoolError,
    PyException,
    "A tidepool call failed. `code` is the server's error code (OOM, NOPARENT, \
     WRONGTYPE, ERR, ...) when the server refused, else None."
);
create_exception!(
    tidepool,
    ServerError,
    TidepoolError,
    "The server refused the command: `code` is its error code, `message` the rest."
);
create_exception!(
    tidepool,
    ConnectionError,
    TidepoolError,
    "The connection to the server failed (refused, reset, closed)."
);
create_exception!(
    tidepool,
    LeaseExpiredError,
    TidepoolError,
    "A get copied blocks out of the server's memory under a lease that ran out \
     before it was given back: the buffers' contents cannot be trusted. Get \
     them again, or connect with a longer read_lease_ms."
);

/// Adds the exception classes to the module.
pub fn add_errors(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let base = py.get_type::<TidepoolError>();
    base.setattr("code", py.None())?;
    base.setattr("message", py.None())?;
    m.add("TidepoolError", base)?;
    m.add("ServerError", py.get_type::<ServerError>())?;
    m.add("ConnectionError", py.get_type::<ConnectionError>())?;
    m.add("LeaseExpiredError", py.get_type::<LeaseExpiredError>())?;
    Ok(())
}

/// A client error as the Python exception of its kind.
pub fn to_py(py: Python<'_>, e: ClientError) -> PyErr {
    let text = e.to_string();
    let err = match &e {
        ClientError::Server { .. } => ServerError::new_err(text),
        ClientError::Io(_) => ConnectionError::new_err(text),
        ClientError::LeaseExpired(_) => LeaseExpiredError::new_err(text),
        _ => TidepoolError::new_err(text),
    };
    if let ClientError::Server { code, message } = &e {
        let value = err.value(py);
        // Setting attributes on a fresh exception instance cannot fail.
        let _ = value.setattr("code", code);
        let _ = value.setattr("message", message);
    }
    err
}

/// A runtime per process: tokio's threads do not survive `fork`, and
/// engines fork workers (Python's multiprocessing does by default on
/// Linux), so a child that connects gets a runtime of its own. The old
/// one is leaked: its threads are gone, and dropping it would wait on them.
struct PerProcess {
    pid: u32,
    rt: &'static Runtime,
}

static RUNTIME: Mutex<Option<PerProcess>> = Mutex::new(None);

/// This process's runtime.
pub fn runtime() -> &'static Runtime {
    let pid = std::process::id();
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    match &*slot {
        Some(p) if p.pid == pid => p.rt,
        _ => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("tidepool")
                .build()
                .expect("a tokio runtime (threads, epoll) could not be built");
            let rt: &'static Runtime = Box::leak(Box::new(rt));
            *slot = Some(PerProcess { pid, rt });
            rt
        }
    }
}

/// Runs `fut` on the runtime with the interpreter released, and waits.
pub fn block_on<T: Send + 'static>(
    py: Python<'_>,
    fut: impl Future<Output = Result<T, ClientError>> + Send + 'static,
) -> PyResult<T> {
    let rt = runtime();
    // Spawned rather than driven here: the task's socket events are then
    // handled on the runtime's threads, without a wakeup passed to this
    // one for each.
    match py.detach(|| rt.block_on(rt.spawn(fut))) {
        Ok(out) => out.map_err(|e| to_py(py, e)),
        Err(e) => Err(PyRuntimeError::new_err(format!(
            "tidepool call failed: {e}"
        ))),
    }
}

/// A blocking call's outcome, as a Python object.
pub fn sync_out<'py, T>(
    py: Python<'py>,
    fut: impl Future<Output = Result<T, ClientError>> + Send + 'static,
) -> PyResult<Bound<'py, PyAny>>
where
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    block_on(py, fut)?.into_bound_py_any(py)
}

/// The process whose runtime pyo3-async-runtimes was given (it keeps the
/// first it is given, for good).
static ASYNC_PID: OnceLock<u32> = OnceLock::new();

/// An asyncio call: the task starts now, on the runtime, and the awaitable
/// returned resolves with its outcome. Cancelling the awaitable does not
/// stop the task: a transfer under way finishes (its buffers stay held
/// until then), so memory is never released while blocks move into it.
pub fn async_out<'py, T>(
    py: Python<'py>,
    fut: impl Future<Output = Result<T, ClientError>> + Send + 'static,
) -> PyResult<Bound<'py, PyAny>>
where
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let pid = std::process::id();
    let first = *ASYNC_PID.get_or_init(|| {
        let _ = pyo3_async_runtimes::tokio::init_with_runtime(runtime());
        pid
    });
    if first != pid {
        return Err(TidepoolError::new_err(
            "the asyncio client was first used in the parent of this forked process, \
             whose runtime threads are not here: use the blocking Client in this \
             process, or use AsyncClient only after forking",
        ));
    }
    let task = runtime().spawn(fut);
    pyo3_async_runtimes::tokio::future_into_py(py, async move {
        match task.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Python::attach(|py| to_py(py, e))),
            Err(e) => Err(PyRuntimeError::new_err(format!(
                "tidepool call failed: {e}"
            ))),
        }
    })
}
