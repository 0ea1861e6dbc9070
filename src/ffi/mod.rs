//! Every foreign declaration pyust needs beyond `pyo3::ffi`, in one place:
//! the LTTng-UST emitters of `src/tp/python_tp.c` and the few CPython entry
//! points whose name changed across versions; and, in `bt2`, the reading
//! of traces through libbabeltrace2 for `pyust report`.
//!
//! The emitters are safe to call from any thread at any time: LTTng-UST
//! never blocks the caller (a full ring buffer discards the event) and the
//! strings are copied before they return.

use std::ffi::{c_char, c_int, c_void, CStr};

pub mod bt2;

use pyo3::ffi::{freefunc, PyObject, Py_ssize_t};

mod raw {
    use super::*;
    extern "C" {
        pub fn pyust_tp_count() -> c_int;
        pub static pyust_tp_states: [*const c_int; 5];
        pub fn pyust_tp_emit_call(
            co_name: *const c_char,
            co_qualname: *const c_char,
            module: *const c_char,
            co_filename: *const c_char,
            co_firstlineno: i32,
        );
        pub fn pyust_tp_emit_return();
        pub fn pyust_tp_emit_c_call(co_name: *const c_char, co_qualname: *const c_char);
        pub fn pyust_tp_emit_c_return();
        pub fn pyust_tp_emit_exception(
            exc_type: *const c_char,
            co_qualname: *const c_char,
            lineno: i32,
        );
        pub fn pyust_tp_before_fork();
        pub fn pyust_tp_after_fork_parent();
        pub fn pyust_tp_after_fork_child();

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
    }
}

/// Bits of [`enabled`]: which `python:*` events some session records.
pub const EV_CALL: c_int = 1;
pub const EV_RETURN: c_int = 2;
pub const EV_C_CALL: c_int = 4;
pub const EV_C_RETURN: c_int = 8;
pub const EV_EXCEPTION: c_int = 16;

/// How many `python:*` tracepoints this module defines (5 when the
/// provider was linked in whole).
pub fn tracepoint_count() -> c_int {
    // SAFETY: reads two link-time addresses.
    unsafe { raw::pyust_tp_count() }
}

/// Whether some session records event `ev` (one `EV_*` bit) right now.
#[inline]
pub fn on(ev: c_int) -> bool {
    // SAFETY: `pyust_tp_states` holds the addresses of the five tracepoints'
    // `state` ints, static for the life of the process; LTTng-UST updates
    // them atomically (its CMM_LOAD_SHARED is this relaxed load).
    unsafe {
        let state = raw::pyust_tp_states[ev.trailing_zeros() as usize];
        (*state.cast::<std::sync::atomic::AtomicI32>()).load(std::sync::atomic::Ordering::Relaxed)
            != 0
    }
}

/// Which events are enabled right now, as a mask of `EV_*` bits.
#[inline]
pub fn enabled() -> c_int {
    [EV_CALL, EV_RETURN, EV_C_CALL, EV_C_RETURN, EV_EXCEPTION]
        .into_iter()
        .filter(|&ev| on(ev))
        .fold(0, |mask, ev| mask | ev)
}

#[inline]
pub fn emit_call(name: &CStr, qualname: &CStr, module: &CStr, filename: &CStr, firstlineno: i32) {
    // SAFETY: all pointers are NUL-terminated strings borrowed for the call.
    unsafe {
        raw::pyust_tp_emit_call(
            name.as_ptr(),
            qualname.as_ptr(),
            module.as_ptr(),
            filename.as_ptr(),
            firstlineno,
        )
    }
}

#[inline]
pub fn emit_return() {
    // SAFETY: no argument.
    unsafe { raw::pyust_tp_emit_return() }
}

#[inline]
pub fn emit_c_call(name: &CStr, qualname: &CStr) {
    // SAFETY: both pointers are NUL-terminated strings borrowed for the call.
    unsafe { raw::pyust_tp_emit_c_call(name.as_ptr(), qualname.as_ptr()) }
}

#[inline]
pub fn emit_c_return() {
    // SAFETY: no argument.
    unsafe { raw::pyust_tp_emit_c_return() }
}

#[inline]
pub fn emit_exception(exc_type: &CStr, qualname: &CStr, lineno: i32) {
    // SAFETY: both pointers are NUL-terminated strings borrowed for the call.
    unsafe { raw::pyust_tp_emit_exception(exc_type.as_ptr(), qualname.as_ptr(), lineno) }
}

/// Installs `func` as the profile function of thread `tstate` (any thread
/// of the interpreter). Needs the GIL; `tstate` must be live.
#[cfg(all(Py_3_9, not(Py_3_12)))]
pub unsafe fn set_profile(
    tstate: *mut pyo3::ffi::PyThreadState,
    func: Option<pyo3::ffi::Py_tracefunc>,
) {
    if raw::set_profile(tstate, func, std::ptr::null_mut()) != 0 {
        pyo3::ffi::PyErr_Clear();
    }
}

/// The same for the trace function.
#[cfg(all(Py_3_9, not(Py_3_12)))]
pub unsafe fn set_trace(
    tstate: *mut pyo3::ffi::PyThreadState,
    func: Option<pyo3::ffi::Py_tracefunc>,
) {
    if raw::set_trace(tstate, func, std::ptr::null_mut()) != 0 {
        pyo3::ffi::PyErr_Clear();
    }
}

/// The version tag of dict `dict`: CPython (3.6 to 3.13) gives every dict
/// state a tag from one interpreter-wide counter, new at each creation and
/// each change, so an equal (address, tag) pair is the same dict, unchanged.
/// 0 when unknown (then nothing may be cached on it).
///
/// SAFETY: GIL held; `dict` a live dict.
#[inline]
pub unsafe fn dict_version(dict: *mut PyObject) -> u64 {
    #[cfg(not(Py_3_14))]
    #[allow(deprecated)] // deprecated in 3.12, kept through 3.13
    return (*dict.cast::<pyo3::ffi::PyDictObject>()).ma_version_tag;
    #[cfg(Py_3_14)]
    return 0;
}

/// LTTng-UST's fork protocol; Python's `os.register_at_fork` calls these.
pub fn before_fork() {
    // SAFETY: called by the forking thread just before fork(); paired below.
    unsafe { raw::pyust_tp_before_fork() }
}

pub fn after_fork_parent() {
    // SAFETY: called in the parent right after a fork that `before_fork` preceded.
    unsafe { raw::pyust_tp_after_fork_parent() }
}

pub fn after_fork_child() {
    // SAFETY: called in the child right after a fork that `before_fork` preceded.
    unsafe { raw::pyust_tp_after_fork_child() }
}

/// Reserves a co_extra slot whose values `free` releases with their code object.
/// Needs the GIL.
pub unsafe fn request_code_extra_index(free: freefunc) -> Py_ssize_t {
    raw::request_code_extra_index(free)
}

/// The co_extra value of `code` at `index`, or null. Needs the GIL; `code`
/// must be a code object and `index` one from `request_code_extra_index`.
#[inline]
pub unsafe fn code_get_extra(code: *mut PyObject, index: Py_ssize_t) -> *mut c_void {
    let mut extra = std::ptr::null_mut();
    if raw::code_get_extra(code, index, &mut extra) != 0 {
        pyo3::ffi::PyErr_Clear();
        return std::ptr::null_mut();
    }
    extra
}

/// Stores `extra` in `code`'s co_extra slot; false when CPython refused
/// (then the caller still owns `extra`). Same requirements as `code_get_extra`.
pub unsafe fn code_set_extra(code: *mut PyObject, index: Py_ssize_t, extra: *mut c_void) -> bool {
    if raw::code_set_extra(code, index, extra) != 0 {
        pyo3::ffi::PyErr_Clear();
        return false;
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
