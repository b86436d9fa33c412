//! Python memory the client reads from and writes into without a copy.
//!
//! pyo3's `PyBuffer<T>` insists that an exporter's item format match `T`,
//! which turns away a float16 numpy array offered as bytes; engines hand over
//! arrays of any dtype, so a buffer is asked for here as plain contiguous
//! bytes (`PyBUF_SIMPLE`), which every contiguous exporter gives.

use bytes::Bytes;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};

/// An object's memory, exported through the buffer protocol and held
/// (the object cannot be freed or resized meanwhile) until dropped.
pub struct Exported {
    // Boxed: an exporter may keep pointers into its `Py_buffer`. `None`
    // once released (or handed to `PENDING`).
    view: Option<Box<ffi::Py_buffer>>,
}

/// A view to release, moved between threads.
struct Unreleased(Box<ffi::Py_buffer>);
// SAFETY: released only with the interpreter attached (`release_pending`).
unsafe impl Send for Unreleased {}

/// Views dropped on threads not attached to the interpreter (the runtime's
/// workers, the shm copy threads, where the last clone of a block's bytes
/// often ends): releasing takes the interpreter, and a thread that
/// attaches while the interpreter shuts down is killed under Rust code, so
/// they wait here for the next call from Python to release them.
static PENDING: std::sync::Mutex<Vec<Unreleased>> = std::sync::Mutex::new(Vec::new());
static HAS_PENDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Releases the views dropped off the interpreter's threads.
pub fn release_pending(_py: Python<'_>) {
    use std::sync::atomic::Ordering;
    if !HAS_PENDING.swap(false, Ordering::Acquire) {
        return;
    }
    let views = std::mem::take(&mut *PENDING.lock().unwrap_or_else(|p| p.into_inner()));
    for Unreleased(mut view) in views {
        // SAFETY: filled by PyObject_GetBuffer, released once, attached.
        unsafe { ffi::PyBuffer_Release(&mut *view) };
    }
}

// SAFETY: the view is only read (its pointer and length) from other
// threads; it is released with the interpreter attached (`Drop`).
unsafe impl Send for Exported {}
// SAFETY: as above: shared access only reads the pointer and length.
unsafe impl Sync for Exported {}

impl Exported {
    /// Exports `obj`'s memory as contiguous bytes, writable when asked.
    pub fn get(obj: &Bound<'_, PyAny>, writable: bool) -> PyResult<Exported> {
        // SAFETY: a zeroed Py_buffer is the blank CPython expects to fill.
        let mut view: Box<ffi::Py_buffer> = Box::new(unsafe { std::mem::zeroed() });
        let flags = if writable {
            ffi::PyBUF_WRITABLE
        } else {
            ffi::PyBUF_SIMPLE
        };
        // SAFETY: obj is a live object; view is a blank to fill.
        if unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut *view, flags) } != 0 {
            let cause = PyErr::fetch(obj.py());
            let what = if writable {
                "a writable, contiguous buffer (bytearray, memoryview, numpy array)"
            } else {
                "a contiguous buffer (bytes, bytearray, memoryview, numpy array)"
            };
            let err = PyTypeError::new_err(format!(
                "expected {what}, got {}: {cause}",
                obj.get_type().name()?
            ));
            err.set_cause(obj.py(), Some(cause));
            return Err(err);
        }
        Ok(Exported { view: Some(view) })
    }

    fn view(&self) -> &ffi::Py_buffer {
        self.view.as_deref().expect("held until dropped")
    }

    /// The exported length in bytes.
    pub fn len(&self) -> usize {
        self.view().len as usize
    }

    /// The start of the exported memory.
    pub fn ptr(&self) -> *mut u8 {
        self.view().buf.cast()
    }
}

impl AsRef<[u8]> for Exported {
    fn as_ref(&self) -> &[u8] {
        if self.len() == 0 {
            return &[];
        }
        // SAFETY: the exporter keeps `len` bytes at `buf` until released.
        unsafe { std::slice::from_raw_parts(self.ptr(), self.len()) }
    }
}

impl Drop for Exported {
    fn drop(&mut self) {
        let Some(mut view) = self.view.take() else {
            return;
        };
        // SAFETY: a plain query, valid on any thread.
        if unsafe { ffi::PyGILState_Check() } == 1 {
            // SAFETY: filled by PyObject_GetBuffer, released once, attached.
            unsafe { ffi::PyBuffer_Release(&mut *view) };
        } else {
            PENDING
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Unreleased(view));
            HAS_PENDING.store(true, std::sync::atomic::Ordering::Release);
        }
    }
}

/// A Python object's memory: through the buffer protocol, or for a
/// torch tensor (which has none) through its `data_ptr()`, on the CPU and
/// contiguous; either way the object is held until dropped.
pub enum Mem {
    /// An exported buffer.
    Buffer(Exported),
    /// A CPU tensor's storage, the tensor kept alive by the reference.
    Tensor {
        _obj: Py<PyAny>,
        ptr: usize,
        len: usize,
    },
}

impl Mem {
    /// The memory of `obj`, writable when asked.
    pub fn get(obj: &Bound<'_, PyAny>, writable: bool) -> PyResult<Mem> {
        match Exported::get(obj, writable) {
            Ok(e) => Ok(Mem::Buffer(e)),
            Err(e) if obj.hasattr("data_ptr")? => {
                tensor(obj).inspect_err(|t| t.set_cause(obj.py(), Some(e)))
            }
            Err(e) => Err(e),
        }
    }

    /// The start of the memory.
    pub fn ptr(&self) -> usize {
        match self {
            Mem::Buffer(e) => e.ptr() as usize,
            Mem::Tensor { ptr, .. } => *ptr,
        }
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Mem::Buffer(e) => e.len(),
            Mem::Tensor { len, .. } => *len,
        }
    }
}

impl AsRef<[u8]> for Mem {
    fn as_ref(&self) -> &[u8] {
        match self {
            Mem::Buffer(e) => e.as_ref(),
            Mem::Tensor { ptr, len, .. } => Raw {
                ptr: *ptr,
                len: *len,
            }
            .as_ref_static(),
        }
    }
}

/// A torch tensor's bytes: it must live on the CPU and be contiguous.
fn tensor(obj: &Bound<'_, PyAny>) -> PyResult<Mem> {
    let device = obj.getattr("device")?.getattr("type")?;
    if device.extract::<String>()? != "cpu" {
        return Err(PyTypeError::new_err(format!(
            "a tensor on {device} cannot be read or written here: pass a CPU tensor \
             (or its pinned host copy)"
        )));
    }
    if !obj.call_method0("is_contiguous")?.extract::<bool>()? {
        return Err(PyTypeError::new_err(
            "the tensor is not contiguous: pass tensor.contiguous()",
        ));
    }
    let ptr: usize = obj.call_method0("data_ptr")?.extract()?;
    let len: usize = obj.getattr("nbytes")?.extract()?;
    if ptr == 0 && len > 0 {
        return Err(PyTypeError::new_err("the tensor has no storage"));
    }
    Ok(Mem::Tensor {
        _obj: obj.clone().unbind(),
        ptr,
        len,
    })
}

/// Memory an engine manages itself (a pinned pool), named by address and
/// length. Whoever passes it vouches that it stays valid for the call.
#[derive(Clone, Copy)]
pub struct Raw {
    pub ptr: usize,
    pub len: usize,
}

impl Raw {
    fn as_ref_static<'a>(self) -> &'a [u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: whoever made this Raw vouched for the range for as long
        // as it is used (a `*_ptrs` caller, or a held tensor).
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl AsRef<[u8]> for Raw {
    fn as_ref(&self) -> &[u8] {
        self.as_ref_static()
    }
}

/// A block's bytes as `Bytes` without a copy: the Python object stays
/// exported for as long as any clone lives.
pub fn value(obj: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    if obj.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(
            "a block's value is bytes-like (bytes, bytearray, memoryview, numpy array), not str",
        ));
    }
    Ok(Bytes::from_owner(Mem::get(obj, false)?))
}

/// A key: `bytes` (or any bytes-like object) as is, `str` as UTF-8. Keys
/// are small, so they are copied.
pub fn key(obj: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Bytes::copy_from_slice(b.as_bytes()));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Bytes::copy_from_slice(s.to_str()?.as_bytes()));
    }
    match Exported::get(obj, false) {
        Ok(e) => Ok(Bytes::copy_from_slice(e.as_ref())),
        Err(_) => Err(PyTypeError::new_err(format!(
            "a key is bytes or str, got {}",
            obj.get_type().name()?
        ))),
    }
}

/// Keys from any iterable of keys. `bytes` and `str` keys (the usual
/// case) are copied into one allocation that the keys share, rather than
/// one each: a 256-key match spent a fifth of its time in allocating.
pub fn keys(obj: &Bound<'_, PyAny>) -> PyResult<Vec<Bytes>> {
    if obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyBytes>() {
        return Err(PyTypeError::new_err(
            "keys are a list (or other iterable) of keys, not one key",
        ));
    }
    let items: Vec<Bound<'_, PyAny>> = match obj.cast::<PyList>() {
        Ok(list) => list.iter().collect(),
        Err(_) => obj.try_iter()?.collect::<PyResult<_>>()?,
    };
    // Borrowed bytes of the usual keys; None for any other kind.
    let mut borrowed: Vec<Option<&[u8]>> = Vec::with_capacity(items.len());
    for k in &items {
        borrowed.push(if let Ok(b) = k.cast::<PyBytes>() {
            Some(b.as_bytes())
        } else if let Ok(s) = k.cast::<PyString>() {
            Some(s.to_str()?.as_bytes())
        } else {
            None
        });
    }
    let total: usize = borrowed.iter().flatten().map(|b| b.len()).sum();
    let mut all = bytes::BytesMut::with_capacity(total);
    for b in borrowed.iter().flatten() {
        all.extend_from_slice(b);
    }
    let all = all.freeze();
    let mut at = 0;
    items
        .iter()
        .zip(&borrowed)
        .map(|(k, b)| match b {
            Some(b) => {
                at += b.len();
                Ok(all.slice(at - b.len()..at))
            }
            None => key(k),
        })
        .collect()
}

/// Refuses buffers that share memory: each receives a block of its own,
/// and two writers into one range would race.
pub fn disjoint(mut ranges: Vec<(usize, usize)>) -> PyResult<()> {
    ranges.retain(|&(_, len)| len > 0);
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        if w[0].0 + w[0].1 > w[1].0 {
            return Err(PyValueError::new_err(
                "two of the buffers overlap: each block needs memory of its own",
            ));
        }
    }
    Ok(())
}

/// Where blocks read are written: exported Python objects or raw ranges.
pub enum Targets {
    Held(Vec<Mem>),
    Raw(Vec<Raw>),
}

// SAFETY: only the pointers travel; the memory belongs to the call.
unsafe impl Send for Targets {}

impl Targets {
    fn ranges(&self) -> Vec<(usize, usize)> {
        match self {
            Targets::Held(v) => v.iter().map(|m| (m.ptr(), m.len())).collect(),
            Targets::Raw(v) => v.iter().map(|r| (r.ptr, r.len)).collect(),
        }
    }

    /// Checks the targets do not overlap (see [`disjoint`]).
    pub fn checked(self) -> PyResult<Targets> {
        disjoint(self.ranges())?;
        Ok(self)
    }

    /// The targets as the client's `&mut [u8]`s.
    ///
    /// # Safety
    /// The ranges are disjoint ([`Targets::checked`]) and stay valid and
    /// otherwise untouched while the slices live.
    pub unsafe fn slices(&mut self) -> Vec<&mut [u8]> {
        self.ranges()
            .into_iter()
            .map(|(ptr, len)| {
                if len == 0 {
                    &mut [][..]
                } else {
                    // SAFETY: the caller's contract above.
                    unsafe { std::slice::from_raw_parts_mut(ptr as *mut u8, len) }
                }
            })
            .collect()
    }
}
