//! The backend for CPython < 3.12: C-ABI callbacks installed with the
//! interpreter's C API, `PyEval_SetProfile` for calls, returns and C calls,
//! and `PyEval_SetTrace` for exceptions (profile functions are not told of
//! them), with per-line events switched off frame by frame. Threads started
//! later are hooked through `threading`'s profile hook.

use std::ffi::c_int;
use std::sync::atomic::Ordering;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyTuple, PyType};

use crate::ffi as tp;
use crate::hook::{self, ENABLED};
use crate::names;

pub const NAME: &str = "profile";

/// Where two fields of CPython's frame object sit, on this interpreter.
/// `PyFrameObject` is opaque to extensions; its layout is stable within a
/// minor version, and `init` checks these offsets against the fields'
/// Python-level values before any are used (otherwise: the slow, generic
/// attribute path).
struct FrameLayout {
    /// `char f_trace_lines`: per-line trace events wanted.
    trace_lines: Option<usize>,
    /// `PyObject *f_globals` (before 3.11, which has `PyFrame_GetGlobals`).
    #[cfg_attr(Py_3_11, allow(dead_code))]
    globals: Option<usize>,
    /// `PyCodeObject *f_code` (before 3.9, which has `PyFrame_GetCode`).
    #[cfg_attr(Py_3_9, allow(dead_code))]
    code: Option<usize>,
}

static LAYOUT: std::sync::OnceLock<FrameLayout> = std::sync::OnceLock::new();

#[cfg(all(target_pointer_width = "64", Py_3_11))]
const TRACE_LINES_OFFSET: usize = 44;
#[cfg(all(target_pointer_width = "64", Py_3_10, not(Py_3_11)))]
const TRACE_LINES_OFFSET: usize = 84;
#[cfg(all(target_pointer_width = "64", not(Py_3_10)))]
const TRACE_LINES_OFFSET: usize = 88;
#[cfg(not(target_pointer_width = "64"))]
const TRACE_LINES_OFFSET: usize = usize::MAX;
const GLOBALS_OFFSET: usize = 48;
const CODE_OFFSET: usize = 32;

fn check_layout(py: Python<'_>) -> PyResult<FrameLayout> {
    let frame = py.import("sys")?.call_method1("_getframe", (0,))?;
    let raw = frame.as_ptr().cast::<u8>();
    let trace_lines = if TRACE_LINES_OFFSET == usize::MAX {
        None
    } else {
        // SAFETY: reads one byte inside the frame object, whose size is at
        // least the offset plus one on this interpreter version.
        let read = || unsafe { *raw.add(TRACE_LINES_OFFSET) };
        let attr = pyo3::intern!(py, "f_trace_lines");
        let before: bool = frame.getattr(attr)?.extract()?;
        frame.setattr(attr, !before)?;
        let flipped = read();
        frame.setattr(attr, before)?;
        (flipped == u8::from(!before) && read() == u8::from(before)).then_some(TRACE_LINES_OFFSET)
    };
    let globals = if cfg!(Py_3_11) {
        None
    } else {
        // SAFETY: reads one pointer inside the frame object (see above).
        let field = unsafe { *raw.add(GLOBALS_OFFSET).cast::<*mut ffi::PyObject>() };
        (field == frame.getattr("f_globals")?.as_ptr()).then_some(GLOBALS_OFFSET)
    };
    let code = if cfg!(Py_3_9) {
        None
    } else {
        // SAFETY: reads one pointer inside the frame object (see above).
        let field = unsafe { *raw.add(CODE_OFFSET).cast::<*mut ffi::PyObject>() };
        (field == frame.getattr("f_code")?.as_ptr()).then_some(CODE_OFFSET)
    };
    Ok(FrameLayout {
        trace_lines,
        globals,
        code,
    })
}

/// Checks the frame layout; called once at module import.
pub fn init(py: Python<'_>) {
    LAYOUT.get_or_init(|| {
        check_layout(py).unwrap_or(FrameLayout {
            trace_lines: None,
            globals: None,
            code: None,
        })
    });
}

#[cfg(Py_3_11)]
unsafe fn frame_globals(frame: *mut ffi::PyFrameObject) -> *mut ffi::PyObject {
    ffi::PyFrame_GetGlobals(frame) // a new reference
}
#[cfg(Py_3_11)]
unsafe fn release_globals(globals: *mut ffi::PyObject) {
    ffi::Py_DECREF(globals)
}
#[cfg(not(Py_3_11))]
unsafe fn frame_globals(frame: *mut ffi::PyFrameObject) -> *mut ffi::PyObject {
    match LAYOUT.get().and_then(|l| l.globals) {
        // The frame's f_globals field (borrowed), at an offset checked at import.
        Some(offset) => *frame.cast::<u8>().add(offset).cast::<*mut ffi::PyObject>(),
        None => std::ptr::null_mut(),
    }
}
#[cfg(not(Py_3_11))]
unsafe fn release_globals(_globals: *mut ffi::PyObject) {}

/// The frame's code object (borrowed), or null when unknown.
///
/// SAFETY: GIL held; `frame` live.
#[cfg(Py_3_9)]
unsafe fn frame_code(frame: *mut ffi::PyFrameObject) -> *mut ffi::PyObject {
    let code = ffi::PyFrame_GetCode(frame); // a new reference
    ffi::Py_DECREF(code.cast()); // the frame keeps it alive
    code.cast()
}
#[cfg(not(Py_3_9))]
unsafe fn frame_code(frame: *mut ffi::PyFrameObject) -> *mut ffi::PyObject {
    match LAYOUT.get().and_then(|l| l.code) {
        // The frame's f_code field (borrowed), at an offset checked at import.
        Some(offset) => *frame.cast::<u8>().add(offset).cast::<*mut ffi::PyObject>(),
        None => std::ptr::null_mut(),
    }
}

/// SAFETY: GIL held; `frame` live; `arg` the (type, value, traceback) tuple
/// of a PyTrace_EXCEPTION event.
unsafe fn emit_exception(py: Python<'_>, frame: *mut ffi::PyFrameObject, arg: *mut ffi::PyObject) {
    let exc_type = names::preserving_error(py, || {
        Bound::from_borrowed_ptr(py, arg)
            .cast::<PyTuple>()
            .ok()
            .and_then(|t| t.get_item(0).ok())
            .and_then(|t| t.cast_into::<PyType>().ok())
    });
    if let Some(ty) = &exc_type {
        if ty.as_ptr() == ffi::PyExc_StopIteration && ends_iteration(py, frame) {
            return;
        }
    }
    let lineno = ffi::PyFrame_GetLineNumber(frame);
    hook::emit_exception(py, exc_type.as_ref(), frame_code(frame), lineno);
}

/// Whether `frame` stands at an instruction that drives an iterator or
/// awaitable to its end (FOR_ITER, YIELD_FROM, SEND): a StopIteration there
/// only says the iteration is over. Some versions report it as an exception
/// there, others (and sys.monitoring) do not: pyust never does, so the
/// trace is the same on every version. A StopIteration raised by the
/// program (`raise`, `next()`) stays an exception.
///
/// SAFETY: GIL held; `frame` live.
unsafe fn ends_iteration(py: Python<'_>, frame: *mut ffi::PyFrameObject) -> bool {
    static DRIVERS: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    names::preserving_error(py, || {
        let drivers = DRIVERS.get_or_init(|| {
            let opmap = py.import("dis").and_then(|dis| dis.getattr("opmap"));
            ["FOR_ITER", "YIELD_FROM", "SEND"]
                .iter()
                .filter_map(|name| opmap.as_ref().ok()?.get_item(name).ok()?.extract().ok())
                .collect()
        });
        let frame = Bound::from_borrowed_ptr(py, frame.cast());
        let opcode = || -> PyResult<u8> {
            let lasti: usize = frame.getattr("f_lasti")?.extract()?;
            let code = frame.getattr("f_code")?.getattr("co_code")?;
            code.get_item(lasti)?.extract()
        };
        opcode().is_ok_and(|op| drivers.contains(&op))
    })
}

/// The profile function: calls, returns and C calls.
unsafe extern "C" fn profile_hook(
    _obj: *mut ffi::PyObject,
    frame: *mut ffi::PyFrameObject,
    what: c_int,
    arg: *mut ffi::PyObject,
) -> c_int {
    // A panic must not cross into CPython; there is nothing to report it to.
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: CPython calls profile functions with the GIL held and live
        // `frame`/`arg` for the duration of the call.
        unsafe { profile_event(frame, what, arg) }
    });
    0
}

unsafe fn profile_event(frame: *mut ffi::PyFrameObject, what: c_int, arg: *mut ffi::PyObject) {
    let py = Python::assume_attached();
    if !ENABLED.load(Ordering::Relaxed) || !hook::ARMED.load(Ordering::Relaxed) {
        uninstall_current_thread();
        return;
    }
    match what {
        ffi::PyTrace_CALL => {
            hook::frame_entered();
            if tp::on(tp::EV_CALL) {
                let globals = frame_globals(frame);
                hook::emit_call(py, frame_code(frame), globals);
                release_globals(globals);
            }
        }
        ffi::PyTrace_RETURN => hook::frame_left(),
        ffi::PyTrace_C_CALL => {
            if hook::is_own(arg) {
                return;
            }
            hook::c_call_entered();
            if tp::on(tp::EV_C_CALL) {
                hook::emit_c_call(py, arg);
            }
        }
        ffi::PyTrace_C_RETURN | ffi::PyTrace_C_EXCEPTION if !hook::is_own(arg) => {
            hook::c_call_left();
        }
        _ => {}
    }
}

/// The trace function: only for `PyTrace_EXCEPTION` (profile functions are
/// not told of exceptions). Line events are switched off on each frame it
/// sees, so it costs one callback per frame, not per line.
unsafe extern "C" fn trace_hook(
    _obj: *mut ffi::PyObject,
    frame: *mut ffi::PyFrameObject,
    what: c_int,
    arg: *mut ffi::PyObject,
) -> c_int {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: as for `profile_hook`.
        unsafe { trace_event(frame, what, arg) }
    });
    0
}

unsafe fn trace_event(frame: *mut ffi::PyFrameObject, what: c_int, arg: *mut ffi::PyObject) {
    let py = Python::assume_attached();
    if !WANT_TRACE.load(Ordering::Relaxed) {
        // Re-armed without python:exception (or disarmed): leave.
        ffi::PyEval_SetTrace(None, std::ptr::null_mut());
        return;
    }
    match what {
        ffi::PyTrace_CALL | ffi::PyTrace_LINE => match LAYOUT.get().and_then(|l| l.trace_lines) {
            // SAFETY: the offset of the frame's f_trace_lines flag, checked at import.
            Some(offset) => *frame.cast::<u8>().add(offset) = 0,
            None => names::preserving_error(py, || {
                let frame = Bound::from_borrowed_ptr(py, frame.cast());
                let _ = frame.setattr(pyo3::intern!(py, "f_trace_lines"), false);
            }),
        },
        ffi::PyTrace_EXCEPTION if ENABLED.load(Ordering::Relaxed) && tp::on(tp::EV_EXCEPTION) => {
            emit_exception(py, frame, arg);
        }
        _ => {}
    }
}

/// Shapes (see `hook::sync`): the profile function for calls, returns
/// and C calls; the trace function as well when `python:exception` is
/// recorded. A trace function costs more than the profile function
/// itself (a second callback per call and return, and CPython's per-line
/// checks in every traced frame), so it is only there when needed.
const PROFILE: u8 = 1;
const TRACE: u8 = 2;
pub const FULL_SHAPE: u8 = PROFILE | TRACE;

/// The callbacks the enabled events `mask` need (0: none).
pub fn shape(mask: c_int) -> u8 {
    match mask {
        0 => 0,
        m if m & tp::EV_EXCEPTION != 0 => FULL_SHAPE,
        _ => PROFILE,
    }
}

/// Whether the trace function is part of the armed shape.
static WANT_TRACE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Installs the callbacks of the armed shape on the calling thread.
fn install_current_thread() {
    // SAFETY: the GIL is held by every caller (pyfunctions and the hooks).
    unsafe {
        ffi::PyEval_SetProfile(Some(profile_hook), std::ptr::null_mut());
        if WANT_TRACE.load(Ordering::SeqCst) {
            ffi::PyEval_SetTrace(Some(trace_hook), std::ptr::null_mut());
        }
    }
}

/// Removes them from the calling thread (if they are still ours).
fn uninstall_current_thread() {
    // SAFETY: GIL held, as above.
    unsafe {
        ffi::PyEval_SetProfile(None, std::ptr::null_mut());
        ffi::PyEval_SetTrace(None, std::ptr::null_mut());
    }
}

/// Whether `arm` reaches every thread (3.9+: `_PyEval_SetProfile` takes a
/// thread state). On 3.8 tracing is armed for good at `enable()`.
pub const CAN_ARM_ALL_THREADS: bool = cfg!(Py_3_9);

/// The launcher's thread once its script has ended: never armed again.
static LEFT: std::sync::atomic::AtomicPtr<ffi::PyThreadState> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// Tracing is enabled: threads started later arm themselves through
/// threading's profile hook.
pub fn start(py: Python<'_>, thread_start: &Bound<'_, PyAny>) -> PyResult<()> {
    // SAFETY: GIL held.
    let current = unsafe { ffi::PyThreadState_Get() };
    let _ = LEFT.compare_exchange(
        current,
        std::ptr::null_mut(),
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    set_threading_hook(py, thread_start)
}

/// Tracing is disabled.
pub fn stop(py: Python<'_>) -> PyResult<()> {
    set_threading_hook(py, &py.None().into_bound(py))
}

/// Installs the callbacks of `shape` on every thread of the interpreter
/// (3.9+), or on this one (3.8). A trace function no longer wanted is
/// removed by each thread at its next trace event.
pub fn arm(_py: Python<'_>, shape: u8) -> PyResult<()> {
    let trace = shape & TRACE != 0;
    WANT_TRACE.store(trace, Ordering::SeqCst);
    #[cfg(Py_3_9)]
    // SAFETY: GIL held, so the thread list is stable; each state is live.
    unsafe {
        let left = LEFT.load(Ordering::SeqCst);
        let mut ts = ffi::PyInterpreterState_ThreadHead(ffi::PyInterpreterState_Get());
        while !ts.is_null() {
            if ts != left {
                tp::set_profile(ts, Some(profile_hook));
                if trace {
                    tp::set_trace(ts, Some(trace_hook));
                }
            }
            ts = ffi::PyThreadState_Next(ts);
        }
    }
    #[cfg(not(Py_3_9))]
    install_current_thread();
    Ok(())
}

/// Removes the callbacks: from this thread now, from the others at their
/// next event (each removes only its own: a profiler the program installed
/// since stays).
pub fn disarm(_py: Python<'_>) -> PyResult<()> {
    uninstall_current_thread();
    Ok(())
}

/// Stops reporting this thread only (the launcher, once the script ends).
pub fn leave_current_thread() {
    // SAFETY: GIL held by the caller.
    LEFT.store(unsafe { ffi::PyThreadState_Get() }, Ordering::SeqCst);
    uninstall_current_thread();
}

/// What `threading.setprofile(hook)` does, without running Python code
/// (which the hook, already installed, would report).
fn set_threading_hook(py: Python<'_>, hook: &Bound<'_, PyAny>) -> PyResult<()> {
    let threading = py.import("threading")?;
    if threading.hasattr("_profile_hook")? {
        threading.setattr("_profile_hook", hook)
    } else {
        threading.call_method1("setprofile", (hook,)).map(drop)
    }
}

/// First event of a thread started while tracing: installed by
/// `threading.setprofile`, it replaces itself with the C hooks and reports
/// the event it was called for.
pub fn thread_start(frame: &Bound<'_, PyAny>, event: &str) {
    if !ENABLED.load(Ordering::SeqCst) || !hook::ARMED.load(Ordering::SeqCst) {
        uninstall_current_thread();
        return;
    }
    install_current_thread();
    if event == "call" {
        // SAFETY: GIL held; `frame` is a live frame object.
        unsafe {
            profile_event(
                frame.as_ptr().cast(),
                ffi::PyTrace_CALL,
                std::ptr::null_mut(),
            )
        };
    }
}
