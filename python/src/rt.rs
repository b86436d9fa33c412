//! The runtime the calls run on, and how their outcomes reach Python.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Mutex;

use pyo3::exceptions::{PyException, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
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
    let joined = py.detach(|| rt.block_on(rt.spawn(fut)));
    crate::buffers::release_pending(py);
    match joined {
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

/// Deliveries of asyncio results in progress (see [`async_out`]).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// Set by the interpreter's exit (`quiesce`): no delivery starts after it.
static EXITING: AtomicBool = AtomicBool::new(false);

/// `tidepool._aio.deliver(future, ok, value)`, run on the event loop.
static DELIVER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// An asyncio call: the task starts now, on the runtime, and the awaitable
/// returned (a future of the running loop) resolves with its outcome.
/// Cancelling the awaitable does not stop the task: a transfer under way
/// finishes (its buffers stay held until then), so memory is never
/// released while blocks move into it.
///
/// The result reaches the loop through `call_soon_threadsafe`, called by a
/// runtime thread with the interpreter attached. A Python 3.11 interpreter
/// that is shutting down kills a thread that takes it back (after the
/// write to the loop's wake-up socket, say), and killing a thread inside
/// Rust code aborts the process; so deliveries are counted, and the
/// interpreter's exit (an `atexit` hook, [`quiesce`]) stops new ones and
/// waits for those under way.
pub fn async_out<'py, T>(
    py: Python<'py>,
    fut: impl Future<Output = Result<T, ClientError>> + Send + 'static,
) -> PyResult<Bound<'py, PyAny>>
where
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
    let future = event_loop.call_method0("create_future")?;
    let deliver = DELIVER
        .get_or_try_init(py, || {
            py.import("tidepool._aio")?
                .getattr("deliver")
                .map(Bound::unbind)
        })?
        .clone_ref(py);
    let (lp, fu) = (event_loop.unbind(), future.clone().unbind());
    runtime().spawn(async move {
        let out = fut.await;
        IN_FLIGHT.fetch_add(1, SeqCst);
        if !EXITING.load(SeqCst) {
            Python::attach(|py| {
                // The call's buffers were let go when `fut` ended, here,
                // off the interpreter's threads: release them before the
                // caller resumes (and, say, resizes a bytearray it put).
                crate::buffers::release_pending(py);
                let (ok, value) = match out.map(|v| v.into_bound_py_any(py)) {
                    Ok(Ok(v)) => (true, v),
                    Ok(Err(e)) => (false, e.into_value(py).into_bound(py).into_any()),
                    Err(e) => (false, to_py(py, e).into_value(py).into_bound(py).into_any()),
                };
                // A loop already closed has nobody to tell.
                let _ = lp.call_method1(py, "call_soon_threadsafe", (deliver, fu, ok, value));
            });
        }
        IN_FLIGHT.fetch_sub(1, SeqCst);
    });
    Ok(future)
}

/// The interpreter is exiting: deliveries stop, and those under way are
/// waited for (a second at most), with the interpreter released so that
/// they can finish.
#[pyfunction]
pub fn _quiesce(py: Python<'_>) {
    EXITING.store(true, SeqCst);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while IN_FLIGHT.load(SeqCst) > 0 && std::time::Instant::now() < deadline {
        py.detach(|| std::thread::sleep(std::time::Duration::from_millis(1)));
    }
}
