//! The names of a code object's events, built once and cached on the code
//! object itself (its co_extra slot, freed with it), and the module name
//! of a frame's globals, re-read only when the globals dict changes.

use std::ffi::{c_void, CStr, CString};
use std::sync::atomic::{AtomicIsize, AtomicPtr, AtomicU64, Ordering};
use std::sync::Mutex;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyCode;

use super::fast;
use super::hook::attached;
use super::names;
use crate::ffi::cpython as cpy;

/// The co_extra slot holding each code object's `CodeInfo`; -1 before init.
static CODE_EXTRA: AtomicIsize = AtomicIsize::new(-1);

/// What a code object's events carry, built once and owned by the code
/// object (co_extra), freed with it.
pub(super) struct CodeInfo {
    pub(super) names: names::CodeNames,
    /// The fast mode's id of the code's names without a module (what an
    /// exception record names).
    pub(super) exc_def: fast::Def,
    /// The module name of the frames last run (see `module_name`): an
    /// immutable entry, published whole, so that threads running `code`
    /// at once (the free-threaded build) read it without a lock.
    pub(super) module: AtomicPtr<ModuleEntry>,
    /// Entries replaced: still readable by a thread that loaded one just
    /// before, so kept until the code object dies (at most
    /// `MAX_RETIRED`; past that, names are looked up on each call).
    #[allow(clippy::vec_box)] // boxed: readers hold their addresses
    pub(super) retired: Mutex<Vec<Box<ModuleEntry>>>,
}

/// A module name, and where it was read from.
pub(super) struct ModuleEntry {
    /// The globals dict it was read from (an address, not a reference)
    /// and the dict's version then (0: never matches): while both are
    /// unchanged, so is `__name__`.
    pub(super) globals: usize,
    pub(super) version: AtomicU64,
    /// The `__name__` object (a strong reference, so the address cannot be
    /// reused) and its UTF-8.
    pub(super) name: *mut ffi::PyObject,
    pub(super) text: CString,
    /// The fast mode's id of (the code's names, this module).
    pub(super) def: fast::Def,
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
pub(super) const MAX_RETIRED: usize = 16;

impl CodeInfo {
    pub(super) fn new(names: names::CodeNames) -> Self {
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
pub(super) enum Info<'a> {
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
pub(super) unsafe fn code_info<'a>(code: *mut ffi::PyObject) -> Option<Info<'a>> {
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
pub(super) unsafe fn cached_code_info<'a>(code: *mut ffi::PyObject) -> Option<&'a CodeInfo> {
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
pub(super) fn qualify_nested(code: &Bound<'_, PyCode>, qualname: &str, depth: u32) {
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
pub(super) unsafe fn store_code_info<'a>(
    code: *mut ffi::PyObject,
    names: names::CodeNames,
) -> Info<'a> {
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
pub(super) enum Module<'a> {
    Entry(&'a ModuleEntry),
    /// With the id of an entry of the same module name, if any.
    Once(CString, Option<&'a fast::Def>),
}

impl Module<'_> {
    pub(super) fn text(&self) -> &CStr {
        match self {
            Module::Entry(entry) => &entry.text,
            Module::Once(text, _) => text,
        }
    }
}

/// `__name__` of the frame's globals, as cached on `info`.
///
/// # Safety
/// GIL held (or the thread attached); `globals` null or a live dict.
pub(super) unsafe fn module_name<'a>(
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
    let mut retired = info.retired.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: the current entry lives as long as `info` (as above).
    let current = unsafe { entry.as_ref() };
    // The same code under globals it ran under before (a function shared
    // by several module dicts, called in turn): that entry again, its id
    // with it. Entries are never freed before `info`: swapping them keeps
    // any a thread still reads alive.
    if let Some(i) = retired
        .iter()
        .position(|e| e.globals == globals as usize && e.name == name)
    {
        let again = Box::into_raw(retired.swap_remove(i));
        // SAFETY: `again` comes from a `Box`; `name` (a new reference) is
        // released: the entry holds its own.
        unsafe {
            (*again).version.store(version, Ordering::Release);
            ffi::Py_XDECREF(name);
        }
        let old = info.module.swap(again, Ordering::AcqRel);
        if !old.is_null() {
            // SAFETY: as below.
            retired.push(unsafe { Box::from_raw(old) });
        }
        // SAFETY: `again` is published; it lives as long as `info`.
        return Module::Entry(unsafe { &*again });
    }
    // The names of an entry with the same module name are the same: so is
    // the fast mode's id (else a code run under many globals dicts took a
    // new id, and a definition, per call).
    let same: Option<*const ModuleEntry> = current
        .into_iter()
        .chain(retired.iter().map(|e| &**e))
        .find(|e| e.text == text)
        .map(|e| e as *const ModuleEntry);
    // SAFETY: entries live as long as `info`, wherever they move.
    let same: Option<&'a ModuleEntry> = same.map(|e| unsafe { &*e });
    let def = same.map_or_else(fast::Def::new, |e| fast::Def::same_as(&e.def));
    let new = Box::new(ModuleEntry {
        globals: globals as usize,
        version: AtomicU64::new(version),
        name,
        text,
        def,
    });
    if retired.len() >= MAX_RETIRED {
        // Too many: this event's names only, the id of an entry with the
        // same module name when there is one (the entry's reference is
        // released after, as releasing it may run Python code).
        drop(retired);
        return Module::Once(new.text.clone(), same.map(|e| &e.def));
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
