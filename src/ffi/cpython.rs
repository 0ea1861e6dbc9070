//! The CPython half: entry points whose name changed across versions
//! (co_extra slots, another thread's profile and trace functions), the
//! fields pyust reads that pyo3 does not declare, and where they sit.
//!
//! Every function here needs the GIL (or, on the free-threaded build, an
//! attached thread state).

use std::ffi::{c_int, c_void};

use pyo3::ffi::{freefunc, PyObject, Py_ssize_t};

mod raw {
    use super::*;
    extern "C" {
        // Another thread's profile / trace function (3.9 to 3.11).
        #[cfg(all(Py_3_9, not(Py_3_12)))]
        #[link_name = "_PyEval_SetProfile"]
        pub fn set_profile(
            tstate: *mut pyo3::ffi::PyThreadState,
            func: Option<pyo3::ffi::Py_tracefunc>,
            arg: *mut PyObject,
        ) -> c_int;
        #[cfg(all(Py_3_9, not(Py_3_12)))]
        #[link_name = "_PyEval_SetTrace"]
        pub fn set_trace(
            tstate: *mut pyo3::ffi::PyThreadState,
            func: Option<pyo3::ffi::Py_tracefunc>,
            arg: *mut PyObject,
        ) -> c_int;

        // CPython's per-code-object scratch slots ("co_extra"), renamed in 3.12.
        #[cfg(not(Py_3_12))]
        #[link_name = "_PyEval_RequestCodeExtraIndex"]
        pub fn request_code_extra_index(free: freefunc) -> Py_ssize_t;
        #[cfg(Py_3_12)]
        #[link_name = "PyUnstable_Eval_RequestCodeExtraIndex"]
        pub fn request_code_extra_index(free: freefunc) -> Py_ssize_t;
        #[cfg(not(Py_3_12))]
        #[link_name = "_PyCode_GetExtra"]
        pub fn code_get_extra(
            code: *mut PyObject,
            index: Py_ssize_t,
            extra: *mut *mut c_void,
        ) -> c_int;
        #[cfg(Py_3_12)]
        #[link_name = "PyUnstable_Code_GetExtra"]
        pub fn code_get_extra(
            code: *mut PyObject,
            index: Py_ssize_t,
            extra: *mut *mut c_void,
        ) -> c_int;
        #[cfg(not(Py_3_12))]
        #[link_name = "_PyCode_SetExtra"]
        pub fn code_set_extra(code: *mut PyObject, index: Py_ssize_t, extra: *mut c_void) -> c_int;
        #[cfg(Py_3_12)]
        #[link_name = "PyUnstable_Code_SetExtra"]
        pub fn code_set_extra(code: *mut PyObject, index: Py_ssize_t, extra: *mut c_void) -> c_int;

        // Audit hooks (3.8+; pyo3 does not declare them).
        pub fn PySys_AddAuditHook(hook: AuditHook, user_data: *mut c_void) -> c_int;

        // Dict watchers (3.12+; pyo3 does not declare the registration).
        #[cfg(Py_3_14)]
        pub fn PyDict_AddWatcher(callback: DictWatchCallback) -> c_int;
    }

    /// `Py_AuditHookFunction`.
    pub type AuditHook = Option<
        unsafe extern "C" fn(
            event: *const std::ffi::c_char,
            args: *mut PyObject,
            user_data: *mut c_void,
        ) -> c_int,
    >;

    /// `PyDict_WatchCallback`.
    #[cfg(Py_3_14)]
    pub type DictWatchCallback = Option<
        unsafe extern "C" fn(
            event: c_int,
            dict: *mut PyObject,
            key: *mut PyObject,
            new_value: *mut PyObject,
        ) -> c_int,
    >;
}

/// Installs `func` with `obj` as the trace function (`trace`) or the
/// profile function of thread `tstate`: any thread of the interpreter on
/// 3.9+, the calling thread's before (3.8 has no such entry point).
///
/// # Safety
/// GIL held; `tstate` live (and the calling thread's on 3.8); `obj` null
/// or live.
#[cfg(not(Py_3_12))]
pub unsafe fn set_hook(
    tstate: *mut pyo3::ffi::PyThreadState,
    trace: bool,
    func: Option<pyo3::ffi::Py_tracefunc>,
    obj: *mut PyObject,
) {
    // SAFETY: as the caller promises. CPython drops its reference to the
    // old object before it takes one to the new: hold `obj` meanwhile, as
    // it may be the old one.
    unsafe {
        pyo3::ffi::Py_XINCREF(obj);
        #[cfg(Py_3_9)]
        {
            let set = if trace {
                raw::set_trace
            } else {
                raw::set_profile
            };
            if set(tstate, func, obj) != 0 {
                pyo3::ffi::PyErr_Clear();
            }
        }
        #[cfg(not(Py_3_9))]
        {
            debug_assert_eq!(tstate, pyo3::ffi::PyThreadState_Get());
            if trace {
                pyo3::ffi::PyEval_SetTrace(func, obj);
            } else {
                pyo3::ffi::PyEval_SetProfile(func, obj);
            }
        }
        pyo3::ffi::Py_XDECREF(obj);
    }
}

/// A thread's profile and trace functions with their objects, as its
/// `PyThreadState` holds them (`c_profilefunc`, `c_tracefunc`,
/// `c_profileobj`, `c_traceobj`, in that order, in 3.8 to 3.11).
#[cfg(not(Py_3_12))]
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Hooks {
    pub profile: Option<pyo3::ffi::Py_tracefunc>,
    pub trace: Option<pyo3::ffi::Py_tracefunc>,
    pub profile_obj: *mut PyObject,
    pub trace_obj: *mut PyObject,
}

#[cfg(not(Py_3_12))]
impl Hooks {
    /// The trace function (`trace`) or the profile function, with its object.
    pub fn get(&self, trace: bool) -> (Option<pyo3::ffi::Py_tracefunc>, *mut PyObject) {
        if trace {
            (self.trace, self.trace_obj)
        } else {
            (self.profile, self.profile_obj)
        }
    }
}

/// Where `Hooks` starts in a `PyThreadState` of this version (x86-64 and
/// other LP64 targets), checked by [`check_hooks_offset`] before use.
#[cfg(all(not(Py_3_12), Py_3_11, target_pointer_width = "64"))]
const HOOKS_OFFSET: Option<usize> = Some(64);
#[cfg(all(not(Py_3_11), target_pointer_width = "64"))]
const HOOKS_OFFSET: Option<usize> = Some(56);
#[cfg(all(not(Py_3_12), not(target_pointer_width = "64")))]
const HOOKS_OFFSET: Option<usize> = None;

#[cfg(not(Py_3_12))]
static HOOKS_CHECKED: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();

/// Checks, once, that the calling thread's state holds its profile and
/// trace functions where `HOOKS_OFFSET` says, by installing a marker
/// profile function and reading it back (then the thread's own one is
/// put back). Without a match, [`hooks`] knows nothing.
///
/// # Safety
/// GIL held.
#[cfg(not(Py_3_12))]
pub unsafe fn check_hooks_offset() {
    unsafe extern "C" fn marker(
        _: *mut PyObject,
        _: *mut pyo3::ffi::PyFrameObject,
        _: c_int,
        _: *mut PyObject,
    ) -> c_int {
        0
    }
    HOOKS_CHECKED.get_or_init(|| {
        let offset = HOOKS_OFFSET?;
        // SAFETY: GIL held; the reads stay inside the thread state, whose
        // size exceeds the offset plus `Hooks` on these versions.
        unsafe {
            let ts = pyo3::ffi::PyThreadState_Get();
            let at = ts.cast::<u8>().add(offset).cast::<Hooks>();
            let before = at.read();
            let probe = pyo3::ffi::PyLong_FromLong(0x7079_7573);
            pyo3::ffi::PyEval_SetProfile(Some(marker), probe);
            let seen = at.read();
            let ok = same_hook(seen.profile, marker)
                && seen.profile_obj == probe
                && seen.trace.map(|f| f as usize) == before.trace.map(|f| f as usize)
                && seen.trace_obj == before.trace_obj;
            if ok {
                set_hook(ts, false, before.profile, before.profile_obj);
            } else {
                pyo3::ffi::PyEval_SetProfile(None, std::ptr::null_mut());
            }
            pyo3::ffi::Py_DECREF(probe);
            ok.then_some(offset)
        }
    });
}

/// Whether the installed function `installed` is `ours`: the very address
/// pyust gave CPython, compared as an address.
#[cfg(not(Py_3_12))]
#[inline]
pub fn same_hook(
    installed: Option<pyo3::ffi::Py_tracefunc>,
    ours: pyo3::ffi::Py_tracefunc,
) -> bool {
    installed.is_some_and(|f| f as usize == ours as usize)
}

/// Thread `tstate`'s profile and trace functions, when their place is known.
///
/// # Safety
/// GIL held; `tstate` live.
#[cfg(not(Py_3_12))]
#[inline]
pub unsafe fn hooks(tstate: *mut pyo3::ffi::PyThreadState) -> Option<Hooks> {
    let offset = (*HOOKS_CHECKED.get()?)?;
    // SAFETY: the offset was checked against this interpreter's layout.
    Some(unsafe { tstate.cast::<u8>().add(offset).cast::<Hooks>().read() })
}

/// A version of dict `dict` for caches keyed on (address, version): an
/// equal pair is the same dict with the same `__name__`. 0 when unknown
/// (then nothing may be cached on it).
///
/// Up to 3.13 it is the dict's version tag: CPython gives every dict state
/// a tag from one interpreter-wide counter, new at each creation and each
/// change. 3.14 removed the tag: there it is an epoch that a dict watcher
/// bumps when a watched dict's `__name__` changes or a watched dict is
/// cleared or freed (its address could then be another dict's); call
/// `watch_dict` before reading what is cached.
///
/// # Safety
/// GIL held; `dict` a live dict.
#[inline]
pub unsafe fn dict_version(dict: *mut PyObject) -> u64 {
    #[cfg(not(Py_3_14))]
    #[allow(deprecated)] // deprecated in 3.12, kept through 3.13
    // SAFETY: `dict` is a dict, as the caller promises.
    return unsafe { (*dict.cast::<pyo3::ffi::PyDictObject>()).ma_version_tag };
    #[cfg(Py_3_14)]
    {
        let _ = dict;
        if watcher::ID.load(std::sync::atomic::Ordering::Relaxed) < 0 {
            return 0;
        }
        watcher::EPOCH.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Has the dict watcher report `dict`'s changes (3.14+; before, the
/// version tag needs nothing). False when it cannot.
///
/// # Safety
/// GIL held; `dict` a live dict.
#[inline]
pub unsafe fn watch_dict(dict: *mut PyObject) -> bool {
    #[cfg(not(Py_3_14))]
    {
        let _ = dict;
        true
    }
    #[cfg(Py_3_14)]
    {
        let id = watcher::ID.load(std::sync::atomic::Ordering::Relaxed);
        // SAFETY: GIL held, `dict` a live dict (the caller's promise).
        id >= 0
            && unsafe {
                if pyo3::ffi::PyDict_Watch(id, dict) == 0 {
                    true
                } else {
                    pyo3::ffi::PyErr_Clear();
                    false
                }
            }
    }
}

/// Registers the dict watcher behind `dict_version` (3.14+), once.
///
/// # Safety
/// GIL held.
pub unsafe fn init_dict_versions() {
    #[cfg(Py_3_14)]
    {
        use std::sync::atomic::Ordering;
        if watcher::ID.load(Ordering::Relaxed) >= 0 {
            return;
        }
        // SAFETY: GIL held; the callback never fails and runs no Python code.
        let id = unsafe { raw::PyDict_AddWatcher(Some(watcher::on_event)) };
        if id < 0 {
            // Every watcher slot is taken: no module-name caching.
            // SAFETY: GIL held.
            unsafe { pyo3::ffi::PyErr_Clear() };
        }
        watcher::ID.store(id, Ordering::Relaxed);
    }
}

#[cfg(Py_3_14)]
mod watcher {
    use std::ffi::c_int;
    use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

    use pyo3::ffi::PyObject;

    pub static ID: AtomicI32 = AtomicI32::new(-1);
    pub static EPOCH: AtomicU64 = AtomicU64::new(1);

    // `PyDict_WatchEvent`, in CPython's order.
    const ADDED: c_int = 0;
    const MODIFIED: c_int = 1;
    const DELETED: c_int = 2;

    /// Called by CPython on each change of a watched dict, before it
    /// happens: bumps the epoch when `__name__` changes, or when the dict
    /// is cloned into, cleared or freed.
    pub unsafe extern "C" fn on_event(
        event: c_int,
        _dict: *mut PyObject,
        key: *mut PyObject,
        _new_value: *mut PyObject,
    ) -> c_int {
        let relevant = match event {
            // SAFETY: CPython passes the live key of the change.
            ADDED | MODIFIED | DELETED => unsafe { is_name(key) },
            _ => true,
        };
        if relevant {
            EPOCH.fetch_add(1, Ordering::AcqRel);
        }
        0
    }

    /// Whether `key` is the str `"__name__"` (without running Python code).
    unsafe fn is_name(key: *mut PyObject) -> bool {
        // SAFETY: `key` is null or live; comparing an exact str with an
        // ASCII string runs no Python code and cannot fail.
        unsafe {
            !key.is_null()
                && pyo3::ffi::PyUnicode_CheckExact(key) != 0
                && pyo3::ffi::PyUnicode_CompareWithASCIIString(key, c"__name__".as_ptr()) == 0
        }
    }
}

/// Reserves a co_extra slot whose values `free` releases with their code
/// object.
///
/// # Safety
/// GIL held.
pub unsafe fn request_code_extra_index(free: freefunc) -> Py_ssize_t {
    // SAFETY: as the caller promises.
    unsafe { raw::request_code_extra_index(free) }
}

/// The co_extra value of `code` at `index`, or null.
///
/// # Safety
/// GIL held; `code` a code object; `index` one from
/// `request_code_extra_index`.
#[inline]
pub unsafe fn code_get_extra(code: *mut PyObject, index: Py_ssize_t) -> *mut c_void {
    let mut extra = std::ptr::null_mut();
    // SAFETY: as the caller promises; `extra` is a valid out-pointer.
    unsafe {
        if raw::code_get_extra(code, index, &mut extra) != 0 {
            pyo3::ffi::PyErr_Clear();
            return std::ptr::null_mut();
        }
    }
    extra
}

/// Stores `extra` in `code`'s co_extra slot; false when CPython refused
/// (then the caller still owns `extra`).
///
/// # Safety
/// As for [`code_get_extra`].
pub unsafe fn code_set_extra(code: *mut PyObject, index: Py_ssize_t, extra: *mut c_void) -> bool {
    // SAFETY: as the caller promises.
    unsafe {
        if raw::code_set_extra(code, index, extra) != 0 {
            pyo3::ffi::PyErr_Clear();
            return false;
        }
    }
    true
}

/// The leading fields of CPython's `PyCFunctionObject` (a builtin function
/// or method), the same in every supported version (pyo3 declares the
/// struct only from 3.9 on).
#[repr(C)]
pub struct CFunctionObject {
    pub ob_base: PyObject,
    pub m_ml: *mut pyo3::ffi::PyMethodDef,
    pub m_self: *mut PyObject,
    pub m_module: *mut PyObject,
}

/// Calls `on_exec` right before every `os.exec*` of this process replaces
/// its image (the `os.exec` audit event): what is not yet committed would
/// go with it. False if the hook could not be added.
pub fn before_exec(on_exec: fn()) -> bool {
    static ON_EXEC: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();
    unsafe extern "C" fn hook(
        event: *const std::ffi::c_char,
        _args: *mut PyObject,
        _user_data: *mut c_void,
    ) -> c_int {
        // SAFETY: CPython passes the event's name, a C string.
        if unsafe { std::ffi::CStr::from_ptr(event) } == c"os.exec" {
            if let Some(on_exec) = ON_EXEC.get() {
                on_exec();
            }
        }
        0
    }
    if ON_EXEC.set(on_exec).is_err() {
        return true; // added already
    }
    // SAFETY: GIL held (module import); the hook takes no lock of CPython's
    // and raises nothing.
    unsafe { raw::PySys_AddAuditHook(Some(hook), std::ptr::null_mut()) == 0 }
}
