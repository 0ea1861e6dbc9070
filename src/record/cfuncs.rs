//! C functions' names, keyed by (method definition, owner type) in a
//! table read under a read lock on every C call, and the emitters of C
//! calls.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::sync::{Mutex, RwLock};

use pyo3::ffi;
use pyo3::prelude::*;

use super::fast;
use super::hook::{attached, Out};
use super::names;
use crate::ffi::cpython as cpy;
use crate::ffi::lttng as tp;

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
