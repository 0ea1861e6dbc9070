//! What both backends share: tracing state, per-thread nesting, the names
//! cached per code object (co_extra) and per C function, and the emitters
//! that turn interpreter objects into `python:*` events.
//!
//! The backend is `sys.monitoring` (PEP 669) on CPython 3.12+ (`monitor.rs`)
//! and a C profile + trace function before (`profile.rs`). Either way the
//! hot path is one read of LTTng's enabled flags, then, only for an enabled
//! event, cached strings. A callback never unwinds into CPython, never
//! raises and never leaves or clears an exception.

#[cfg(Py_3_12)]
use crate::monitor as backend;
#[cfg(not(Py_3_12))]
use crate::profile as backend;

use std::cell::{Cell, UnsafeCell};
use std::collections::HashMap;
use std::ffi::{c_int, c_void, CStr, CString};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyCode, PyType};

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
pub unsafe fn is_own(func: *mut ffi::PyObject) -> bool {
    if func.is_null() || ffi::PyCFunction_Check(func) == 0 {
        return false;
    }
    let owner = (*func.cast::<tp::CFunctionObject>()).m_self;
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
pub static ENABLED: AtomicBool = AtomicBool::new(false);
/// Bumped by every `enable()`, so per-thread nesting restarts from zero.
static GENERATION: AtomicU64 = AtomicU64::new(0);
/// The co_extra slot holding each code object's `CodeInfo`; -1 before init.
static CODE_EXTRA: AtomicIsize = AtomicIsize::new(-1);

/// Per-thread nesting of what this thread's hook has reported, so that a
/// `return` is only emitted for a `call` that was (frames already running
/// when tracing started close without a trace).
#[derive(Clone, Copy, Default)]
pub struct Depth {
    generation: u64,
    pub frames: u32,
    pub c_calls: u32,
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

/// A Python frame starts on this thread (its `call` may or may not be
/// recorded: its return is matched either way).
pub fn frame_entered() {
    with_depth(|d| d.frames += 1);
}

/// A Python frame stops: `python:return` when its start was counted (since
/// tracing was last armed) and a session records the event.
pub fn frame_left() {
    let open = with_depth(|d| {
        let open = d.frames > 0;
        d.frames = d.frames.saturating_sub(1);
        open
    });
    if open && tp::on(tp::EV_RETURN) {
        tp::emit_return();
    }
}

/// The same for C calls: counted on entry, `python:c_return` on exit.
pub fn c_call_entered() {
    with_depth(|d| d.c_calls += 1);
}

pub fn c_call_left() {
    let open = with_depth(|d| {
        let open = d.c_calls > 0;
        d.c_calls = d.c_calls.saturating_sub(1);
        open
    });
    if open && tp::on(tp::EV_C_RETURN) {
        tp::emit_c_return();
    }
}

/// What a code object's events carry, built once and owned by the code
/// object (co_extra), freed with it.
struct CodeInfo {
    names: names::CodeNames,
    /// The `__name__` object `module` was made from (a strong reference, so
    /// the pointer cannot be reused), and its UTF-8.
    module: UnsafeCell<(*mut ffi::PyObject, CString)>,
    /// The globals dict `module` was last looked up in (address and
    /// version tag, not a reference): while it is unchanged, so is its
    /// `__name__`, and the lookup is skipped.
    module_from: std::cell::Cell<(usize, u64)>,
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

/// Reserves the co_extra slot and prepares the backend; called once at
/// module import.
pub fn init(py: Python<'_>) {
    backend::init(py);
    if CODE_EXTRA.load(Ordering::Relaxed) < 0 {
        // SAFETY: the GIL is held (`_py`); the free function matches the slot.
        let index = unsafe { tp::request_code_extra_index(free_code_info) };
        CODE_EXTRA.store(index as isize, Ordering::Relaxed);
    }
}

/// The cached names of `code`, made on first use.
///
/// `globals` (null when unknown) serves, before 3.11, to find the qualified
/// name of a function whose enclosing code was never seen.
///
/// SAFETY: GIL held; `code` is a live code object, `globals` null or a dict.
unsafe fn code_info<'a>(
    py: Python<'_>,
    code: *mut ffi::PyObject,
    globals: *mut ffi::PyObject,
) -> Option<&'a CodeInfo> {
    if code.is_null() {
        return None;
    }
    if let Some(info) = cached_code_info(code) {
        return Some(info);
    }
    let code_obj = Bound::from_borrowed_ptr(py, code);
    let code_obj = code_obj.cast::<PyCode>().ok()?;
    #[allow(unused_mut)]
    let mut names = names::preserving_error(py, || names::code_names(code_obj));
    #[cfg(not(Py_3_11))]
    names::preserving_error(py, || {
        let globals = (!globals.is_null()).then(|| Bound::from_borrowed_ptr(py, globals));
        if let Some(qualname) = names::find_qualname(code_obj, globals.as_ref()) {
            names.co_qualname = names::cstring(qualname);
        }
        qualify_nested(code_obj, &names.co_qualname.to_string_lossy(), 0);
    });
    #[cfg(Py_3_11)]
    let _ = globals;
    Some(store_code_info(code, names))
}

/// The names cached on `code`, if any.
///
/// SAFETY: GIL held; `code` a live code object.
unsafe fn cached_code_info<'a>(code: *mut ffi::PyObject) -> Option<&'a CodeInfo> {
    let index = CODE_EXTRA.load(Ordering::Relaxed);
    if index >= 0 {
        let extra = tp::code_get_extra(code, index as ffi::Py_ssize_t);
        if !extra.is_null() {
            return Some(&*extra.cast::<CodeInfo>());
        }
    }
    None
}

/// Before 3.11 code objects have no co_qualname: give the code objects
/// nested in `code` (its functions, classes, lambdas, comprehensions)
/// theirs, by the compiler's rules, from `qualname`, the name of `code`.
#[cfg(not(Py_3_11))]
fn qualify_nested(code: &Bound<'_, PyCode>, qualname: &str, depth: u32) {
    if depth > 64 {
        return;
    }
    for child in names::nested_codes(code, qualname) {
        let (child, child_qualname) = child;
        // SAFETY: GIL held; `child` is a live code object.
        unsafe {
            if cached_code_info(child.as_ptr()).is_some() {
                continue;
            }
            let mut child_names = names::code_names(&child);
            child_names.co_qualname = names::cstring(child_qualname.clone());
            store_code_info(child.as_ptr(), child_names);
        }
        qualify_nested(&child, &child_qualname, depth + 1);
    }
}

/// Caches `names` on `code` (co_extra), which then owns them.
///
/// SAFETY: GIL held; `code` a live code object.
unsafe fn store_code_info<'a>(code: *mut ffi::PyObject, names: names::CodeNames) -> &'a CodeInfo {
    let index = CODE_EXTRA.load(Ordering::Relaxed);
    let info = Box::new(CodeInfo {
        names,
        module: UnsafeCell::new((std::ptr::null_mut(), CString::default())),
        module_from: std::cell::Cell::new((0, 0)),
    });
    let raw = Box::into_raw(info);
    if index >= 0 && tp::code_set_extra(code, index as ffi::Py_ssize_t, raw.cast()) {
        return &*raw;
    }
    // No slot: keep it alive for good (one per code object, only if
    // CPython ever refuses the slot).
    &*raw
}

/// `__name__` of the frame's globals, as cached on `info`.
///
/// SAFETY: GIL held; `globals` null or a live dict.
unsafe fn module_name<'a>(
    py: Python<'_>,
    info: &'a CodeInfo,
    globals: *mut ffi::PyObject,
) -> &'a CStr {
    let version = if globals.is_null() {
        0
    } else {
        tp::dict_version(globals)
    };
    let from = (globals as usize, version);
    if version != 0 && info.module_from.get() == from {
        return &(*info.module.get()).1;
    }
    info.module_from.set(from);
    let name = if globals.is_null() {
        std::ptr::null_mut()
    } else {
        ffi::PyDict_GetItem(globals, pyo3::intern!(py, "__name__").as_ptr())
    };
    let slot = &mut *info.module.get();
    // The slot starts as (null, ""): right for globals without `__name__`.
    if slot.0 != name {
        let text = if name.is_null() {
            CString::default() // globals without `__name__`
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

/// `python:call` for a frame running `code` with `globals` (borrowed; may
/// be null when unknown).
///
/// SAFETY: GIL held; `code` a live code object, `globals` null or a dict.
pub unsafe fn emit_call(py: Python<'_>, code: *mut ffi::PyObject, globals: *mut ffi::PyObject) {
    if let Some(info) = code_info(py, code, globals) {
        let module = module_name(py, info, globals);
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
pub unsafe fn emit_c_call(py: Python<'_>, func: *mut ffi::PyObject) {
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
    let f = func.cast::<tp::CFunctionObject>();
    emit_c_call_named(py, (*f).m_ml, (*f).m_self, (*f).m_module);
}

/// `python:c_call` for a method descriptor called on `self_arg` (3.12+
/// reports `obj.method(...)` so, without binding it first).
///
/// SAFETY: GIL held; `descr` a live method descriptor, `self_arg` null or live.
#[cfg_attr(not(Py_3_12), allow(dead_code))]
pub unsafe fn emit_c_call_descriptor(
    py: Python<'_>,
    descr: *mut ffi::PyObject,
    self_arg: *mut ffi::PyObject,
) {
    let d = descr.cast::<ffi::PyMethodDescrObject>();
    let owner = if self_arg.is_null() {
        (*d).d_common.d_type.cast()
    } else {
        self_arg
    };
    emit_c_call_named(py, (*d).d_method, owner, std::ptr::null_mut());
}

/// `python:c_call` for the C function `ml` bound to `owner` (its `__self__`:
/// a module, a type or an instance; may be null), from module `module`.
///
/// SAFETY: GIL held; `ml` a live method definition; the others null or live.
unsafe fn emit_c_call_named(
    py: Python<'_>,
    ml: *mut ffi::PyMethodDef,
    owner: *mut ffi::PyObject,
    module: *mut ffi::PyObject,
) {
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
        let module_obj = (!module.is_null()).then(|| Bound::from_borrowed_ptr(py, module));
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

/// `python:exception` for an exception of type `exc_type` in `code` at `lineno`.
///
/// SAFETY: GIL held; `code` a live code object.
pub unsafe fn emit_exception(
    py: Python<'_>,
    exc_type: Option<&Bound<'_, PyType>>,
    code: *mut ffi::PyObject,
    lineno: c_int,
) {
    let exc_type = names::preserving_error(py, || {
        names::cstring(
            exc_type
                .map(names::type_name)
                .unwrap_or_else(|| "?".to_owned()),
        )
    });
    if let Some(info) = code_info(py, code, std::ptr::null_mut()) {
        tp::emit_exception(&exc_type, &info.names.co_qualname, lineno);
    }
}

/// Whether the backend's callbacks are installed. Tracing that is enabled
/// while no LTTng session records any `python:*` event stays disarmed: the
/// program runs as untraced, and a watcher thread arms the callbacks within
/// `WATCH_PERIOD` of a session enabling the events (and disarms them when
/// none does any more).
pub static ARMED: AtomicBool = AtomicBool::new(false);
/// How often the watcher looks at LTTng's enabled flags.
pub const WATCH_PERIOD: std::time::Duration = std::time::Duration::from_millis(20);
static WATCH_STOP: AtomicBool = AtomicBool::new(false);
static WATCHER: Mutex<Option<std::thread::JoinHandle<()>>> = Mutex::new(None);

/// Starts tracing, for every thread (see the backend for how).
pub fn enable(py: Python<'_>, thread_start: &Bound<'_, PyAny>) -> PyResult<()> {
    if !ENABLED.load(Ordering::SeqCst) {
        // Nesting restarts from here on every thread.
        GENERATION.fetch_add(1, Ordering::Relaxed);
    }
    ENABLED.store(true, Ordering::SeqCst);
    backend::start(py, thread_start)?;
    // Before arming: starting the watcher imports modules, which would be
    // traced.
    if backend::CAN_ARM_ALL_THREADS {
        start_watcher(py)?;
    }
    sync(py);
    Ok(())
}

/// Stops tracing on every thread.
pub fn disable(py: Python<'_>) -> PyResult<()> {
    ENABLED.store(false, Ordering::SeqCst);
    sync(py);
    backend::stop(py)
}

/// Which callbacks are armed: the backend's `shape` of the enabled events
/// they were armed for, 0 when disarmed.
static SHAPE: AtomicU8 = AtomicU8::new(0);

/// The callbacks `ENABLED` and the sessions want now (a backend shape, 0
/// for none).
fn wanted_shape() -> u8 {
    if !ENABLED.load(Ordering::SeqCst) {
        return 0;
    }
    if !backend::CAN_ARM_ALL_THREADS {
        return backend::FULL_SHAPE; // armed for good at enable()
    }
    backend::shape(tp::enabled())
}

/// Arms, re-arms or disarms the callbacks as `ENABLED` and the sessions
/// want.
fn sync(py: Python<'_>) {
    let want = wanted_shape();
    let armed = SHAPE.load(Ordering::SeqCst);
    if want == armed {
        return;
    }
    if want != 0 {
        if armed == 0 {
            // Frames already running close without a trace.
            GENERATION.fetch_add(1, Ordering::Relaxed);
        }
        SHAPE.store(want, Ordering::SeqCst);
        ARMED.store(true, Ordering::SeqCst);
        if let Err(err) = backend::arm(py, want) {
            ARMED.store(false, Ordering::SeqCst);
            SHAPE.store(0, Ordering::SeqCst);
            err.restore(py);
            // SAFETY: GIL held; the error was just set.
            unsafe { ffi::PyErr_WriteUnraisable(std::ptr::null_mut()) };
        }
    } else {
        ARMED.store(false, Ordering::SeqCst);
        SHAPE.store(0, Ordering::SeqCst);
        let _ = backend::disarm(py);
    }
}

/// The watcher: a native thread that polls LTTng's enabled flags (an
/// atomic read) every `WATCH_PERIOD` and takes the GIL only to arm or
/// disarm. Stopped at interpreter exit (atexit), restarted after fork.
fn start_watcher(py: Python<'_>) -> PyResult<()> {
    let mut watcher = WATCHER.lock().unwrap_or_else(|e| e.into_inner());
    if watcher.is_some() {
        return Ok(());
    }
    WATCH_STOP.store(false, Ordering::SeqCst);
    *watcher = Some(
        std::thread::Builder::new()
            .name("pyust-watcher".into())
            .spawn(|| loop {
                std::thread::sleep(WATCH_PERIOD);
                if WATCH_STOP.load(Ordering::SeqCst) {
                    break;
                }
                if wanted_shape() != SHAPE.load(Ordering::SeqCst) {
                    Python::attach(|py| {
                        if !WATCH_STOP.load(Ordering::SeqCst) {
                            sync(py);
                        }
                    });
                }
            })
            .map_err(|e| pyo3::exceptions::PyOSError::new_err(e.to_string()))?,
    );
    static AT_EXIT: std::sync::Once = std::sync::Once::new();
    let mut result = Ok(());
    AT_EXIT.call_once(|| {
        result = py
            .import("pyust._pyust")
            .and_then(|m| m.getattr("_stop_watcher"))
            .and_then(|stop| py.import("atexit")?.call_method1("register", (stop,)))
            .map(drop);
    });
    result
}

/// Stops the watcher (atexit: before the interpreter finalizes).
pub fn stop_watcher(py: Python<'_>) {
    WATCH_STOP.store(true, Ordering::SeqCst);
    let handle = WATCHER.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(handle) = handle {
        py.detach(|| {
            let _ = handle.join();
        });
    }
}

/// In a child that is about to exec: trace nothing more.
pub fn forked_for_exec() {
    ENABLED.store(false, Ordering::SeqCst);
    ARMED.store(false, Ordering::SeqCst);
    SHAPE.store(0, Ordering::SeqCst);
}

/// In a forked child: the watcher thread did not survive the fork.
pub fn after_fork_child(py: Python<'_>) {
    let stale = WATCHER.lock().unwrap_or_else(|e| e.into_inner()).take();
    // Not joinable here (no such thread in this process): forget it.
    std::mem::forget(stale);
    if ENABLED.load(Ordering::SeqCst) && backend::CAN_ARM_ALL_THREADS {
        let _ = start_watcher(py);
    }
}

pub fn is_enabled() -> bool {
    ENABLED.load(Ordering::SeqCst)
}

/// Which backend this build uses.
pub fn backend_name() -> &'static str {
    backend::NAME
}

/// `threading`'s profile hook for threads started while tracing (only the
/// profile backend installs it).
pub fn thread_start(frame: &Bound<'_, PyAny>, event: &str) {
    backend::thread_start(frame, event)
}

/// Runs `code` in `globals` traced, as the body of `python -m pyust`: no
/// frame of pyust is between the hook and the script. This thread stops
/// being reported when the code ends; other threads go on.
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
    backend::leave_current_thread();
    // SAFETY: PyEval_EvalCode returns a new reference or null with an error set.
    unsafe { Bound::from_owned_ptr_or_err(py, result) }.map(Bound::unbind)
}
