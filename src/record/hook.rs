//! The hot path both backends share: tracing state, per-thread nesting,
//! and the emitters that turn interpreter objects into `python:*` events
//! and fast-mode records. The names they emit are cached per code object
//! (`codes`, in co_extra) and per C function (`cfuncs`).
//!
//! The backend is `sys.monitoring` (PEP 669) on CPython 3.12+ (`monitor.rs`)
//! and a C profile + trace function before (`profile.rs`); `control.rs`
//! arms and disarms them. Either way the hot path is one read of LTTng's
//! enabled flags, then, only for an enabled event, cached strings. A
//! callback never unwinds into CPython, never raises and never leaves or
//! clears an exception. This file knows no backend.

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{c_int, CString};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::Mutex;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyType;

use super::codes::{code_info, module_name, Module};
use super::fast;
use super::names;
use crate::ffi::cpython as cpy;
use crate::ffi::lttng as tp;

pub use super::cfuncs::emit_c_call;
#[cfg(Py_3_12)]
pub use super::cfuncs::emit_c_call_descriptor;
pub use super::codes::init;

/// pyust's own native module and its classes: C calls into them are left
/// out of the trace, so no part of pyust shows in it.
static OWN: [AtomicPtr<ffi::PyObject>; 3] = [
    AtomicPtr::new(std::ptr::null_mut()),
    AtomicPtr::new(std::ptr::null_mut()),
    AtomicPtr::new(std::ptr::null_mut()),
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

/// Whether `func` (a C_CALL/C_RETURN argument, or a CALL event's callable)
/// is one of pyust's own: a function of its module, a method bound to one
/// of its objects, or a method descriptor of one of its classes (3.14
/// calls a `with` block's `__exit__` through its descriptor).
///
/// # Safety
/// GIL held; `func` null or live.
pub unsafe fn is_own(func: *mut ffi::PyObject) -> bool {
    if func.is_null() {
        return false;
    }
    // SAFETY: `func` is live (caller); a builtin function object starts
    // with the fields of `CFunctionObject`, a method descriptor with those
    // of `PyMethodDescrObject`.
    let (owner, ty): (*mut ffi::PyObject, *mut ffi::PyObject) = unsafe {
        if ffi::PyCFunction_Check(func) != 0 {
            let owner = (*func.cast::<cpy::CFunctionObject>()).m_self;
            if owner.is_null() {
                return false;
            }
            (owner, ffi::Py_TYPE(owner).cast())
        } else if ffi::Py_TYPE(func) == std::ptr::addr_of_mut!(ffi::PyMethodDescr_Type) {
            let class = (*func.cast::<ffi::PyMethodDescrObject>()).d_common.d_type;
            (class.cast(), class.cast())
        } else {
            return false;
        }
    };
    OWN.iter().any(|own| {
        let own = own.load(Ordering::Relaxed);
        owner == own || ty == own
    })
}

/// Whether `enable()` is in force. Threads whose hook sees it false remove it.
pub static ENABLED: AtomicBool = AtomicBool::new(false);
/// Whether the backend's callbacks are installed (see `control.rs`).
pub static ARMED: AtomicBool = AtomicBool::new(false);
/// Bumped whenever per-thread nesting must restart from zero: at each
/// `enable()` and arming (frames already running close without a trace)
/// and in a forked child (the parent's frames are the parent's).
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Per-thread nesting restarts from zero on every thread.
pub fn restart_nesting() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// Per-thread nesting of what this thread's hook has reported, so that a
/// `return` is only emitted for a `call` that was (frames already running
/// when tracing started close without a trace).
#[derive(Clone, Copy, Default)]
struct Depth {
    generation: u64,
    frames: u32,
    c_calls: u32,
    /// This thread is between LTTng-UST's before-fork and after-fork
    /// hooks: it emits nothing and counts nothing (the other at-fork hooks
    /// that run meanwhile start and end inside the window).
    muted: bool,
}

thread_local! {
    static DEPTH: Cell<Depth> = const {
        Cell::new(Depth { generation: 0, frames: 0, c_calls: 0, muted: false })
    };
}

#[inline]
fn with_depth<T>(f: impl FnOnce(&mut Depth) -> T) -> T {
    DEPTH.with(|cell| {
        let mut depth = cell.get();
        let generation = GENERATION.load(Ordering::Relaxed);
        if depth.generation != generation {
            depth = Depth {
                generation,
                muted: depth.muted,
                ..Depth::default()
            };
        }
        let out = f(&mut depth);
        cell.set(depth);
        out
    })
}

/// Mutes (or unmutes) the calling thread: the fork window.
pub fn mute_current_thread(muted: bool) {
    with_depth(|d| d.muted = muted);
}

fn muted() -> bool {
    DEPTH.with(|cell| cell.get().muted)
}

/// A frame (or C call) whose count `open` selects starts on this thread;
/// whether its start may be emitted (false in the fork window).
#[inline]
fn entered(open: fn(&mut Depth) -> &mut u32) -> bool {
    with_depth(|d| {
        if !d.muted {
            *open(d) += 1;
        }
        !d.muted
    })
}

/// One of them stops; whether its start was counted (since tracing was
/// last armed), so that its end may be emitted.
#[inline]
fn left(open: fn(&mut Depth) -> &mut u32) -> bool {
    with_depth(|d| {
        let counted = !d.muted && *open(d) > 0;
        if counted {
            *open(d) -= 1;
        }
        counted
    })
}

/// A Python frame starts on this thread (its `call` may or may not be
/// recorded: its return is matched either way). Whether its `call` may be
/// emitted (false in the fork window).
#[inline]
pub fn frame_entered() -> bool {
    entered(|d| &mut d.frames)
}

/// A Python frame stops: `python:return` (and the fast mode's record) when
/// its start was counted (since tracing was last armed) and a session
/// records the event.
#[inline]
pub fn frame_left() {
    if left(|d| &mut d.frames) {
        if tp::on(tp::EV_RETURN) {
            tp::emit_return();
        }
        if fast::on() {
            fast::push(fast::RETURN, 0);
        }
    }
}

/// The same for C calls: counted on entry (whether its `c_call` may be
/// emitted), `python:c_return` on exit.
#[inline]
pub fn c_call_entered() -> bool {
    entered(|d| &mut d.c_calls)
}

#[inline]
pub fn c_call_left() {
    if left(|d| &mut d.c_calls) {
        if tp::on(tp::EV_C_RETURN) {
            tp::emit_c_return();
        }
        if fast::on_c() {
            fast::push(fast::C_RETURN, 0);
        }
    }
}

/// Runs a backend callback's body: a panic never crosses into CPython, and
/// whatever error it left is cleared (CPython calls these callbacks with no
/// error set, and a profile function returning 0 with one set would raise
/// SystemError in the traced program).
#[inline]
pub fn guarded(f: impl FnOnce(Python<'_>)) {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: every backend callback runs with the GIL held.
        f(unsafe { Python::assume_attached() })
    }));
    if result.is_err() {
        // SAFETY: GIL held, as above.
        unsafe { ffi::PyErr_Clear() };
    }
}

/// Runs the slow path `f` attached as pyo3 counts it, so that the
/// references and errors it drops are released at once: under
/// `assume_attached` alone pyo3 defers their release to a pool that nothing
/// drains while only callbacks run. None while the interpreter finalizes.
#[inline(never)]
pub fn attached<T>(f: impl FnOnce(Python<'_>) -> T) -> Option<T> {
    Python::try_attach(f)
}

/// `python:call` (when `readable`) and the fast mode's call record (when
/// `fast`) for a frame running `code` with `globals` (borrowed; may be
/// null when unknown).
///
/// # Safety
/// GIL held; `code` a live code object, `globals` null or a dict.
pub unsafe fn emit_call(
    py: Python<'_>,
    code: *mut ffi::PyObject,
    globals: *mut ffi::PyObject,
    out: Out,
) {
    let Out { readable, fast } = out;
    // SAFETY: as the caller promises.
    unsafe {
        if let Some(info) = code_info(code) {
            let module = module_name(py, &info, globals);
            let n = &info.names;
            if readable {
                tp::emit_call(
                    &n.co_name,
                    &n.co_qualname,
                    module.text(),
                    &n.co_filename,
                    n.co_firstlineno,
                );
            }
            if fast {
                let define = |id| {
                    tp::emit_fast_def(
                        id,
                        &n.co_name,
                        &n.co_qualname,
                        module.text(),
                        &n.co_filename,
                        n.co_firstlineno,
                    )
                };
                let id = match &module {
                    Module::Entry(entry) => entry.def.use_id(define),
                    Module::Once(_, Some(def)) => def.use_id(define),
                    Module::Once(_, None) => {
                        let id = fast::new_id();
                        define(id);
                        id
                    }
                };
                fast::push(fast::CALL, id);
            }
        } else {
            // No names to be had (the interpreter finalizing): the frame
            // is counted and its return will be emitted, so its call is
            // too, nameless, to keep each thread's events paired (id 0
            // reads "?" in the fast mode).
            if readable {
                tp::emit_call(c"?", c"?", c"", c"", 0);
            }
            if fast {
                fast::push(fast::CALL, 0);
            }
        }
    }
}

/// Which records a C call goes to: `python:c_call`, the fast mode's.
#[derive(Clone, Copy)]
pub struct Out {
    pub readable: bool,
    pub fast: bool,
}

impl Out {
    /// What a frame's start goes to now.
    #[inline]
    pub fn call() -> Out {
        Out {
            readable: tp::on(tp::EV_CALL),
            fast: fast::on(),
        }
    }

    /// What a C call goes to now.
    #[inline]
    pub fn c_call() -> Out {
        Out {
            readable: tp::on(tp::EV_C_CALL),
            fast: fast::on_c(),
        }
    }

    /// What an exception goes to now.
    #[inline]
    pub fn exception() -> Out {
        Out {
            readable: tp::on(tp::EV_EXCEPTION),
            fast: fast::on(),
        }
    }

    #[inline]
    pub fn any(self) -> bool {
        self.readable || self.fast
    }
}

/// The fast mode's ids of exception types, by name.
static EXC_TYPES: Mutex<Option<HashMap<CString, fast::Def>>> = Mutex::new(None);

/// `python:exception` and the fast mode's exception record (as `out`
/// says) for an exception of type `exc_type` in `code` at `lineno`.
///
/// # Safety
/// GIL held; `code` a live code object.
pub unsafe fn emit_exception(
    _py: Python<'_>,
    exc_type: Option<&Bound<'_, PyType>>,
    code: *mut ffi::PyObject,
    lineno: c_int,
    out: Out,
) {
    if muted() || !(out.readable || out.fast) {
        return;
    }
    attached(|py| {
        let exc_type = names::preserving_error(py, || {
            names::cstring(
                exc_type
                    .map(names::type_name)
                    .unwrap_or_else(|| "?".to_owned()),
            )
        });
        // SAFETY: as the caller promises.
        let Some(info) = (unsafe { code_info(code) }) else {
            return;
        };
        let qualname = &info.names.co_qualname;
        if out.readable {
            tp::emit_exception(&exc_type, qualname, lineno);
        }
        if out.fast {
            let code_id = info
                .exc_def
                .use_id(|id| tp::emit_fast_def(id, c"", qualname, c"", c"", 0));
            let type_id = {
                let mut types = EXC_TYPES.lock().unwrap_or_else(|e| e.into_inner());
                types
                    .get_or_insert_with(HashMap::new)
                    .entry(exc_type.clone())
                    .or_default()
                    .use_id(|id| tp::emit_fast_def(id, &exc_type, &exc_type, c"", c"", 0))
            };
            fast::push_exception(code_id, lineno, type_id, &exc_type);
        }
    });
}
