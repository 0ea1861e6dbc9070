//! The interpreter hook: C-ABI callbacks installed with CPython's C API
//! (`PyEval_SetProfile` for calls, returns and C calls; `PyEval_SetTrace`
//! for exceptions, with per-line events switched off frame by frame).
//!
//! Hot path: one read of LTTng's enabled flags, then, only for an enabled
//! event, strings cached on the code object (co_extra) or per C function.
//! A callback never unwinds into CPython, never raises and never leaves or
//! clears an exception: it returns 0 whatever happens.

use std::cell::{Cell, UnsafeCell};
use std::collections::HashMap;
use std::ffi::{c_int, c_void, CStr, CString};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, Ordering};
use std::sync::Mutex;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyCode, PyTuple, PyType};

use crate::ffi as tp;
use crate::names;

/// pyust's own native module and its classes: C calls into them are left
/// out of the trace, so no part of pyust shows in it.
static OWN: [std::sync::atomic::AtomicPtr<ffi::PyObject>; 3] = [
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()),
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()),
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()),
];

/// Hides the C calls into `module`'s functions and into the methods of
/// its classes `classes` (at most two).
pub fn hide_module(module: &Bound<'_, pyo3::types::PyModule>, classes: &[&Bound<'_, PyType>]) {
    // The module and its classes live as long as the interpreter
    // (sys.modules holds them), so the pointers stay valid.
    OWN[0].store(module.as_ptr(), Ordering::Relaxed);
    for (slot, class) in OWN[1..].iter().zip(classes) {
        slot.store(class.as_ptr(), Ordering::Relaxed);
    }
}

/// Whether `func` (a C_CALL/C_RETURN argument) is one of pyust's own.
///
/// SAFETY: GIL held; `func` live.
unsafe fn is_own(func: *mut ffi::PyObject) -> bool {
    if func.is_null() || ffi::PyCFunction_Check(func) == 0 {
        return false;
    }
    let owner = (*func.cast::<ffi::PyCFunctionObject>()).m_self;
    if owner.is_null() {
        return false;
    }
    let ty: *mut ffi::PyObject = ffi::Py_TYPE(owner).cast();
    OWN.iter().any(|own| {
        let own = own.load(Ordering::Relaxed);
        owner == own || ty == own
    })
}

/// Whether `enable()` is in force. Threads whose hook sees it false remove it.
static ENABLED: AtomicBool = AtomicBool::new(false);
/// Bumped by every `enable()`, so per-thread nesting restarts from zero.
static GENERATION: AtomicU64 = AtomicU64::new(0);
/// The co_extra slot holding each code object's `CodeInfo`; -1 before init.
static CODE_EXTRA: AtomicIsize = AtomicIsize::new(-1);

/// Per-thread nesting of what this thread's hook has reported, so that a
/// `return` is only emitted for a `call` that was (frames already running
/// when tracing started close without a trace).
#[derive(Clone, Copy, Default)]
struct Depth {
    generation: u64,
    frames: u32,
    c_calls: u32,
}

thread_local! {
    static DEPTH: Cell<Depth> = const { Cell::new(Depth { generation: 0, frames: 0, c_calls: 0 }) };
}

fn with_depth<T>(f: impl FnOnce(&mut Depth) -> T) -> T {
    DEPTH.with(|cell| {
        let mut depth = cell.get();
        let generation = GENERATION.load(Ordering::Relaxed);
        if depth.generation != generation {
            depth = Depth {
                generation,
                ..Depth::default()
            };
        }
        let out = f(&mut depth);
        cell.set(depth);
        out
    })
}

/// What a code object's events carry, built once and owned by the code
/// object (co_extra), freed with it.
struct CodeInfo {
    names: names::CodeNames,
    /// The `__name__` object `module` was made from (a strong reference, so
    /// the pointer cannot be reused), and its UTF-8.
    module: UnsafeCell<(*mut ffi::PyObject, CString)>,
}

impl Drop for CodeInfo {
    fn drop(&mut self) {
        let key = self.module.get_mut().0;
        // SAFETY: CPython frees co_extra with the GIL held; `key` is null or
        // the strong reference this struct took.
        unsafe { ffi::Py_XDECREF(key) };
    }
}

unsafe extern "C" fn free_code_info(info: *mut c_void) {
    if !info.is_null() {
        // SAFETY: co_extra values in our slot are only ever `Box<CodeInfo>`s.
        drop(Box::from_raw(info.cast::<CodeInfo>()));
    }
}

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
}

static LAYOUT: std::sync::OnceLock<FrameLayout> = std::sync::OnceLock::new();

/// Whether the frame fields are reached directly (the layout check passed).
pub fn direct_frame_access() -> bool {
    LAYOUT
        .get()
        .is_some_and(|l| l.trace_lines.is_some() && (cfg!(Py_3_11) || l.globals.is_some()))
}

#[cfg(all(target_pointer_width = "64", Py_3_11))]
const TRACE_LINES_OFFSET: usize = 44;
#[cfg(all(target_pointer_width = "64", Py_3_10, not(Py_3_11)))]
const TRACE_LINES_OFFSET: usize = 84;
#[cfg(all(target_pointer_width = "64", not(Py_3_10)))]
const TRACE_LINES_OFFSET: usize = 88;
#[cfg(not(target_pointer_width = "64"))]
const TRACE_LINES_OFFSET: usize = usize::MAX;
const GLOBALS_OFFSET: usize = 48;

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
    Ok(FrameLayout {
        trace_lines,
        globals,
    })
}

/// Reserves the co_extra slot and checks the frame layout; called once at
/// module import.
pub fn init(py: Python<'_>) {
    LAYOUT.get_or_init(|| {
        check_layout(py).unwrap_or(FrameLayout {
            trace_lines: None,
            globals: None,
        })
    });
    if CODE_EXTRA.load(Ordering::Relaxed) < 0 {
        // SAFETY: the GIL is held (`_py`); the free function matches the slot.
        let index = unsafe { tp::request_code_extra_index(free_code_info) };
        CODE_EXTRA.store(index as isize, Ordering::Relaxed);
    }
}

/// The cached names of `code`, made on first use.
///
/// SAFETY: GIL held; `code` is a live code object.
unsafe fn code_info<'a>(py: Python<'_>, code: *mut ffi::PyObject) -> Option<&'a CodeInfo> {
    let index = CODE_EXTRA.load(Ordering::Relaxed);
    if index >= 0 {
        let extra = tp::code_get_extra(code, index as ffi::Py_ssize_t);
        if !extra.is_null() {
            return Some(&*extra.cast::<CodeInfo>());
        }
    }
    let code_obj = Bound::from_borrowed_ptr(py, code);
    let code_obj = code_obj.cast::<PyCode>().ok()?;
    let info = Box::new(CodeInfo {
        names: names::preserving_error(py, || names::code_names(code_obj)),
        module: UnsafeCell::new((std::ptr::null_mut(), CString::default())),
    });
    let raw = Box::into_raw(info);
    if index >= 0 && tp::code_set_extra(code, index as ffi::Py_ssize_t, raw.cast()) {
        return Some(&*raw);
    }
    // No slot: keep it alive for good (one per code object, only if
    // CPython ever refuses the slot).
    Some(&*raw)
}

/// `__name__` of the frame's globals, as cached on `info`.
///
/// SAFETY: GIL held; `frame` is the live frame running `info`'s code.
unsafe fn module_name<'a>(
    py: Python<'_>,
    info: &'a CodeInfo,
    frame: *mut ffi::PyFrameObject,
) -> &'a CStr {
    let globals = frame_globals(frame);
    let name = if globals.is_null() {
        std::ptr::null_mut()
    } else {
        let key = pyo3::intern!(py, "__name__").as_ptr();
        let name = ffi::PyDict_GetItem(globals, key);
        release_globals(globals);
        name
    };
    let slot = &mut *info.module.get();
    if slot.0 != name || slot.1.as_bytes().is_empty() {
        let text = if name.is_null() {
            names::cstring("?".to_owned())
        } else {
            names::preserving_error(py, || {
                names::to_cstring(&Bound::from_borrowed_ptr(py, name))
            })
        };
        ffi::Py_XINCREF(name);
        ffi::Py_XDECREF(slot.0);
        *slot = (name, text);
    }
    &slot.1
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

/// SAFETY: GIL held; `frame` live.
unsafe fn frame_code(frame: *mut ffi::PyFrameObject) -> *mut ffi::PyObject {
    let code = ffi::PyFrame_GetCode(frame); // a new reference
    ffi::Py_DECREF(code.cast()); // the frame keeps it alive
    code.cast()
}

/// SAFETY: GIL held; `frame` live.
unsafe fn emit_call(py: Python<'_>, frame: *mut ffi::PyFrameObject) {
    if let Some(info) = code_info(py, frame_code(frame)) {
        let module = module_name(py, info, frame);
        let n = &info.names;
        tp::emit_call(
            &n.co_name,
            &n.co_qualname,
            module,
            &n.co_filename,
            n.co_firstlineno,
        );
    }
}

/// C functions' names, keyed by (method definition, owner). The owner
/// (a type) is held by a strong reference so its address cannot be reused.
struct CName {
    qualname: CString,
    _owner: Option<Py<PyAny>>,
}

static C_NAMES: Mutex<Option<HashMap<(usize, usize), CName>>> = Mutex::new(None);

/// SAFETY: GIL held; `func` is the live callable of a C_CALL event.
unsafe fn emit_c_call(py: Python<'_>, func: *mut ffi::PyObject) {
    if ffi::PyCFunction_Check(func) == 0 {
        // Not a builtin function object: name it through its attributes.
        let func = Bound::from_borrowed_ptr(py, func);
        let (name, qualname) = names::preserving_error(py, || {
            let name = func
                .getattr(pyo3::intern!(py, "__name__"))
                .map(|n| names::to_cstring(&n))
                .unwrap_or_else(|_| names::cstring("?".to_owned()));
            let qualname = func
                .getattr(pyo3::intern!(py, "__qualname__"))
                .map(|n| names::to_cstring(&n))
                .unwrap_or_else(|_| name.clone());
            (name, qualname)
        });
        tp::emit_c_call(&name, &qualname);
        return;
    }
    let f = func.cast::<ffi::PyCFunctionObject>();
    let ml = (*f).m_ml;
    let owner = (*f).m_self;
    let name = CStr::from_ptr((*ml).ml_name);
    let owner_type: *mut ffi::PyObject = if owner.is_null() || ffi::PyModule_Check(owner) != 0 {
        std::ptr::null_mut()
    } else if ffi::PyType_Check(owner) != 0 {
        owner
    } else {
        ffi::Py_TYPE(owner).cast()
    };
    let key = (ml as usize, owner_type as usize);
    {
        let cache = C_NAMES.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = cache.as_ref().and_then(|c| c.get(&key)) {
            tp::emit_c_call(name, &entry.qualname);
            return;
        }
    }
    // Computed outside the lock: it may run Python code.
    let entry = names::preserving_error(py, || {
        let owner_obj = (!owner.is_null()).then(|| Bound::from_borrowed_ptr(py, owner));
        let module_obj =
            (!(*f).m_module.is_null()).then(|| Bound::from_borrowed_ptr(py, (*f).m_module));
        CName {
            qualname: names::c_function_qualname(
                &name.to_string_lossy(),
                owner_obj.as_ref(),
                module_obj.as_ref(),
            ),
            _owner: (!owner_type.is_null())
                .then(|| Bound::from_borrowed_ptr(py, owner_type).unbind()),
        }
    });
    tp::emit_c_call(name, &entry.qualname);
    let mut cache = C_NAMES.lock().unwrap_or_else(|e| e.into_inner());
    cache.get_or_insert_with(HashMap::new).insert(key, entry);
}

/// SAFETY: GIL held; `frame` live; `arg` the (type, value, traceback) tuple
/// of a PyTrace_EXCEPTION event.
unsafe fn emit_exception(py: Python<'_>, frame: *mut ffi::PyFrameObject, arg: *mut ffi::PyObject) {
    let exc_type = names::preserving_error(py, || {
        let arg = Bound::from_borrowed_ptr(py, arg);
        let ty = arg
            .cast::<PyTuple>()
            .ok()
            .and_then(|t| t.get_item(0).ok())
            .and_then(|t| t.cast_into::<PyType>().ok());
        names::cstring(
            ty.map(|t| names::type_name(&t))
                .unwrap_or_else(|| "?".to_owned()),
        )
    });
    let lineno = ffi::PyFrame_GetLineNumber(frame);
    if let Some(info) = code_info(py, frame_code(frame)) {
        tp::emit_exception(&exc_type, &info.names.co_qualname, lineno);
    }
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
    if !ENABLED.load(Ordering::Relaxed) {
        uninstall_current_thread();
        return;
    }
    let mask = tp::enabled();
    match what {
        ffi::PyTrace_CALL => {
            with_depth(|d| d.frames += 1);
            if mask & tp::EV_CALL != 0 {
                emit_call(py, frame);
            }
        }
        ffi::PyTrace_RETURN => {
            let open = with_depth(|d| {
                let open = d.frames > 0;
                d.frames = d.frames.saturating_sub(1);
                open
            });
            if open && mask & tp::EV_RETURN != 0 {
                tp::emit_return();
            }
        }
        ffi::PyTrace_C_CALL => {
            if is_own(arg) {
                return;
            }
            with_depth(|d| d.c_calls += 1);
            if mask & tp::EV_C_CALL != 0 {
                emit_c_call(py, arg);
            }
        }
        ffi::PyTrace_C_RETURN | ffi::PyTrace_C_EXCEPTION => {
            if is_own(arg) {
                return;
            }
            let open = with_depth(|d| {
                let open = d.c_calls > 0;
                d.c_calls = d.c_calls.saturating_sub(1);
                open
            });
            if open && mask & tp::EV_C_RETURN != 0 {
                tp::emit_c_return();
            }
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
    match what {
        ffi::PyTrace_CALL | ffi::PyTrace_LINE => match LAYOUT.get().and_then(|l| l.trace_lines) {
            // SAFETY: the offset of the frame's f_trace_lines flag, checked at import.
            Some(offset) => *frame.cast::<u8>().add(offset) = 0,
            None => names::preserving_error(py, || {
                let frame = Bound::from_borrowed_ptr(py, frame.cast());
                let _ = frame.setattr(pyo3::intern!(py, "f_trace_lines"), false);
            }),
        },
        ffi::PyTrace_EXCEPTION
            if ENABLED.load(Ordering::Relaxed) && tp::enabled() & tp::EV_EXCEPTION != 0 =>
        {
            emit_exception(py, frame, arg);
        }
        _ => {}
    }
}

/// Installs both callbacks on the calling thread.
fn install_current_thread() {
    // SAFETY: the GIL is held by every caller (pyfunctions and the hooks).
    unsafe {
        ffi::PyEval_SetProfile(Some(profile_hook), std::ptr::null_mut());
        ffi::PyEval_SetTrace(Some(trace_hook), std::ptr::null_mut());
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

/// Starts tracing: the calling thread now, threads started later through
/// threading's profile hook, and on 3.12+ every running thread.
pub fn enable(py: Python<'_>, thread_start: &Bound<'_, PyAny>) -> PyResult<()> {
    if !ENABLED.load(Ordering::SeqCst) {
        // Nesting restarts from here on every thread.
        GENERATION.fetch_add(1, Ordering::Relaxed);
    }
    set_threading_hook(py, thread_start.as_any())?;
    ENABLED.store(true, Ordering::SeqCst);
    #[cfg(Py_3_12)]
    // SAFETY: GIL held.
    unsafe {
        tp::PyEval_SetProfileAllThreads(Some(profile_hook), std::ptr::null_mut());
        tp::PyEval_SetTraceAllThreads(Some(trace_hook), std::ptr::null_mut());
    }
    install_current_thread();
    Ok(())
}

/// Stops tracing on every thread: this one now, the others at their next event.
pub fn disable(py: Python<'_>) -> PyResult<()> {
    ENABLED.store(false, Ordering::SeqCst);
    uninstall_current_thread();
    set_threading_hook(py, &py.None().into_bound(py))
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

pub fn is_enabled() -> bool {
    ENABLED.load(Ordering::SeqCst)
}

/// First event of a thread started while tracing: installed by
/// `threading.setprofile`, it replaces itself with the C hooks and reports
/// the event it was called for.
pub fn thread_start(frame: &Bound<'_, PyAny>, event: &str) {
    if !ENABLED.load(Ordering::SeqCst) {
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

/// Runs `code` in `globals` traced on this thread, as the body of
/// `python -m pyust`: no frame of pyust is between the hook and the script.
/// The hook leaves this thread when the code ends; other threads go on.
pub fn run(
    py: Python<'_>,
    code: &Bound<'_, PyCode>,
    globals: &Bound<'_, PyAny>,
    thread_start: &Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    enable(py, thread_start)?;
    // SAFETY: GIL held; `code` is a code object and `globals` a dict (checked
    // by the caller), both alive for the call.
    let result = unsafe { ffi::PyEval_EvalCode(code.as_ptr(), globals.as_ptr(), globals.as_ptr()) };
    uninstall_current_thread();
    // SAFETY: PyEval_EvalCode returns a new reference or null with an error set.
    unsafe { Bound::from_owned_ptr_or_err(py, result) }.map(Bound::unbind)
}
