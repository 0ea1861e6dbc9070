//! pyust's native module `pyust._pyust`: the LTTng-UST provider `python`
//! and the interpreter hook that feeds it. `python/pyust/` is the public
//! surface; see SPEC.md for the event schema.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod analyze;
mod ffi;
mod format;
mod fxhash;
mod read;
mod record;

use analyze::{report, timeline, top, view};
use record as control;
use record::hook;

use pyo3::prelude::*;
use pyo3::types::{PyCode, PyDict};

/// Start emitting `python:*` events, for every thread.
#[pyfunction]
#[pyo3(pass_module)]
fn enable(m: &Bound<'_, PyModule>) -> PyResult<()> {
    control::enable(m.py(), &m.getattr("_thread_start")?)
}

/// Stop emitting events, for every thread.
#[pyfunction]
fn disable(py: Python<'_>) -> PyResult<()> {
    control::disable(py)
}

/// Whether tracing is enabled.
#[pyfunction]
fn is_enabled() -> bool {
    control::is_enabled()
}

/// `pyust view` of a trace with fast-mode batches: prints its `python:*`
/// events as text. OSError when it cannot be read; KeyboardInterrupt on
/// Ctrl-C.
#[pyfunction]
fn _view(py: Python<'_>, path: std::path::PathBuf) -> PyResult<()> {
    interruptible(py, |tick| view::view(&path, tick))
}

/// Runs a trace reading `read` without the GIL; its `tick` takes the GIL
/// back every so often to let Python see a Ctrl-C (KeyboardInterrupt),
/// and stops the reading then. Its other errors are OSError.
fn interruptible<T: Send>(
    py: Python<'_>,
    read: impl FnOnce(&mut dyn FnMut() -> Result<(), String>) -> Result<T, String> + Send,
) -> PyResult<T> {
    let mut interrupt = None;
    let result = py.detach(|| {
        read(&mut || {
            Python::attach(|py| match py.check_signals() {
                Ok(()) => Ok(()),
                Err(err) => {
                    interrupt = Some(err);
                    Err("interrupted".to_owned())
                }
            })
        })
    });
    match (result, interrupt) {
        (Ok(value), _) => Ok(value),
        (Err(_), Some(err)) => Err(err),
        (Err(msg), None) => Err(pyo3::exceptions::PyOSError::new_err(msg)),
    }
}

/// How pyust hooks this interpreter: "sys.monitoring" (3.12+) or "profile".
#[pyfunction]
fn backend() -> &'static str {
    control::backend_name()
}

/// Why nothing can be traced here (LTTng-UST missing), or None. Loads
/// LTTng-UST (its threads start) the first time, as tracing would.
#[pyfunction]
fn _no_tracing(py: Python<'_>) -> Option<String> {
    py.detach(ffi::lttng::provider_warning)
}

/// Under `record`: this process (the program) gets `signal` when `record`,
/// its parent `parent`, dies; false when it is already gone.
#[pyfunction]
fn _die_with_parent(signal: i32, parent: i32) -> bool {
    ffi::lttng::die_with_parent(signal, parent)
}

/// Whether some LTTng session currently records `python:call` or the
/// fast mode's batches (LTTng-UST is loaded at the first call, as it
/// registers with the session daemon: a session is seen once it has).
#[pyfunction]
fn session_active(py: Python<'_>) -> bool {
    py.detach(ffi::lttng::load_provider);
    ffi::lttng::on(ffi::lttng::EV_CALL) || ffi::lttng::on(ffi::lttng::EV_FAST)
}

/// Run `code` with `globals` as its namespace, traced (the launcher's body).
#[pyfunction]
#[pyo3(pass_module)]
fn run(
    m: &Bound<'_, PyModule>,
    code: &Bound<'_, PyCode>,
    globals: &Bound<'_, PyDict>,
) -> PyResult<Py<PyAny>> {
    control::run(m.py(), code, globals.as_any(), &m.getattr("_thread_start")?)
}

/// Under `pyust record`: join its recording through its control socket
/// (waits until record tracks this process, or says why it cannot).
#[pyfunction]
fn _join_record(py: Python<'_>, path: std::path::PathBuf) {
    control::join_record(py, path)
}

/// `pyust attach`'s detach: the process leaves the recording.
#[pyfunction]
fn _leave_record() {
    control::leave_record()
}

/// Under `pyust record --flight-recorder`: SIGUSR1 sent to this process
/// goes on to record (`pid`), which takes a snapshot.
#[pyfunction]
fn _forward_snapshot_signal(pid: i32) -> PyResult<()> {
    if ffi::lttng::forward_sigusr1(pid) {
        Ok(())
    } else {
        Err(pyo3::exceptions::PyOSError::new_err(
            "cannot install the SIGUSR1 handler",
        ))
    }
}

/// `threading.setprofile` target: hooks a new thread at its first event.
#[pyfunction]
#[pyo3(signature = (frame, event, arg=None))]
fn _thread_start(frame: &Bound<'_, PyAny>, event: &str, arg: Option<&Bound<'_, PyAny>>) {
    control::thread_start(frame, event, arg)
}

/// `os.register_at_fork` callbacks: LTTng-UST's fork protocol, so a forked
/// child traces under its own pid.
#[pyfunction]
fn _before_fork(py: Python<'_>) {
    control::before_fork(py)
}

#[pyfunction]
fn _after_fork_parent(py: Python<'_>) {
    control::after_fork_parent(py)
}

#[pyfunction]
fn _after_fork_child(py: Python<'_>) {
    if forked_by_subprocess(py) {
        // A subprocess child (preexec_fn given) that will exec at once.
        control::forked_for_exec();
    } else {
        control::after_fork_child(py);
    }
}

/// Whether this fork comes from `subprocess` (its `_execute_child` calls
/// `_posixsubprocess.fork_exec`, which runs the at-fork hooks).
fn forked_by_subprocess(py: Python<'_>) -> bool {
    let frame = py
        .import("sys")
        .and_then(|sys| sys.call_method1("_getframe", (0,)));
    let Ok(frame) = frame else {
        return false;
    };
    let code = frame.getattr("f_code");
    let name = code
        .as_ref()
        .ok()
        .and_then(|c| c.getattr("co_name").ok()?.extract::<String>().ok());
    let file = code
        .as_ref()
        .ok()
        .and_then(|c| c.getattr("co_filename").ok()?.extract::<String>().ok());
    name.as_deref() == Some("_execute_child") && file.is_some_and(|f| f.ends_with("subprocess.py"))
}

/// Whether the callbacks are installed right now (tracing is enabled and
/// some session records `python:*` events): for tests and diagnostics.
#[pyfunction]
fn _armed() -> bool {
    hook::ARMED.load(std::sync::atomic::Ordering::SeqCst)
}

/// atexit: stop the watcher thread before the interpreter finalizes.
#[pyfunction]
fn _stop_watcher(py: Python<'_>) {
    control::stop_watcher(py)
}

/// `with pyust.tracing():` and `@pyust.tracing()`: trace a block or a
/// function. Native, so that no frame of pyust shows in the trace.
#[pyclass(module = "pyust")]
struct Tracing {
    /// For each `with` block open on this object (nested or reused), whether
    /// tracing was on when it was entered: its exit turns it off if not.
    was_enabled: Vec<bool>,
}

#[pymethods]
impl Tracing {
    #[new]
    fn new() -> Self {
        Tracing {
            was_enabled: Vec::new(),
        }
    }

    fn __enter__(mut slf: PyRefMut<'_, Self>) -> PyResult<PyRefMut<'_, Self>> {
        let py = slf.py();
        let was_enabled = control::is_enabled();
        control::enable(py, &thread_start(py)?)?;
        slf.was_enabled.push(was_enabled);
        Ok(slf)
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(
        &mut self,
        py: Python<'_>,
        _exc: &Bound<'_, pyo3::types::PyTuple>,
    ) -> PyResult<bool> {
        if self.was_enabled.pop() == Some(false) {
            control::disable(py)?;
        }
        Ok(false)
    }

    /// As a decorator: the function, traced whenever it runs.
    fn __call__(&self, py: Python<'_>, func: Py<PyAny>) -> PyResult<Py<PyAny>> {
        let traced = Bound::new(
            py,
            TracedFunction {
                func: Some(func.clone_ref(py)),
            },
        )?;
        // What functools.update_wrapper copies, but `__wrapped__`, which is
        // a property: the instance dict holds no reference back to `func`.
        let func = func.bind(py);
        for attr in [
            "__module__",
            "__name__",
            "__qualname__",
            "__doc__",
            "__annotations__",
        ] {
            if let Ok(value) = func.getattr(attr) {
                traced.setattr(attr, value)?;
            }
        }
        if let Ok(dict) = func.getattr("__dict__") {
            traced
                .getattr("__dict__")?
                .call_method1("update", (dict,))?;
        }
        Ok(traced.into_any().unbind())
    }
}

/// A function decorated with `@pyust.tracing()`.
#[pyclass(module = "pyust", dict, weakref)]
struct TracedFunction {
    /// None once cleared by the garbage collector.
    func: Option<Py<PyAny>>,
}

#[pymethods]
impl TracedFunction {
    #[pyo3(signature = (*args, **kwargs))]
    fn __call__(
        &self,
        py: Python<'_>,
        args: &Bound<'_, pyo3::types::PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let Some(func) = &self.func else {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "traced function was cleared",
            ));
        };
        let was_enabled = control::is_enabled();
        control::enable(py, &thread_start(py)?)?;
        let result = func.call(py, args, kwargs);
        if !was_enabled {
            control::disable(py)?;
        }
        result
    }

    /// The decorated function, as functools.wraps gives it.
    #[getter]
    fn __wrapped__(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.func.as_ref().map(|f| f.clone_ref(py))
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        if let Some(func) = &self.func {
            visit.call(func)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.func = None;
    }

    /// Binds like a plain function, so methods can be decorated.
    fn __get__(
        slf: Py<Self>,
        py: Python<'_>,
        obj: Option<Py<PyAny>>,
        _owner: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        match obj {
            Some(obj) if !obj.is_none(py) => Ok(py
                .import("types")?
                .getattr("MethodType")?
                .call1((slf, obj))?
                .unbind()),
            _ => Ok(slf.into_any()),
        }
    }
}

fn thread_start(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    py.import("pyust._pyust")?.getattr("_thread_start")
}

/// Bench only (`--features bench`): switch a hook on or off on this
/// thread — "profile" (a C no-op `PyEval_SetProfile` function), on 3.12+
/// "monitoring" (C no-op `sys.monitoring` callbacks), or "prototype" (the
/// original prototype's C profile hook recording `co_name` alone as
/// `pyust_proto:*` events).
#[cfg(feature = "bench")]
#[pyfunction]
fn _bench_floor(py: Python<'_>, kind: &str, on: bool) -> PyResult<()> {
    unsafe extern "C" fn noop(
        _obj: *mut pyo3::ffi::PyObject,
        _frame: *mut pyo3::ffi::PyFrameObject,
        _what: std::ffi::c_int,
        _arg: *mut pyo3::ffi::PyObject,
    ) -> std::ffi::c_int {
        0
    }
    match kind {
        // SAFETY: GIL held; installs or removes the prototype's C hook
        // (src/tp/proto_hook.c) on this thread.
        "prototype" => unsafe {
            extern "C" {
                fn pyust_proto_set(on: std::ffi::c_int);
            }
            pyust_proto_set(on.into());
            Ok(())
        },
        // SAFETY: GIL held; a function that does nothing.
        "profile" => unsafe {
            pyo3::ffi::PyEval_SetProfile(
                on.then_some(noop as pyo3::ffi::Py_tracefunc),
                std::ptr::null_mut(),
            );
            Ok(())
        },
        #[cfg(Py_3_12)]
        "monitoring" => record::bench_floor(py, on),
        _ => {
            let _ = py;
            Err(pyo3::exceptions::PyValueError::new_err(format!(
                "no {kind} floor here"
            )))
        }
    }
}

/// `pyust report`: reads the trace folder `path`, writes the outputs
/// asked for and returns the table. OSError when the trace cannot be read
/// or an output written; KeyboardInterrupt on Ctrl-C (outputs removed).
#[pyfunction]
#[pyo3(signature = (path, sort, limit, pid=None, tid=None, host=None, flamegraph=None, folded=None, perfetto=None, perfetto_json=None, min_duration=0, start=None, end=None, max_slices=None))]
#[allow(clippy::too_many_arguments)]
fn _report(
    py: Python<'_>,
    path: std::path::PathBuf,
    sort: &str,
    limit: usize,
    pid: Option<i64>,
    tid: Option<i64>,
    host: Option<String>,
    flamegraph: Option<std::path::PathBuf>,
    folded: Option<std::path::PathBuf>,
    perfetto: Option<std::path::PathBuf>,
    perfetto_json: Option<std::path::PathBuf>,
    min_duration: i64,
    start: Option<i64>,
    end: Option<i64>,
    max_slices: Option<u64>,
) -> PyResult<String> {
    let sort = match sort {
        "tottime" => report::Sort::Tottime,
        "cumtime" => report::Sort::Cumtime,
        "calls" => report::Sort::Calls,
        other => {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "unknown sort key {other:?}"
            )))
        }
    };
    let opts = report::Options {
        sort,
        limit,
        pid,
        tid,
        host,
        flamegraph,
        folded,
        perfetto,
        perfetto_json,
        limits: timeline::Limits {
            min_duration,
            from: start.unwrap_or(i64::MIN),
            to: end.unwrap_or(i64::MAX),
            max_slices: max_slices.unwrap_or(u64::MAX),
        },
    };
    interruptible(py, |tick| report::report(&path, &opts, tick))
}

/// The first packet of the traces under `path` whose sizes cannot be
/// (see `read::check_packets`), in one line; None when there is none.
#[pyfunction]
fn _check_trace(py: Python<'_>, path: std::path::PathBuf) -> Option<String> {
    py.detach(|| read::check_packets(&path).err())
}

/// (url, host, session name, streams, viewers attached).
type LiveSession = (String, String, String, u64, u64);

/// The live sessions a relay daemon serves, read at `url`
/// (`net://HOST:LIVE_PORT`): (url to attach to, host, session name,
/// streams, viewers attached). OSError when it cannot be asked.
#[pyfunction]
fn _live_sessions(py: Python<'_>, url: String) -> PyResult<Vec<LiveSession>> {
    py.detach(|| read::live_sessions(&url))
        .map(|sessions| {
            sessions
                .into_iter()
                .map(|s| (s.url, s.hostname, s.name, s.streams, s.clients))
                .collect()
        })
        .map_err(pyo3::exceptions::PyOSError::new_err)
}

/// `pyust top`: attaches to the live sessions at `urls` and prints a
/// table of the hottest functions every `interval` seconds until they
/// end ("ended"), `once` printed its table ("once") or stdout closed
/// ("closed"). KeyboardInterrupt on Ctrl-C; OSError when they cannot be
/// read.
#[pyfunction]
#[pyo3(signature = (urls, title, interval=1.0, once=false, limit=20, redraw=false))]
fn _top(
    py: Python<'_>,
    urls: Vec<String>,
    title: String,
    interval: f64,
    once: bool,
    limit: usize,
    redraw: bool,
) -> PyResult<&'static str> {
    let opts = top::Options {
        interval: std::time::Duration::from_secs_f64(interval.clamp(0.05, 3600.0)),
        once,
        limit,
        redraw,
        title,
    };
    interruptible(py, |tick| top::top(&urls, &opts, tick)).map(|end| match end {
        top::End::Ended => "ended",
        top::End::Once => "once",
        top::End::Closed => "closed",
    })
}

// Safe without the GIL: nesting is per thread, the per-code caches are
// published atomically (co_extra set under the code object's lock, module
// names as immutable entries), the C-function cache is behind a read
// lock held while no Python code runs, and arming is serialized by a lock
// that detaches while it waits. A free-threaded CPython keeps its GIL off.
/// `os._exit` while pyust is imported (see `control::guard_exit`).
#[pyfunction]
#[pyo3(name = "_exit", signature = (*args, **kwargs))]
fn exit_committing(
    py: Python<'_>,
    args: &Bound<'_, pyo3::types::PyTuple>,
    kwargs: Option<&Bound<'_, pyo3::types::PyDict>>,
) -> PyResult<Py<PyAny>> {
    control::commit_and_exit(py, args, kwargs)
}

#[pymodule(gil_used = false)]
fn _pyust(m: &Bound<'_, PyModule>) -> PyResult<()> {
    control::init(m.py());
    // Bound to `posix`, as the original: a C call of pyust's own module
    // would not be traced.
    let posix = m.py().import("posix")?;
    control::guard_exit(m.py(), wrap_pyfunction!(exit_committing, &posix)?.as_any())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // Number of tracepoints defined (9); also keeps them linked.
    m.add("_tracepoints", ffi::lttng::tracepoint_count())?;
    m.add_function(wrap_pyfunction!(_no_tracing, m)?)?;
    m.add_function(wrap_pyfunction!(_die_with_parent, m)?)?;
    m.add_function(wrap_pyfunction!(enable, m)?)?;
    m.add_function(wrap_pyfunction!(disable, m)?)?;
    m.add_function(wrap_pyfunction!(is_enabled, m)?)?;
    m.add_function(wrap_pyfunction!(session_active, m)?)?;
    m.add_function(wrap_pyfunction!(backend, m)?)?;
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add_function(wrap_pyfunction!(_thread_start, m)?)?;
    m.add_function(wrap_pyfunction!(_join_record, m)?)?;
    m.add_function(wrap_pyfunction!(_leave_record, m)?)?;
    m.add_function(wrap_pyfunction!(_forward_snapshot_signal, m)?)?;
    m.add_function(wrap_pyfunction!(_before_fork, m)?)?;
    m.add_function(wrap_pyfunction!(_after_fork_parent, m)?)?;
    m.add_function(wrap_pyfunction!(_after_fork_child, m)?)?;
    m.add_function(wrap_pyfunction!(_stop_watcher, m)?)?;
    m.add_function(wrap_pyfunction!(_armed, m)?)?;
    m.add_function(wrap_pyfunction!(_report, m)?)?;
    m.add_function(wrap_pyfunction!(_live_sessions, m)?)?;
    m.add_function(wrap_pyfunction!(_top, m)?)?;
    m.add_function(wrap_pyfunction!(_view, m)?)?;
    m.add_function(wrap_pyfunction!(_check_trace, m)?)?;
    #[cfg(feature = "bench")]
    m.add_function(wrap_pyfunction!(_bench_floor, m)?)?;
    m.add_class::<Tracing>()?;
    m.add_class::<TracedFunction>()?;
    let classes = [
        &m.py().get_type::<Tracing>(),
        &m.py().get_type::<TracedFunction>(),
    ];
    hook::hide_module(m, &classes);
    Ok(())
}
