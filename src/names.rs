//! The slow path: turning Python objects into the NUL-terminated UTF-8
//! strings the events carry. Runs once per code object (the result is cached
//! on it, see `hook.rs`) or per new C function, never per event.
//!
//! Every function here needs the GIL, never raises and never disturbs an
//! exception that is being raised: `preserving_error` parks it meanwhile.

use std::ffi::CString;

use pyo3::prelude::*;
use pyo3::types::{PyCode, PyString, PyType};
use pyo3::{intern, PyErr};

/// Runs `f` with the thread's pending exception (if any) set aside, and
/// discards any error `f` leaves behind.
pub fn preserving_error<T>(py: Python<'_>, f: impl FnOnce() -> T) -> T {
    let pending = PyErr::take(py);
    let out = f();
    if let Some(err) = PyErr::take(py) {
        drop(err);
    }
    if let Some(err) = pending {
        err.restore(py);
    }
    out
}

/// UTF-8 of `s`, lone surrogates and NULs replaced by U+FFFD.
pub fn to_cstring(s: &Bound<'_, PyAny>) -> CString {
    let text = match s.cast::<PyString>() {
        Ok(s) => match s.to_str() {
            Ok(text) => text.to_owned(),
            // Lone surrogates: decode code point by code point.
            Err(_) => s
                .call_method1(intern!(s.py(), "encode"), ("utf-32-le", "surrogatepass"))
                .ok()
                .and_then(|b| b.extract::<Vec<u8>>().ok())
                .map(|bytes| {
                    bytes
                        .chunks_exact(4)
                        .map(|c| {
                            char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                                .unwrap_or(char::REPLACEMENT_CHARACTER)
                        })
                        .collect()
                })
                .unwrap_or_else(|| char::REPLACEMENT_CHARACTER.to_string()),
        },
        Err(_) => s.str().map(|s| to_cstring_lossy(&s)).unwrap_or_default(),
    };
    cstring(text)
}

fn to_cstring_lossy(s: &Bound<'_, PyString>) -> String {
    to_cstring(s.as_any()).into_string().unwrap_or_default()
}

/// A `CString` from any text, NULs replaced by U+FFFD.
pub fn cstring(text: String) -> CString {
    CString::new(text).unwrap_or_else(|err| {
        let text = String::from_utf8(err.into_vec()).unwrap_or_default();
        CString::new(text.replace('\0', "\u{FFFD}")).unwrap_or_default()
    })
}

fn attr_cstring(obj: &Bound<'_, PyAny>, name: &Bound<'_, PyString>) -> Option<CString> {
    obj.getattr(name).ok().map(|v| to_cstring(&v))
}

/// What a `python:call` event says of a code object.
pub struct CodeNames {
    pub co_name: CString,
    pub co_qualname: CString,
    pub co_filename: CString,
    pub co_firstlineno: i32,
}

pub fn code_names(code: &Bound<'_, PyCode>) -> CodeNames {
    let py = code.py();
    let co_name = attr_cstring(code, intern!(py, "co_name")).unwrap_or_default();
    // co_qualname exists from 3.11 on; before that the name is the best known.
    let co_qualname =
        attr_cstring(code, intern!(py, "co_qualname")).unwrap_or_else(|| co_name.clone());
    CodeNames {
        co_qualname,
        co_filename: attr_cstring(code, intern!(py, "co_filename")).unwrap_or_default(),
        co_firstlineno: code
            .getattr(intern!(py, "co_firstlineno"))
            .and_then(|v| v.extract())
            .unwrap_or(0),
        co_name,
    }
}

/// The code objects in `code`'s constants, each with its qualified name
/// by the compiler's rules: `parent.<locals>.name` inside a function,
/// `Class.name` inside a class body, `name` at module level.
#[cfg_attr(Py_3_11, allow(dead_code))]
pub fn nested_codes<'py>(
    code: &Bound<'py, PyCode>,
    qualname: &str,
) -> Vec<(Bound<'py, PyCode>, String)> {
    const CO_NEWLOCALS: u32 = 0x2;
    let py = code.py();
    let flags: u32 = code
        .getattr(intern!(py, "co_flags"))
        .and_then(|f| f.extract())
        .unwrap_or(0);
    let is_module = code
        .getattr(intern!(py, "co_name"))
        .and_then(|n| n.extract::<String>())
        .is_ok_and(|n| n == "<module>");
    let Ok(consts) = code.getattr(intern!(py, "co_consts")) else {
        return Vec::new();
    };
    let Ok(consts) = consts.cast_into::<pyo3::types::PyTuple>() else {
        return Vec::new();
    };
    consts
        .iter()
        .filter_map(|c| c.cast_into::<PyCode>().ok())
        .map(|child| {
            let name = child
                .getattr(intern!(py, "co_name"))
                .and_then(|n| n.extract::<String>())
                .unwrap_or_default();
            let qual = if flags & CO_NEWLOCALS != 0 {
                format!("{qualname}.<locals>.{name}")
            } else if is_module {
                name
            } else {
                format!("{qualname}.{name}")
            };
            (child, qual)
        })
        .collect()
}

/// Before 3.11: the qualified name of the function (or class body) whose
/// code is `code`, found among the module's globals and its classes'
/// attributes. None when it is not there (a nested function, say: those
/// are named from their enclosing code, see `nested_codes`).
#[cfg_attr(Py_3_11, allow(dead_code))]
pub fn find_qualname(
    code: &Bound<'_, PyCode>,
    globals: Option<&Bound<'_, PyAny>>,
) -> Option<String> {
    let py = code.py();
    let globals = globals?.cast::<pyo3::types::PyDict>().ok()?;
    // A function, a method's function, or what a decorator wraps.
    let qualname_of = |func: &Bound<'_, PyAny>| -> Option<String> {
        let mut inner = func
            .getattr(intern!(py, "__func__"))
            .unwrap_or_else(|_| func.clone());
        for _ in 0..8 {
            if let Ok(func_code) = inner.getattr(intern!(py, "__code__")) {
                if func_code.is(code) {
                    let qualname = inner.getattr(intern!(py, "__qualname__")).ok()?;
                    return to_cstring(&qualname).into_string().ok();
                }
            }
            inner = inner.getattr(intern!(py, "__wrapped__")).ok()?;
        }
        None
    };
    for (_, value) in globals.iter() {
        if let Some(q) = qualname_of(&value) {
            return Some(q);
        }
        if let Ok(class) = value.cast::<PyType>() {
            let Ok(dict) = class.getattr(intern!(py, "__dict__")) else {
                continue;
            };
            let Ok(values) = dict.call_method0(intern!(py, "values")) else {
                continue;
            };
            for member in values.try_iter().into_iter().flatten().flatten() {
                if let Some(q) = qualname_of(&member) {
                    return Some(q);
                }
            }
        }
    }
    None
}

/// `module.Qualname` of a type, without the module for builtins:
/// `ValueError`, `json.decoder.JSONDecodeError`, `collections.deque`.
pub fn type_name(ty: &Bound<'_, PyType>) -> String {
    let py = ty.py();
    let qualname = ty
        .getattr(intern!(py, "__qualname__"))
        .and_then(|q| q.extract::<String>())
        .unwrap_or_else(|_| to_cstring_any(ty.getattr(intern!(py, "__name__")).ok()));
    match ty
        .getattr(intern!(py, "__module__"))
        .and_then(|m| m.extract::<String>())
    {
        Ok(module) if module != "builtins" => format!("{module}.{qualname}"),
        _ => qualname,
    }
}

fn to_cstring_any(obj: Option<Bound<'_, PyAny>>) -> String {
    obj.map(|o| to_cstring(&o).into_string().unwrap_or_default())
        .unwrap_or_else(|| "?".to_owned())
}

/// The owner-qualified name of a C function: `builtins.len`, `time.sleep`
/// (module functions), `list.append`, `dict.fromkeys` (methods).
/// `owner` is the function's `__self__`, `module` its `__module__`.
pub fn c_function_qualname(
    name: &str,
    owner: Option<&Bound<'_, PyAny>>,
    module: Option<&Bound<'_, PyAny>>,
) -> CString {
    let py_module = |m: &Bound<'_, PyAny>| -> Option<String> {
        if let Ok(m) = m.cast::<pyo3::types::PyModule>() {
            return m.name().ok().map(|n| to_cstring_any(Some(n.into_any())));
        }
        None
    };
    let text = match owner {
        Some(owner) if !owner.is_none() && py_module(owner).is_none() => {
            let ty = match owner.cast::<PyType>() {
                Ok(ty) => ty.clone(),
                Err(_) => owner.get_type(),
            };
            format!("{}.{name}", type_name(&ty))
        }
        _ => {
            let module = module
                .and_then(|m| m.extract::<String>().ok())
                .or_else(|| owner.and_then(py_module));
            match module {
                Some(module) => format!("{module}.{name}"),
                None => name.to_owned(),
            }
        }
    };
    cstring(text)
}
