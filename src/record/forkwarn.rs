//! CPython 3.12+ warns at an `os.fork()` of a process that has more than
//! one thread ("This process (pid=N) is multi-threaded, use of fork() may
//! lead to deadlocks in the child"), counting the threads of the process,
//! not Python's. A traced program has LTTng-UST's two listener threads
//! (named `<program>-ust`) and pyust's own (`pyust-*`); both are fork-safe:
//! LTTng-UST's fork protocol and pyust's at-fork hooks hold their locks
//! across the fork. So when those are the only threads beside the one that
//! forks, the fork is as quiet as it is untraced; a program with threads
//! of its own gets the warning as it would untraced.
//!
//! How: the before-fork hook puts a filter first in `warnings.filters`
//! whose message pattern is a [`ForkWarning`]: it matches that warning
//! once (the warning comes after the after-fork hooks on 3.13+), then
//! takes the filter out again. Only C-level calls: nothing here is traced.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};
use std::sync::Mutex;

/// The filter standing in `warnings.filters` (the list and the entry), from
/// a fork's before-fork hook until the warning consults it.
static STANDING: Mutex<Option<(Py<PyList>, Py<PyTuple>)>> = Mutex::new(None);

/// The registry and key of the last warning the filter ignored.
static NOTED: Mutex<Option<(Py<PyDict>, Py<PyTuple>)>> = Mutex::new(None);

/// A warnings filter's message pattern (CPython calls its `match(text)`)
/// that matches the fork-with-threads warning once.
#[pyclass(frozen, module = "pyust._pyust")]
struct ForkWarning;

#[pymethods]
impl ForkWarning {
    fn r#match(&self, py: Python<'_>, text: &Bound<'_, PyString>) -> bool {
        // ("This process (pid=N) is multi-threaded, use of fork() may lead
        // to deadlocks in the child.", or forkpty(); loosely, should a
        // later CPython reword it.)
        let ours = text.to_str().is_ok_and(|t| {
            t.starts_with("This process (pid=")
                && t.contains("multi-threaded")
                && t.contains("fork")
        });
        if ours {
            take_down(py);
            // CPython notes an ignored warning in the registry of the
            // module that forked, keyed by (text, category, line): the next
            // fork from that line, with threads of the program's own, would
            // be taken for one already shown. The note goes at the next fork.
            let note = || -> PyResult<(Py<PyDict>, Py<PyTuple>)> {
                let frame = py.import("sys")?.call_method1("_getframe", (0,))?;
                let registry = frame
                    .getattr("f_globals")?
                    .get_item("__warningregistry__")?;
                let category = py.get_type::<pyo3::exceptions::PyDeprecationWarning>();
                let key = PyTuple::new(
                    py,
                    [
                        text.clone().into_any(),
                        category.into_any(),
                        frame.getattr("f_lineno")?,
                    ],
                )?;
                Ok((registry.cast_into::<PyDict>()?.unbind(), key.unbind()))
            };
            *NOTED.lock().unwrap_or_else(|e| e.into_inner()) = note().ok();
        }
        ours
    }
}

/// Whether every thread of this process but one is LTTng-UST's or pyust's
/// (and there are such threads: else CPython says nothing).
fn only_ours_beside_one() -> bool {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return false;
    };
    let (mut ours, mut others) = (0, 0);
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let comm = comm.trim_end();
        if comm.ends_with("-ust") || comm.starts_with("pyust-") {
            ours += 1;
        } else {
            others += 1;
        }
    }
    ours > 0 && others <= 1
}

/// Takes the standing filter out of its list (by identity: the program may
/// have changed the list meanwhile).
fn take_down(py: Python<'_>) {
    let standing = STANDING.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some((list, entry)) = standing {
        let list = list.into_bound(py);
        if let Some(i) = list.iter().position(|e| e.is(&entry)) {
            let _ = list.del_item(i);
        }
    }
}

/// The before-fork hook's part.
pub fn before_fork(py: Python<'_>) {
    take_down(py);
    let noted = NOTED.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some((registry, key)) = noted {
        let _ = registry.bind(py).del_item(key.bind(py));
    }
    if !only_ours_beside_one() {
        return;
    }
    let stand = || -> PyResult<(Py<PyList>, Py<PyTuple>)> {
        // `warnings.filters` once `warnings` is imported (catch_warnings
        // puts a copy there), `_warnings.filters` before: what CPython reads.
        let list = match py.import("sys")?.getattr("modules")?.get_item("warnings") {
            Ok(warnings) => warnings.getattr("filters")?,
            Err(_) => py.import("_warnings")?.getattr("filters")?,
        };
        let list = list.cast_into::<PyList>()?;
        let entry = PyTuple::new(
            py,
            [
                "ignore".into_pyobject(py)?.into_any(),
                Bound::new(py, ForkWarning)?.into_any(),
                py.get_type::<pyo3::exceptions::PyDeprecationWarning>()
                    .into_any(),
                py.None().into_bound(py),
                0i32.into_pyobject(py)?.into_any(),
            ],
        )?;
        list.insert(0, &entry)?;
        Ok((list.unbind(), entry.unbind()))
    };
    if let Ok(filter) = stand() {
        *STANDING.lock().unwrap_or_else(|e| e.into_inner()) = Some(filter);
    }
}

/// The child's after-fork hook's part (the child does not warn).
pub fn after_fork_child(py: Python<'_>) {
    take_down(py);
}
