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
/// discards any error `f` leaves behind — also when `f` panics (the
/// pending exception is put back as the panic unwinds).
pub fn preserving_error<T>(py: Python<'_>, f: impl FnOnce() -> T) -> T {
    struct Restore<'py> {
        py: Python<'py>,
        pending: Option<PyErr>,
    }
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            drop(PyErr::take(self.py));
            if let Some(err) = self.pending.take() {
                err.restore(self.py);
            }
        }
    }
    let _restore = Restore {
        py,
        pending: PyErr::take(py),
    };
    f()
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

/// Before 3.11: the qualified name of `code` by the compiler's rules, read
/// off the code of the module it was compiled in: the module's source
/// file compiled again (`compile`, no code of the program runs), or a
/// frozen module's code. None when neither is at hand (code made by
/// `exec` of a string, a file changed or gone since).
#[cfg(not(Py_3_11))]
pub fn qualname_from_source(code: &Bound<'_, PyCode>) -> Option<String> {
    let py = code.py();
    let filename: String = code
        .getattr(intern!(py, "co_filename"))
        .ok()?
        .extract()
        .ok()?;
    let (place, bytecode) = code_place(code);
    let known = {
        let files = SOURCES.lock().unwrap_or_else(|e| e.into_inner());
        files.as_ref().and_then(|f| f.get(&filename).cloned())
    };
    // Made outside the lock: compiling may run Python code (a collection).
    let module = match known {
        Some(module) => module,
        None => {
            let module = module_qualnames(py, &filename).map(std::sync::Arc::new);
            let mut files = SOURCES.lock().unwrap_or_else(|e| e.into_inner());
            files
                .get_or_insert_with(std::collections::HashMap::new)
                .insert(filename, module.clone());
            module
        }
    }?;
    let candidates = module.get(&place)?;
    candidates
        .iter()
        .find(|(code_bytes, _)| *code_bytes == bytecode)
        .or(candidates.first())
        .map(|(_, qualname)| qualname.clone())
}

/// Where a code object is in its module — (first line, name) — and its
/// bytecode, which tells apart codes of one place.
#[cfg(not(Py_3_11))]
fn code_place(code: &Bound<'_, PyCode>) -> ((i64, String), Vec<u8>) {
    let py = code.py();
    let line = code
        .getattr(intern!(py, "co_firstlineno"))
        .and_then(|l| l.extract())
        .unwrap_or(0);
    let name = code
        .getattr(intern!(py, "co_name"))
        .and_then(|n| n.extract())
        .unwrap_or_default();
    let bytecode = code
        .getattr(intern!(py, "co_code"))
        .and_then(|c| c.extract())
        .unwrap_or_default();
    ((line, name), bytecode)
}

/// The code of frozen module `name` (`importlib._bootstrap` is frozen as
/// `_frozen_importlib`).
#[cfg(not(Py_3_11))]
fn frozen_code<'py>(py: Python<'py>, name: &str) -> Option<Bound<'py, PyAny>> {
    let imp = py.import("_imp").ok()?;
    let alias = name
        .strip_prefix("importlib._bootstrap")
        .map(|rest| format!("_frozen_importlib{rest}"));
    std::iter::once(name.to_owned())
        .chain(alias)
        .find_map(|n| imp.call_method1("get_frozen_object", (n,)).ok())
}

/// Every code object of one module: (first line, name) → (bytecode,
/// qualified name) for each code of that place.
#[cfg(not(Py_3_11))]
type ModuleQualnames = std::collections::HashMap<(i64, String), Vec<(Vec<u8>, String)>>;

/// The modules read so far, by file name (None: no code to be had).
#[cfg(not(Py_3_11))]
static SOURCES: std::sync::Mutex<
    Option<std::collections::HashMap<String, Option<std::sync::Arc<ModuleQualnames>>>>,
> = std::sync::Mutex::new(None);

#[cfg(not(Py_3_11))]
fn module_qualnames(py: Python<'_>, filename: &str) -> Option<ModuleQualnames> {
    let frozen = filename
        .strip_prefix("<frozen ")
        .and_then(|f| f.strip_suffix('>'));
    let module_code = if let Some(code) = frozen.and_then(|name| frozen_code(py, name)) {
        code
    } else {
        let path = match frozen {
            // A frozen module without its frozen code: its source in the
            // standard library.
            Some(name) => {
                let stdlib: String = py
                    .import("sysconfig")
                    .ok()?
                    .call_method1("get_path", ("stdlib",))
                    .ok()?
                    .extract()
                    .ok()?;
                format!("{stdlib}/{}.py", name.replace('.', "/"))
            }
            None => filename.to_owned(),
        };
        let source = std::fs::read(&path).ok()?;
        let compile = py.import("builtins").ok()?.getattr("compile").ok()?;
        let kwargs = pyo3::types::PyDict::new(py);
        kwargs.set_item("dont_inherit", true).ok()?;
        compile
            .call(
                (pyo3::types::PyBytes::new(py, &source), filename, "exec"),
                Some(&kwargs),
            )
            .ok()?
    };
    let module_code = module_code.cast_into::<PyCode>().ok()?;
    let mut table = ModuleQualnames::new();
    let mut todo = vec![(module_code, String::new(), 0u32)];
    while let Some((code, qualname, depth)) = todo.pop() {
        if depth > 64 {
            continue;
        }
        for (child, child_qualname) in nested_codes(&code, &qualname) {
            let (key, bytecode) = code_place(&child);
            table
                .entry(key)
                .or_default()
                .push((bytecode, child_qualname.clone()));
            todo.push((child, child_qualname, depth + 1));
        }
    }
    Some(table)
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
