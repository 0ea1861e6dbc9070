//! The backend for CPython < 3.12: C-ABI callbacks installed with the
//! interpreter's C API, `PyEval_SetProfile` for calls, returns and C calls,
//! and `PyEval_SetTrace` for exceptions (profile functions are not told of
//! them), with per-line events switched off frame by frame. Threads started
//! later are hooked through `threading`'s profile hook.
//!
//! CPython has one profile and one trace function per thread. Where the
//! program has its own (coverage.py, a debugger, a profiler), pyust's
//! callbacks are chained in front of them: they keep the program's object
//! (what `sys.gettrace()` returns), call the program's function first with
//! every event, and give it back when pyust leaves the thread.
//!
//! One file of about 650 lines: the callbacks, the chaining and the
//! arming all work on the per-thread state declared here (the chain, the
//! frame layout), which a split would have to widen to the whole crate.

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::Mutex;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyTuple, PyType};

use super::hook::{self, Out, ARMED, ENABLED};
use super::names;
use crate::ffi::cpython as cpy;
use crate::ffi::lttng as tp;

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

/// Checks the frame and thread-state layouts; called once at module import.
pub fn init(py: Python<'_>) {
    // SAFETY: GIL held.
    unsafe { cpy::check_hooks_offset() };
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
    // SAFETY: the caller upholds this function's contract (see its doc).
    unsafe {
        ffi::PyFrame_GetGlobals(frame) // a new reference
    }
}
#[cfg(Py_3_11)]
unsafe fn release_globals(globals: *mut ffi::PyObject) {
    // SAFETY: the caller upholds this function's contract (see its doc).
    unsafe { ffi::Py_DECREF(globals) }
}
#[cfg(not(Py_3_11))]
unsafe fn frame_globals(frame: *mut ffi::PyFrameObject) -> *mut ffi::PyObject {
    // SAFETY: the caller upholds this function's contract (see its doc).
    unsafe {
        match LAYOUT.get().and_then(|l| l.globals) {
            // The frame's f_globals field (borrowed), at an offset checked at import.
            Some(offset) => *frame.cast::<u8>().add(offset).cast::<*mut ffi::PyObject>(),
            None => std::ptr::null_mut(),
        }
    }
}
#[cfg(not(Py_3_11))]
unsafe fn release_globals(_globals: *mut ffi::PyObject) {}

/// The frame's code object (borrowed), or null when unknown.
///
/// SAFETY: GIL held; `frame` live.
#[cfg(Py_3_9)]
unsafe fn frame_code(frame: *mut ffi::PyFrameObject) -> *mut ffi::PyObject {
    // SAFETY: the caller upholds this function's contract (see its doc).
    unsafe {
        let code = ffi::PyFrame_GetCode(frame); // a new reference
        ffi::Py_DECREF(code.cast()); // the frame keeps it alive
        code.cast()
    }
}
#[cfg(not(Py_3_9))]
unsafe fn frame_code(frame: *mut ffi::PyFrameObject) -> *mut ffi::PyObject {
    // SAFETY: the caller upholds this function's contract (see its doc).
    unsafe {
        match LAYOUT.get().and_then(|l| l.code) {
            // The frame's f_code field (borrowed), at an offset checked at import.
            Some(offset) => *frame.cast::<u8>().add(offset).cast::<*mut ffi::PyObject>(),
            None => std::ptr::null_mut(),
        }
    }
}

/// SAFETY: GIL held; `frame` live; `arg` the (type, value, traceback) tuple
/// of a PyTrace_EXCEPTION event.
unsafe fn emit_exception(_py: Python<'_>, frame: *mut ffi::PyFrameObject, arg: *mut ffi::PyObject) {
    hook::attached(|py| {
        // SAFETY: the caller upholds this function's contract (see its doc).
        unsafe {
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
            hook::emit_exception(
                py,
                exc_type.as_ref(),
                frame_code(frame),
                lineno,
                Out::exception(),
            );
        }
    });
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
    // SAFETY: the caller upholds this function's contract (see its doc).
    unsafe {
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
}

/// The program's own profile and trace functions on one thread, which
/// pyust's call first (their objects stay installed, with pyust's functions).
#[derive(Clone, Copy, Default)]
struct Chain {
    profile: Option<ffi::Py_tracefunc>,
    trace: Option<ffi::Py_tracefunc>,
}

impl Chain {
    /// The program's trace function (`trace`) or profile function.
    fn slot(&mut self, trace: bool) -> &mut Option<ffi::Py_tracefunc> {
        if trace {
            &mut self.trace
        } else {
            &mut self.profile
        }
    }
}

/// pyust's trace function (`trace`) or profile function.
fn ours(trace: bool) -> ffi::Py_tracefunc {
    if trace {
        trace_hook
    } else {
        profile_hook
    }
}

/// Each thread's chain, by thread state, as found when pyust's callbacks
/// were installed there (a state freed and reused by a new thread gets its
/// entry anew when pyust's callbacks are installed on it).
static CHAINS: Mutex<Option<HashMap<usize, Chain>>> = Mutex::new(None);
/// Bumped whenever `CHAINS` changes: each thread then reads its entry again.
static CHAINS_VERSION: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's chain, as of `CHAINS_VERSION` (0: never read).
    static MY_CHAIN: Cell<(u64, Chain)> = const { Cell::new((0, Chain { profile: None, trace: None })) };
}

/// The calling thread's chain.
#[inline]
fn my_chain() -> Chain {
    let version = CHAINS_VERSION.load(Ordering::Acquire);
    MY_CHAIN.with(|cell| {
        let (seen, chain) = cell.get();
        if seen == version {
            return chain;
        }
        // SAFETY: called from the callbacks, with the GIL held.
        let chain = chain_of(unsafe { ffi::PyThreadState_Get() });
        cell.set((version, chain));
        chain
    })
}

fn set_chain(ts: *mut ffi::PyThreadState, chain: Chain) {
    CHAINS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(ts as usize, chain);
    CHAINS_VERSION.fetch_add(1, Ordering::Release);
}

fn chain_of(ts: *mut ffi::PyThreadState) -> Chain {
    CHAINS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .and_then(|c| c.get(&(ts as usize)).copied())
        .unwrap_or_default()
}

/// The profile function: calls, returns and C calls.
unsafe extern "C" fn profile_hook(
    obj: *mut ffi::PyObject,
    frame: *mut ffi::PyFrameObject,
    what: c_int,
    arg: *mut ffi::PyObject,
) -> c_int {
    let chain = my_chain();
    if let Some(theirs) = chain.profile {
        // SAFETY: the program's own profile function, called as CPython
        // would: its object, the live frame and argument of this event.
        let status = unsafe { theirs(obj, frame, what, arg) };
        if status != 0 {
            return status; // its error is set: CPython raises it
        }
    }
    hook::guarded(|py| {
        // SAFETY: CPython calls profile functions with the GIL held and live
        // `frame`/`arg` for the duration of the call.
        unsafe { profile_event(py, frame, what, arg) }
    });
    0
}

/// # Safety
/// GIL held; `frame` and `arg` those of a live profile event.
unsafe fn profile_event(
    py: Python<'_>,
    frame: *mut ffi::PyFrameObject,
    what: c_int,
    arg: *mut ffi::PyObject,
) {
    if !ENABLED.load(Ordering::Acquire) || !ARMED.load(Ordering::Relaxed) {
        uninstall_current_thread();
        return;
    }
    // SAFETY: GIL held, `frame` and `arg` live (the caller promises);
    // `arg` is the callable of the C events.
    unsafe {
        match what {
            ffi::PyTrace_CALL if hook::frame_entered() => {
                let out = Out::call();
                if out.any() {
                    let globals = frame_globals(frame);
                    hook::emit_call(py, frame_code(frame), globals, out);
                    release_globals(globals);
                }
            }
            ffi::PyTrace_CALL => {}
            ffi::PyTrace_RETURN => hook::frame_left(),
            // Counted even when the event is off (the guard runs in order).
            ffi::PyTrace_C_CALL if !hook::is_own(arg) && hook::c_call_entered() => {
                let out = Out::c_call();
                if out.any() {
                    hook::emit_c_call(py, arg, out);
                }
            }
            ffi::PyTrace_C_RETURN | ffi::PyTrace_C_EXCEPTION if !hook::is_own(arg) => {
                hook::c_call_left();
            }
            _ => {}
        }
    }
}

/// The trace function: only for `PyTrace_EXCEPTION` (profile functions are
/// not told of exceptions). Line events are switched off on each frame it
/// sees, so it costs one callback per frame, not per line — unless the
/// program has a trace function of its own, which gets every event.
unsafe extern "C" fn trace_hook(
    obj: *mut ffi::PyObject,
    frame: *mut ffi::PyFrameObject,
    what: c_int,
    arg: *mut ffi::PyObject,
) -> c_int {
    let chain = my_chain();
    if let Some(theirs) = chain.trace {
        // SAFETY: as in `profile_hook`.
        let status = unsafe { theirs(obj, frame, what, arg) };
        if status != 0 {
            return status;
        }
    }
    hook::guarded(|py| {
        // SAFETY: as for `profile_hook`.
        unsafe { trace_event(py, frame, what, arg, chain.trace.is_some()) }
    });
    0
}

/// # Safety
/// GIL held; `frame` and `arg` those of a live trace event.
unsafe fn trace_event(
    py: Python<'_>,
    frame: *mut ffi::PyFrameObject,
    what: c_int,
    arg: *mut ffi::PyObject,
    chained: bool,
) {
    if !WANT_TRACE.load(Ordering::Relaxed) || !ENABLED.load(Ordering::Acquire) {
        // Re-armed without python:exception, or disabled: leave.
        uninstall_current(true);
        return;
    }
    match what {
        ffi::PyTrace_CALL | ffi::PyTrace_LINE if !chained => {
            match LAYOUT.get().and_then(|l| l.trace_lines) {
                // SAFETY: the offset of the frame's f_trace_lines flag,
                // checked at import; `frame` is live.
                Some(offset) => unsafe { *frame.cast::<u8>().add(offset) = 0 },
                None => names::preserving_error(py, || {
                    // SAFETY: `frame` is a live frame object.
                    let frame = unsafe { Bound::from_borrowed_ptr(py, frame.cast()) };
                    let _ = frame.setattr(pyo3::intern!(py, "f_trace_lines"), false);
                }),
            }
        }
        ffi::PyTrace_EXCEPTION if ARMED.load(Ordering::Relaxed) && Out::exception().any() => {
            // SAFETY: as the caller promises.
            unsafe { emit_exception(py, frame, arg) };
        }
        _ => {}
    }
}

/// Shapes (see `control::sync`): the profile function for calls, returns
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
        m if m & (tp::EV_EXCEPTION | tp::EV_FAST) != 0 => FULL_SHAPE,
        _ => PROFILE,
    }
}

/// Whether the trace function is part of the armed shape.
static WANT_TRACE: AtomicBool = AtomicBool::new(true);

/// Installs pyust's callbacks on thread `ts` (the calling thread on 3.8),
/// in front of the program's own: theirs are kept in the thread's chain,
/// their objects stay installed.
///
/// # Safety
/// GIL held; `ts` a live thread state of this interpreter.
unsafe fn install(ts: *mut ffi::PyThreadState, trace: bool) {
    let kinds: &[bool] = if trace { &[false, true] } else { &[false] };
    // SAFETY: as the caller promises.
    let Some(now) = (unsafe { cpy::hooks(ts) }) else {
        // The thread state's layout is unknown: pyust's alone.
        for &kind in kinds {
            // SAFETY: as the caller promises.
            unsafe { cpy::set_hook(ts, kind, Some(ours(kind)), std::ptr::null_mut()) };
        }
        return;
    };
    let mut chain = chain_of(ts);
    let mut replace = Vec::with_capacity(2);
    for &kind in kinds {
        let (theirs, obj) = now.get(kind);
        if !cpy::same_hook(theirs, ours(kind)) {
            *chain.slot(kind) = theirs;
            replace.push((kind, obj));
        }
    }
    // The chain first: pyust's function reads it from its first event.
    set_chain(ts, chain);
    for (kind, obj) in replace {
        // SAFETY: as the caller promises; the object is the thread's own,
        // alive while installed.
        unsafe { cpy::set_hook(ts, kind, Some(ours(kind)), obj) };
    }
}

/// Installs the callbacks of the armed shape on the calling thread.
fn install_current_thread() {
    // SAFETY: the GIL is held by every caller (pyfunctions and the hooks).
    unsafe { install(ffi::PyThreadState_Get(), WANT_TRACE.load(Ordering::SeqCst)) }
}

/// Removes pyust's callbacks from the calling thread, if they are still
/// installed, giving the program's own back; a function the program
/// installed since is left alone.
fn uninstall_current_thread() {
    uninstall_current(false);
    uninstall_current(true);
}

/// The same for the trace function (`trace`) or the profile function.
fn uninstall_current(trace: bool) {
    // SAFETY: GIL held by every caller; the thread state is the caller's.
    unsafe {
        let ts = ffi::PyThreadState_Get();
        let Some(now) = cpy::hooks(ts) else {
            cpy::set_hook(ts, trace, None, std::ptr::null_mut());
            return;
        };
        let mut chain = chain_of(ts);
        let (installed, obj) = now.get(trace);
        if cpy::same_hook(installed, ours(trace)) {
            cpy::set_hook(ts, trace, *chain.slot(trace), obj);
        }
        *chain.slot(trace) = None;
        set_chain(ts, chain);
    }
}

/// Whether `arm` reaches every thread (3.9+: `_PyEval_SetProfile` takes a
/// thread state). On 3.8 tracing is armed for good at `enable()`.
pub const CAN_ARM_ALL_THREADS: bool = cfg!(Py_3_9);

/// The launcher's thread once its script has ended: never armed again.
static LEFT: AtomicPtr<ffi::PyThreadState> = AtomicPtr::new(std::ptr::null_mut());
/// pyust's `_thread_start` while it is threading's profile hook.
static THREAD_START: AtomicPtr<ffi::PyObject> = AtomicPtr::new(std::ptr::null_mut());
/// The program's own `threading.setprofile` hook, which pyust's replaced:
/// new threads get it back, pyust's callbacks in front of it.
static PROGRAM_THREAD_HOOK: Mutex<Option<Py<PyAny>>> = Mutex::new(None);

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
    let threading = py.import("threading")?;
    let theirs = threading_hook(&threading)?;
    if !theirs.is_none() && !theirs.is(thread_start) {
        *PROGRAM_THREAD_HOOK
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(theirs.unbind());
    }
    THREAD_START.store(thread_start.as_ptr(), Ordering::SeqCst);
    set_threading_hook(&threading, thread_start)
}

/// Tracing is disabled: threading's profile hook is the program's again.
pub fn stop(py: Python<'_>) -> PyResult<()> {
    let theirs = PROGRAM_THREAD_HOOK
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let threading = py.import("threading")?;
    let hook = theirs.map_or_else(|| py.None().into_bound(py), |h| h.into_bound(py));
    set_threading_hook(&threading, &hook)
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
        let thread_start = THREAD_START.load(Ordering::SeqCst);
        let mut ts = ffi::PyInterpreterState_ThreadHead(ffi::PyInterpreterState_Get());
        while !ts.is_null() {
            // A thread whose first event is still to come installs the
            // callbacks itself (`thread_start`).
            let starting = cpy::hooks(ts).is_some_and(|h| h.profile_obj == thread_start);
            if ts != left && !starting {
                install(ts, trace);
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

/// What `threading.getprofile()` returns (3.10+; `_profile_hook` before).
fn threading_hook<'py>(threading: &Bound<'py, PyModule>) -> PyResult<Bound<'py, PyAny>> {
    threading.getattr("_profile_hook")
}

/// What `threading.setprofile(hook)` does, without running Python code
/// (which the hook, already installed, would report).
fn set_threading_hook(threading: &Bound<'_, PyModule>, hook: &Bound<'_, PyAny>) -> PyResult<()> {
    if threading.hasattr("_profile_hook")? {
        threading.setattr("_profile_hook", hook)
    } else {
        threading.call_method1("setprofile", (hook,)).map(drop)
    }
}

/// First event of a thread started while tracing: installed by
/// `threading.setprofile`, it gives the thread the program's own
/// threading profile hook back (and that hook this event), then puts
/// pyust's callbacks in front of it and reports the event.
pub fn thread_start(frame: &Bound<'_, PyAny>, event: &str, arg: Option<&Bound<'_, PyAny>>) {
    let py = frame.py();
    let theirs = PROGRAM_THREAD_HOOK
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|h| h.clone_ref(py));
    names::preserving_error(py, || match &theirs {
        Some(theirs) => {
            let sys = py.import("sys")?;
            sys.call_method1("setprofile", (theirs,))?;
            let none = py.None();
            theirs.call1(py, (frame, event, arg.unwrap_or(none.bind(py))))?;
            PyResult::Ok(())
        }
        None => {
            // SAFETY: GIL held; removes `_thread_start` from this thread.
            unsafe { cpy::set_hook(ffi::PyThreadState_Get(), false, None, std::ptr::null_mut()) };
            Ok(())
        }
    })
    .ok();
    if !ENABLED.load(Ordering::SeqCst) || !ARMED.load(Ordering::SeqCst) {
        return;
    }
    install_current_thread();
    if event == "call" {
        // SAFETY: GIL held; `frame` is a live frame object.
        unsafe {
            profile_event(
                py,
                frame.as_ptr().cast(),
                ffi::PyTrace_CALL,
                std::ptr::null_mut(),
            )
        };
    }
}
