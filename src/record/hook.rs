//! The hot path both backends share: tracing state, per-thread nesting,
//! the names cached per code object (co_extra) and per C function, and the
//! emitters that turn interpreter objects into `python:*` events.
//!
//! The backend is `sys.monitoring` (PEP 669) on CPython 3.12+ (`monitor.rs`)
//! and a C profile + trace function before (`profile.rs`); `control.rs`
//! arms and disarms them. Either way the hot path is one read of LTTng's
//! enabled flags, then, only for an enabled event, cached strings. A
//! callback never unwinds into CPython, never raises and never leaves or
//! clears an exception. This file knows no backend.

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{c_int, c_void, CStr, CString};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyCode, PyType};

use super::fast;
use super::names;
use crate::ffi::cpython as cpy;
use crate::ffi::lttng as tp;

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
/// The co_extra slot holding each code object's `CodeInfo`; -1 before init.
static CODE_EXTRA: AtomicIsize = AtomicIsize::new(-1);

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

/// What a code object's events carry, built once and owned by the code
/// object (co_extra), freed with it.
struct CodeInfo {
    names: names::CodeNames,
    /// The fast mode's id of the code's names without a module (what an
    /// exception record names).
    exc_def: fast::Def,
    /// The module name of the frames last run (see `module_name`): an
    /// immutable entry, published whole, so that threads running `code`
    /// at once (the free-threaded build) read it without a lock.
    module: AtomicPtr<ModuleEntry>,
    /// Entries replaced: still readable by a thread that loaded one just
    /// before, so kept until the code object dies (at most
    /// `MAX_RETIRED`; past that, names are looked up on each call).
    #[allow(clippy::vec_box)] // boxed: readers hold their addresses
    retired: Mutex<Vec<Box<ModuleEntry>>>,
}

/// A module name, and where it was read from.
struct ModuleEntry {
    /// The globals dict it was read from (an address, not a reference)
    /// and the dict's version then (0: never matches): while both are
    /// unchanged, so is `__name__`.
    globals: usize,
    version: AtomicU64,
    /// The `__name__` object (a strong reference, so the address cannot be
    /// reused) and its UTF-8.
    name: *mut ffi::PyObject,
    text: CString,
    /// The fast mode's id of (the code's names, this module).
    def: fast::Def,
}

impl Drop for ModuleEntry {
    fn drop(&mut self) {
        // SAFETY: entries are dropped with the code object (CPython frees
        // co_extra with the thread attached) or by a callback, attached;
        // `name` is null or the strong reference the entry took.
        unsafe { ffi::Py_XDECREF(self.name) };
    }
}

/// How many replaced module entries a code object keeps (the same code
/// run under many globals dicts, or `__name__` changed over and over).
const MAX_RETIRED: usize = 16;

impl CodeInfo {
    fn new(names: names::CodeNames) -> Self {
        CodeInfo {
            names,
            exc_def: fast::Def::new(),
            module: AtomicPtr::new(std::ptr::null_mut()),
            retired: Mutex::new(Vec::new()),
        }
    }
}

impl Drop for CodeInfo {
    fn drop(&mut self) {
        let entry = *self.module.get_mut();
        if !entry.is_null() {
            // SAFETY: published entries are `Box`es this struct owns; the
            // code object is dying, so no thread reads them any more.
            drop(unsafe { Box::from_raw(entry) });
        }
    }
}

unsafe extern "C" fn free_code_info(info: *mut c_void) {
    if !info.is_null() {
        // SAFETY: co_extra values in our slot are only ever `Box<CodeInfo>`s.
        drop(unsafe { Box::from_raw(info.cast::<CodeInfo>()) });
    }
}

/// Reserves the co_extra slot; called once at module import.
pub fn init(_py: Python<'_>) {
    // SAFETY: the GIL is held (`_py`).
    unsafe { cpy::init_dict_versions() };
    if CODE_EXTRA.load(Ordering::Relaxed) < 0 {
        // SAFETY: the GIL is held (`_py`); the free function matches the slot.
        let index = unsafe { cpy::request_code_extra_index(free_code_info) };
        CODE_EXTRA.store(index as isize, Ordering::Relaxed);
    }
}

/// A code object's names: cached on it, or (when CPython has no co_extra
/// slot left for pyust) made for this one event.
enum Info<'a> {
    Cached(&'a CodeInfo),
    Once(Box<CodeInfo>),
}

impl std::ops::Deref for Info<'_> {
    type Target = CodeInfo;
    fn deref(&self) -> &CodeInfo {
        match self {
            Info::Cached(info) => info,
            Info::Once(info) => info,
        }
    }
}

/// The cached names of `code`, made on first use.
///
/// # Safety
/// GIL held; `code` null or a live code object.
unsafe fn code_info<'a>(code: *mut ffi::PyObject) -> Option<Info<'a>> {
    if code.is_null() {
        return None;
    }
    // SAFETY: as the caller promises.
    if let Some(info) = unsafe { cached_code_info(code) } {
        return Some(Info::Cached(info));
    }
    attached(|py| {
        // SAFETY: `code` is a live object (caller).
        let code_obj = unsafe { Bound::from_borrowed_ptr(py, code) };
        let code_obj = code_obj.cast::<PyCode>().ok()?;
        #[allow(unused_mut)]
        let mut names = names::preserving_error(py, || names::code_names(code_obj));
        #[cfg(not(Py_3_11))]
        names::preserving_error(py, || {
            // Before 3.11 code objects have no co_qualname: the compiler's
            // nesting of the code of its module says it.
            if let Some(qualname) = names::qualname_from_source(code_obj) {
                names.co_qualname = names::cstring(qualname);
            }
            qualify_nested(code_obj, &names.co_qualname.to_string_lossy(), 0);
        });
        // SAFETY: GIL held; `code` a live code object.
        Some(unsafe { store_code_info(code, names) })
    })
    .flatten()
}

/// The names cached on `code`, if any.
///
/// # Safety
/// GIL held; `code` a live code object.
unsafe fn cached_code_info<'a>(code: *mut ffi::PyObject) -> Option<&'a CodeInfo> {
    let index = CODE_EXTRA.load(Ordering::Relaxed);
    if index >= 0 {
        // SAFETY: as the caller promises; `index` is our slot.
        let extra = unsafe { cpy::code_get_extra(code, index as ffi::Py_ssize_t) };
        if !extra.is_null() {
            // SAFETY: our slot only holds `Box<CodeInfo>`s, owned by the
            // code object, which outlives this event.
            return Some(unsafe { &*extra.cast::<CodeInfo>() });
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
    for (child, child_qualname) in names::nested_codes(code, qualname) {
        // SAFETY: GIL held; `child` is a live code object.
        unsafe {
            if cached_code_info(child.as_ptr()).is_some() {
                continue;
            }
            let mut child_names = names::code_names(&child);
            child_names.co_qualname = names::cstring(child_qualname.clone());
            if let Info::Once(info) = store_code_info(child.as_ptr(), child_names) {
                drop(info); // no slot: nothing to keep it on
            }
        }
        qualify_nested(&child, &child_qualname, depth + 1);
    }
}

/// Caches `names` on `code` (co_extra), which then owns them; without a
/// slot, they are the caller's for this event only.
///
/// # Safety
/// GIL held; `code` a live code object.
unsafe fn store_code_info<'a>(code: *mut ffi::PyObject, names: names::CodeNames) -> Info<'a> {
    let index = CODE_EXTRA.load(Ordering::Relaxed);
    let info = Box::new(CodeInfo::new(names));
    if index < 0 {
        return Info::Once(info);
    }
    // SAFETY: GIL held or attached (caller); `code` is live.
    let code_obj = unsafe { Bound::from_borrowed_ptr(Python::assume_attached(), code) };
    // Under the code object's lock (the free-threaded build; the GIL
    // otherwise), nothing in between runs Python code: making the names
    // may have, and another thread may have cached names on `code`
    // meanwhile and still be using them. Replacing them would free them
    // under it: theirs win.
    pyo3::sync::critical_section::with_critical_section(&code_obj, || {
        // SAFETY: as the caller promises; on success the code object owns
        // the box (freed by `free_code_info`), otherwise it is still ours.
        unsafe {
            if let Some(cached) = cached_code_info(code) {
                return Info::Cached(cached);
            }
            let raw = Box::into_raw(info);
            if cpy::code_set_extra(code, index as ffi::Py_ssize_t, raw.cast()) {
                Info::Cached(&*raw)
            } else {
                Info::Once(Box::from_raw(raw))
            }
        }
    })
}

/// A module name: a cached entry, or (past `MAX_RETIRED`) this event's own.
enum Module<'a> {
    Entry(&'a ModuleEntry),
    Once(CString),
}

impl Module<'_> {
    fn text(&self) -> &CStr {
        match self {
            Module::Entry(entry) => &entry.text,
            Module::Once(text) => text,
        }
    }
}

/// `__name__` of the frame's globals, as cached on `info`.
///
/// # Safety
/// GIL held (or the thread attached); `globals` null or a live dict.
unsafe fn module_name<'a>(
    py: Python<'_>,
    info: &'a CodeInfo,
    globals: *mut ffi::PyObject,
) -> Module<'a> {
    let entry = info.module.load(Ordering::Acquire);
    // SAFETY: a published entry lives as long as `info` (replaced ones are
    // retired, not freed); `globals` is a live dict (caller).
    unsafe {
        if !entry.is_null() && !globals.is_null() && (*entry).globals == globals as usize {
            let version = cpy::dict_version(globals);
            if version != 0 && (*entry).version.load(Ordering::Acquire) == version {
                return Module::Entry(&*entry);
            }
        }
    }
    // Watched before the version is read: a later change bumps it.
    // SAFETY: `globals` null or a live dict (caller).
    let watched = !globals.is_null() && unsafe { cpy::watch_dict(globals) };
    let (version, name) = if globals.is_null() {
        (0, std::ptr::null_mut())
    } else {
        // SAFETY: `globals` is live. Under the dict's lock (the
        // free-threaded build; the GIL otherwise) the version and the name
        // read are of one state: the watcher bumps the version before a
        // change, under that lock. `name` is a new reference.
        let dict = unsafe { Bound::from_borrowed_ptr(py, globals) };
        // SAFETY: as above.
        pyo3::sync::critical_section::with_critical_section(&dict, || unsafe {
            let version = if watched {
                cpy::dict_version(globals)
            } else {
                0
            };
            let mut name = std::ptr::null_mut();
            let key = pyo3::intern!(py, "__name__").as_ptr();
            if ffi::compat::PyDict_GetItemRef(globals, key, &mut name) < 0 {
                ffi::PyErr_Clear();
            }
            (version, name)
        })
    };
    // SAFETY: as above.
    unsafe {
        if !entry.is_null() && (*entry).globals == globals as usize && (*entry).name == name {
            // The same name object: its text holds; only the version moved.
            (*entry).version.store(version, Ordering::Release);
            ffi::Py_XDECREF(name);
            return Module::Entry(&*entry);
        }
    }
    // May run Python code (a str subclass's `__str__`).
    let text = if name.is_null() {
        CString::default()
    } else {
        attached(|py| {
            names::preserving_error(py, || {
                // SAFETY: `name` is a reference this function holds.
                names::to_cstring(unsafe { &Bound::from_borrowed_ptr(py, name) })
            })
        })
        .unwrap_or_default()
    };
    let new = Box::new(ModuleEntry {
        globals: globals as usize,
        version: AtomicU64::new(version),
        name,
        text,
        def: fast::Def::new(),
    });
    let mut retired = info.retired.lock().unwrap_or_else(|e| e.into_inner());
    if retired.len() >= MAX_RETIRED {
        drop(retired);
        // Too many: this event's name only (the entry's reference is
        // released after, as releasing it may run Python code).
        return Module::Once(new.text.clone());
    }
    let new = Box::into_raw(new);
    let old = info.module.swap(new, Ordering::AcqRel);
    if !old.is_null() {
        // SAFETY: `old` was published from a `Box` and only this swap
        // took it out; another thread may still read it: kept.
        retired.push(unsafe { Box::from_raw(old) });
    }
    // SAFETY: `new` is published; it lives as long as `info`.
    Module::Entry(unsafe { &*new })
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
                    Module::Once(_) => {
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

/// A C function's name, keyed by (method definition, owner type). The key
/// is checked against the function on each use: a `PyMethodDef` freed and
/// reused (closures made at run time) names another function. The owner
/// is not kept alive: a heap type's entries go when it does (a weak
/// reference's callback), so classes made at run time are freed as usual.
struct CName {
    qualname: CString,
    /// The fast mode's id of (name, qualname).
    def: fast::Def,
    /// The definition's `ml_name` when the entry was made.
    name: CString,
    /// The function's `__module__` (a strong reference: compared by address).
    module: Option<Py<PyAny>>,
}

/// Keyed by addresses: FxHash, not SipHash (a lookup per C call).
type CNames = crate::fxhash::FxMap<(usize, usize), CName>;
/// Read by every C call of every thread, written once per new function:
/// a read lock (no thread waits for another reader), held only while no
/// Python code runs.
static C_NAMES: RwLock<Option<CNames>> = RwLock::new(None);

/// The heap types whose entries are in `C_NAMES`: the weak reference that
/// removes them when the type dies, and the definitions keyed with it.
struct Watched {
    _weakref: Py<PyAny>,
    defs: Vec<usize>,
}
static WATCHED: Mutex<Option<HashMap<usize, Watched>>> = Mutex::new(None);

/// A dead heap type's entries, taken out under the locks and dropped after.
fn forget_type(owner: usize) {
    let watched = WATCHED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
        .and_then(|w| w.remove(&owner));
    let Some(watched) = watched else { return };
    let removed: Vec<CName> = {
        let mut cache = C_NAMES.write().unwrap_or_else(|e| e.into_inner());
        let cache = cache.get_or_insert_with(CNames::default);
        watched
            .defs
            .iter()
            .filter_map(|&ml| cache.remove(&(ml, owner)))
            .collect()
    };
    drop(removed);
    drop(watched);
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

/// A C call named (name, qualname): `def` its fast-mode id when cached,
/// otherwise a fresh one, defined for this call.
fn c_call_out(out: Out, name: &CStr, qualname: &CStr, def: Option<&fast::Def>) {
    if out.readable {
        tp::emit_c_call(name, qualname);
    }
    if out.fast {
        let define = |id| tp::emit_fast_def(id, name, qualname, c"", c"", 0);
        let id = match def {
            Some(def) => def.use_id(define),
            None => {
                let id = fast::new_id();
                define(id);
                id
            }
        };
        fast::push(fast::C_CALL, id);
        if def.is_some_and(|d| d.exits) {
            fast::flush_all();
        }
    }
}

/// # Safety
/// GIL held; `func` is the live callable of a C_CALL event.
pub unsafe fn emit_c_call(_py: Python<'_>, func: *mut ffi::PyObject, out: Out) {
    // SAFETY: `func` is live (caller).
    if unsafe { ffi::PyCFunction_Check(func) } == 0 {
        // Not a builtin function object: name it through its attributes.
        let names = attached(|py| {
            // SAFETY: `func` is live (caller).
            let func = unsafe { Bound::from_borrowed_ptr(py, func) };
            names::preserving_error(py, || {
                let name = func
                    .getattr(pyo3::intern!(py, "__name__"))
                    .map(|n| names::to_cstring(&n))
                    .unwrap_or_else(|_| names::cstring("?".to_owned()));
                let qualname = func
                    .getattr(pyo3::intern!(py, "__qualname__"))
                    .map(|n| names::to_cstring(&n))
                    .unwrap_or_else(|_| name.clone());
                (name, qualname)
            })
        });
        match names {
            Some((name, qualname)) => c_call_out(out, &name, &qualname, None),
            None => c_call_out(out, c"?", c"?", None), // finalizing: paired all the same
        }
        return;
    }
    // SAFETY: a builtin function object starts with these fields.
    unsafe {
        let f = func.cast::<cpy::CFunctionObject>();
        emit_c_call_named((*f).m_ml, (*f).m_self, (*f).m_module, out);
    }
}

/// `python:c_call` for a method descriptor called on `self_arg` (3.12+
/// reports `obj.method(...)` so, without binding it first).
///
/// # Safety
/// GIL held; `descr` a live method descriptor, `self_arg` null or live.
#[cfg_attr(not(Py_3_12), allow(dead_code))]
pub unsafe fn emit_c_call_descriptor(
    _py: Python<'_>,
    descr: *mut ffi::PyObject,
    self_arg: *mut ffi::PyObject,
    out: Out,
) {
    // SAFETY: `descr` is a method descriptor (caller).
    unsafe {
        let d = descr.cast::<ffi::PyMethodDescrObject>();
        let owner = if self_arg.is_null() {
            (*d).d_common.d_type.cast()
        } else {
            self_arg
        };
        emit_c_call_named((*d).d_method, owner, std::ptr::null_mut(), out);
    }
}

/// `python:c_call` for the C function `ml` bound to `owner` (its `__self__`:
/// a module, a type or an instance; may be null), from module `module`.
///
/// # Safety
/// GIL held; `ml` a live method definition; the others null or live.
unsafe fn emit_c_call_named(
    ml: *mut ffi::PyMethodDef,
    owner: *mut ffi::PyObject,
    module: *mut ffi::PyObject,
    out: Out,
) {
    // SAFETY: `ml` is live and its name a NUL-terminated string (caller).
    let name = unsafe { CStr::from_ptr((*ml).ml_name) };
    // SAFETY: `owner` null or live (caller).
    let owner_type: *mut ffi::PyObject = unsafe {
        if owner.is_null() || ffi::PyModule_Check(owner) != 0 {
            std::ptr::null_mut()
        } else if ffi::PyType_Check(owner) != 0 {
            owner
        } else {
            ffi::Py_TYPE(owner).cast()
        }
    };
    let key = (ml as usize, owner_type as usize);
    {
        let cache = C_NAMES.read().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = cache.as_ref().and_then(|c| c.get(&key)) {
            let same_module = entry
                .module
                .as_ref()
                .map_or(std::ptr::null_mut(), Py::as_ptr)
                == module;
            if same_module && entry.name.as_c_str() == name {
                c_call_out(out, name, &entry.qualname, Some(&entry.def));
                return;
            }
        }
    }
    // Computed outside the lock: it may run Python code.
    let named = attached(|py| {
        let entry = names::preserving_error(py, || {
            // SAFETY: both null or live (caller).
            let borrow = |obj: *mut ffi::PyObject| unsafe { Bound::from_borrowed_ptr(py, obj) };
            let owner_obj = (!owner.is_null()).then(|| borrow(owner));
            let module_obj = (!module.is_null()).then(|| borrow(module));
            CName {
                qualname: names::c_function_qualname(
                    &name.to_string_lossy(),
                    owner_obj.as_ref(),
                    module_obj.as_ref(),
                ),
                name: name.to_owned(),
                module: module_obj.map(Bound::unbind),
                def: fast::Def::of_c_function(name),
            }
        });
        c_call_out(out, name, &entry.qualname, Some(&entry.def));
        // SAFETY: `owner_type` null or a live type.
        let heap_type = !owner_type.is_null()
            && unsafe { ffi::PyType_HasFeature(owner_type.cast(), ffi::Py_TPFLAGS_HEAPTYPE) } != 0;
        if heap_type && !names::preserving_error(py, || watch_type(py, owner_type, key.0)) {
            return; // cannot know when it dies: not cached
        }
        let old = {
            let mut cache = C_NAMES.write().unwrap_or_else(|e| e.into_inner());
            cache.get_or_insert_with(CNames::default).insert(key, entry)
        };
        drop(old); // outside the lock: releasing it may run Python code
    });
    if named.is_none() {
        // The interpreter finalizing: the call is counted, so emitted.
        c_call_out(out, name, name, None);
    }
}

/// Makes sure the entries of heap type `ty` go when it does; records `ml`
/// as one of them. False when no weak reference could be made.
fn watch_type(py: Python<'_>, ty: *mut ffi::PyObject, ml: usize) -> bool {
    let addr = ty as usize;
    {
        let mut watched = WATCHED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = watched.get_or_insert_with(HashMap::new).get_mut(&addr) {
            if !w.defs.contains(&ml) {
                w.defs.push(ml);
            }
            return true;
        }
    }
    let made = (|| -> PyResult<Py<PyAny>> {
        let callback = pyo3::types::PyCFunction::new_closure(
            py,
            None,
            None,
            move |_args: &Bound<'_, pyo3::types::PyTuple>,
                  _kwargs: Option<&Bound<'_, pyo3::types::PyDict>>| forget_type(addr),
        )?;
        // SAFETY: `ty` is a live type (caller).
        let ty = unsafe { Bound::from_borrowed_ptr(py, ty) };
        Ok(pyo3::types::PyWeakrefReference::new_with(&ty, callback)?
            .into_any()
            .unbind())
    })();
    let Ok(weakref) = made else { return false };
    let old = {
        let mut watched = WATCHED.lock().unwrap_or_else(|e| e.into_inner());
        watched.get_or_insert_with(HashMap::new).insert(
            addr,
            Watched {
                _weakref: weakref,
                defs: vec![ml],
            },
        )
    };
    drop(old);
    true
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
