//! The backend for CPython 3.12+: `sys.monitoring` (PEP 669) under a tool id
//! of pyust's own, with native `METH_FASTCALL` callbacks (no argument
//! parsing, no Python frame). Events are interpreter-wide: every thread,
//! running or started later, is traced from `enable()` on.
//!
//! | monitoring event                | pyust event                  |
//! |---------------------------------|------------------------------|
//! | PY_START, PY_RESUME, PY_THROW   | `python:call`                |
//! | PY_RETURN, PY_YIELD, PY_UNWIND  | `python:return`              |
//! | RAISE                           | `python:exception`           |
//! | CALL of a C function            | `python:c_call`              |
//! | C_RETURN, C_RAISE of one        | `python:c_return`            |
//!
//! RAISE fires in each frame an exception is raised in or propagates into,
//! as the profile backend's PyTrace_EXCEPTION does, so both backends give
//! the same trace.

use std::cell::Cell;
use std::ffi::{c_int, CStr};
use std::sync::atomic::{AtomicI32, Ordering};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyType;

use super::hook::{self, Out, ENABLED};
use crate::ffi::lttng as tp;

pub const NAME: &str = "sys.monitoring";

/// Tool ids pyust tries, in order (0, 1, 2 and 5 are the debugger,
/// coverage, profiler and optimizer ids of PEP 669).
const TOOL_IDS: [i32; 2] = [4, 3];
const TOOL_NAME: &str = "pyust";
/// The tool id pyust holds, or -1.
static TOOL: AtomicI32 = AtomicI32::new(-1);

thread_local! {
    /// The launcher's thread once its script has ended: not reported.
    static LEFT: Cell<bool> = const { Cell::new(false) };
}

type Callback = unsafe extern "C" fn(
    *mut ffi::PyObject,
    *mut *mut ffi::PyObject,
    ffi::Py_ssize_t,
) -> *mut ffi::PyObject;

/// A `PyMethodDef` that can live in a static: CPython only reads it.
struct MethodDef(ffi::PyMethodDef);
// SAFETY: the definitions are immutable and only read (under the GIL).
unsafe impl Sync for MethodDef {}

const fn def(name: &'static CStr, callback: Callback) -> MethodDef {
    MethodDef(ffi::PyMethodDef {
        ml_name: name.as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunctionFast: callback,
        },
        ml_flags: ffi::METH_FASTCALL,
        ml_doc: std::ptr::null(),
    })
}

// (event name in sys.monitoring.events, callback)
static CALLBACKS: [(&str, MethodDef); 10] = [
    ("PY_START", def(cstr(b"pyust_py_start\0"), on_start)),
    ("PY_RESUME", def(cstr(b"pyust_py_resume\0"), on_start)),
    ("PY_THROW", def(cstr(b"pyust_py_throw\0"), on_start)),
    ("PY_RETURN", def(cstr(b"pyust_py_return\0"), on_return)),
    ("PY_YIELD", def(cstr(b"pyust_py_yield\0"), on_return)),
    ("PY_UNWIND", def(cstr(b"pyust_py_unwind\0"), on_return)),
    ("RAISE", def(cstr(b"pyust_raise\0"), on_raise)),
    ("CALL", def(cstr(b"pyust_call\0"), on_call)),
    ("C_RETURN", def(cstr(b"pyust_c_return\0"), on_c_return)),
    ("C_RAISE", def(cstr(b"pyust_c_raise\0"), on_c_return)),
];

const fn cstr(bytes: &'static [u8]) -> &'static CStr {
    match CStr::from_bytes_with_nul(bytes) {
        Ok(s) => s,
        Err(_) => panic!("NUL-terminated"),
    }
}

pub fn init(_py: Python<'_>) {}

/// Claims a tool id and registers the callbacks (once).
fn register(py: Python<'_>) -> PyResult<i32> {
    let tool = TOOL.load(Ordering::SeqCst);
    if tool >= 0 {
        return Ok(tool);
    }
    let monitoring = py.import("sys")?.getattr("monitoring")?;
    let mut claimed = None;
    for id in TOOL_IDS {
        if monitoring.call_method1("get_tool", (id,))?.is_none() {
            monitoring.call_method1("use_tool_id", (id, TOOL_NAME))?;
            claimed = Some(id);
            break;
        }
    }
    let Some(tool) = claimed else {
        return Err(pyo3::exceptions::PyRuntimeError::new_err(format!(
            "pyust: sys.monitoring tool ids {TOOL_IDS:?} are all in use"
        )));
    };
    let events = monitoring.getattr("events")?;
    for (event, def) in &CALLBACKS {
        // SAFETY: `def` is a static method definition; no self, no module.
        let func = unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                ffi::PyCFunction_NewEx(
                    std::ptr::addr_of!(def.0).cast_mut(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                ),
            )?
        };
        monitoring.call_method1("register_callback", (tool, events.getattr(*event)?, func))?;
    }
    TOOL.store(tool, Ordering::SeqCst);
    Ok(tool)
}

fn event_set(py: Python<'_>) -> PyResult<u32> {
    let events = py.import("sys")?.getattr("monitoring")?.getattr("events")?;
    let mut set = 0u32;
    for (event, _) in &CALLBACKS {
        set |= events.getattr(*event)?.extract::<u32>()?;
    }
    Ok(set)
}

/// `sys.monitoring` events are interpreter-wide: arming reaches every thread.
pub const CAN_ARM_ALL_THREADS: bool = true;

/// Tracing is enabled: claim the tool id and register the callbacks.
pub fn start(py: Python<'_>, _thread_start: &Bound<'_, PyAny>) -> PyResult<()> {
    LEFT.with(|l| l.set(false));
    register(py).map(drop)
}

pub fn stop(_py: Python<'_>) -> PyResult<()> {
    Ok(())
}

fn set_events(py: Python<'_>, events: u32) -> PyResult<()> {
    let tool = TOOL.load(Ordering::SeqCst);
    if tool >= 0 {
        py.import("sys")?
            .getattr("monitoring")?
            .call_method1("set_events", (tool, events))?;
    }
    Ok(())
}

/// Every event: calls, C calls, exceptions.
pub const FULL_SHAPE: u8 = 1;
/// Python frames and exceptions only: no session records C calls, so the
/// interpreter does not report them (CALL fires for every call).
const PYTHON_SHAPE: u8 = 2;

/// The monitoring events of C calls.
const C_EVENTS: [&str; 3] = ["CALL", "C_RETURN", "C_RAISE"];

pub fn shape(mask: std::ffi::c_int) -> u8 {
    if mask == 0 {
        0
    } else if mask & (tp::EV_C_CALL | tp::EV_C_RETURN | tp::EV_FAST_C) != 0 {
        FULL_SHAPE
    } else {
        PYTHON_SHAPE
    }
}

pub fn arm(py: Python<'_>, shape: u8) -> PyResult<()> {
    let mut events = event_set(py)?;
    if shape == PYTHON_SHAPE {
        let names = py.import("sys")?.getattr("monitoring")?.getattr("events")?;
        for event in C_EVENTS {
            events &= !names.getattr(event)?.extract::<u32>()?;
        }
    }
    set_events(py, events)
}

pub fn disarm(py: Python<'_>) -> PyResult<()> {
    set_events(py, 0)
}

pub fn leave_current_thread() {
    LEFT.with(|l| l.set(true));
}

/// Never installed by this backend (threads are traced anyway).
pub fn thread_start(_frame: &Bound<'_, PyAny>, _event: &str, _arg: Option<&Bound<'_, PyAny>>) {}

/// Common entry of every callback: `None` to CPython, and never a panic.
#[inline]
fn callback(f: impl FnOnce(Python<'_>)) -> *mut ffi::PyObject {
    // Acquire: sees the nesting restart that `enable()` made before it.
    if ENABLED.load(Ordering::Acquire) && !LEFT.with(Cell::get) {
        hook::guarded(f);
    }
    // SAFETY: the GIL is held (a monitoring callback); None is immortal
    // or at least alive, and CPython takes the new reference.
    unsafe {
        let none = ffi::Py_None();
        ffi::Py_IncRef(none);
        none
    }
}

/// The argument `i`, borrowed (CPython passes what the event defines).
#[inline]
unsafe fn arg(
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    i: isize,
) -> *mut ffi::PyObject {
    if i < nargs {
        // SAFETY: CPython passes `nargs` arguments at `args` (the caller's
        // promise); `i` is one of them.
        unsafe { *args.offset(i) }
    } else {
        std::ptr::null_mut()
    }
}

/// PY_START / PY_RESUME / PY_THROW (code, offset[, exception]).
unsafe extern "C" fn on_start(
    _slf: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    callback(|py| {
        // SAFETY: CPython passes `nargs` live arguments; the callback runs
        // in the new frame, whose globals are current.
        unsafe {
            let code = arg(args, nargs, 0);
            if !hook::frame_entered() || code.is_null() {
                return;
            }
            let out = Out::call();
            if out.any() {
                #[cfg(Py_3_13)]
                {
                    // A new reference (PyEval_GetGlobals is deprecated in 3.13).
                    let globals = ffi::PyEval_GetFrameGlobals();
                    hook::emit_call(py, code, globals, out);
                    ffi::Py_XDECREF(globals);
                }
                #[cfg(not(Py_3_13))]
                hook::emit_call(py, code, ffi::PyEval_GetGlobals(), out);
            }
        }
    })
}

/// PY_RETURN / PY_YIELD / PY_UNWIND (code, offset, value or exception).
unsafe extern "C" fn on_return(
    _slf: *mut ffi::PyObject,
    _args: *mut *mut ffi::PyObject,
    _nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    callback(|_py| hook::frame_left())
}

/// RAISE (code, offset, exception).
unsafe extern "C" fn on_raise(
    _slf: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    callback(|py| {
        // SAFETY: CPython passes `nargs` live arguments: the code object,
        // the offset (an int) and the exception.
        unsafe {
            let (code, offset, exc) = (
                arg(args, nargs, 0),
                arg(args, nargs, 1),
                arg(args, nargs, 2),
            );
            let out = Out::exception();
            if code.is_null() || exc.is_null() || !out.any() {
                return;
            }
            let offset = ffi::PyLong_AsLong(offset);
            if offset < 0 && !ffi::PyErr_Occurred().is_null() {
                ffi::PyErr_Clear();
            }
            let lineno = ffi::PyCode_Addr2Line(code.cast(), offset as c_int);
            let exc_type = Bound::from_borrowed_ptr(py, ffi::Py_TYPE(exc).cast::<ffi::PyObject>())
                .cast_into::<PyType>()
                .ok();
            hook::emit_exception(py, exc_type.as_ref(), code, lineno, out);
        }
    })
}

/// Whether a CALL / C_RETURN / C_RAISE callable is a C function as the
/// profile backend reports them: a builtin function or method, or a method
/// descriptor (`list.append` called on an instance) — and not pyust's own.
unsafe fn is_c_function(callable: *mut ffi::PyObject) -> bool {
    // SAFETY: GIL held; `callable` null or live (the caller's promise).
    unsafe {
        !callable.is_null()
            && (ffi::PyCFunction_Check(callable) != 0
                || ffi::Py_TYPE(callable) == std::ptr::addr_of_mut!(ffi::PyMethodDescr_Type))
            && !hook::is_own(callable)
    }
}

/// CALL (code, offset, callable, arg0).
unsafe extern "C" fn on_call(
    _slf: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    callback(|py| {
        // SAFETY: CPython passes `nargs` live arguments: the code object,
        // the offset, the callable and its first argument.
        unsafe {
            let callable = arg(args, nargs, 2);
            if !is_c_function(callable) {
                return;
            }
            if !hook::c_call_entered() {
                return;
            }
            let out = Out::c_call();
            if !out.any() {
                return;
            }
            if ffi::PyCFunction_Check(callable) != 0 {
                hook::emit_c_call(py, callable, out);
            } else {
                hook::emit_c_call_descriptor(py, callable, arg(args, nargs, 3), out);
            }
        }
    })
}

/// C_RETURN / C_RAISE (code, offset, callable, arg0).
unsafe extern "C" fn on_c_return(
    _slf: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    callback(|_py| {
        // SAFETY: as for `on_call`.
        if unsafe { is_c_function(arg(args, nargs, 2)) } {
            hook::c_call_left();
        }
    })
}

/// Bench only: C no-op callbacks for the same events under another tool id
/// (the optimizer's, 5), the floor of any `sys.monitoring` tool.
#[cfg(feature = "bench")]
pub fn bench_floor(py: Python<'_>, on: bool) -> PyResult<()> {
    unsafe extern "C" fn noop(
        _slf: *mut ffi::PyObject,
        _args: *mut *mut ffi::PyObject,
        _nargs: ffi::Py_ssize_t,
    ) -> *mut ffi::PyObject {
        // SAFETY: called by CPython with the GIL held; None is immortal.
        unsafe {
            let none = ffi::Py_None();
            ffi::Py_IncRef(none);
            none
        }
    }
    static NOOP: MethodDef = def(cstr(b"pyust_bench_noop\0"), noop);
    const FLOOR_TOOL: i32 = 5;
    let monitoring = py.import("sys")?.getattr("monitoring")?;
    if !on {
        monitoring.call_method1("set_events", (FLOOR_TOOL, 0))?;
        monitoring.call_method1("free_tool_id", (FLOOR_TOOL,))?;
        return Ok(());
    }
    monitoring.call_method1("use_tool_id", (FLOOR_TOOL, "pyust-bench-floor"))?;
    // SAFETY: a static method definition; no self, no module.
    let func = unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyCFunction_NewEx(
                std::ptr::addr_of!(NOOP.0).cast_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            ),
        )?
    };
    let events = monitoring.getattr("events")?;
    for (event, _) in &CALLBACKS {
        monitoring.call_method1(
            "register_callback",
            (FLOOR_TOOL, events.getattr(*event)?, &func),
        )?;
    }
    monitoring.call_method1("set_events", (FLOOR_TOOL, event_set(py)?))?;
    Ok(())
}
