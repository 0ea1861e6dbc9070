//! Turning tracing on and off: `enable()` / `disable()`, the watcher that
//! arms the backend's callbacks only while some LTTng session records
//! `python:*` events, the launcher's `run`, and fork handling. The hot
//! path (`hook.rs`) knows none of this.

#[cfg(Py_3_12)]
use super::monitor as backend;
#[cfg(not(Py_3_12))]
use super::profile as backend;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::MutexExt;
use pyo3::types::PyCode;

use super::fast;
use super::hook::{self, ARMED, ENABLED};
use crate::ffi::lttng as tp;

/// How often the watcher looks at LTTng's enabled flags: a session that
/// starts recording `python:*` is seen within this time.
pub const WATCH_PERIOD: std::time::Duration = std::time::Duration::from_millis(20);
static WATCH_STOP: AtomicBool = AtomicBool::new(false);
static WATCHER: Mutex<Option<std::thread::JoinHandle<()>>> = Mutex::new(None);

/// Prepares the hot path and the backend; called once at module import.
pub fn init(py: Python<'_>) {
    // (LTTng-UST is loaded when tracing is first asked for: importing
    // pyust starts no thread.)
    hook::init(py);
    backend::init(py);
    fast::init();
    extern "C" fn at_exit() {
        // The fast mode's last records (after the atexit handlers ran).
        fast::flush_all();
    }
    // SAFETY: registers a function that takes no lock held by CPython.
    unsafe { ffi::Py_AtExit(Some(at_exit)) };
    // ... and before an exec, which ends the process image without exit
    // hooks: the records the program made before it stay in the trace.
    crate::ffi::cpython::before_exec(fast::flush_all);
}

/// `os._exit` ends the process at once (no atexit, no `Py_AtExit`). While
/// pyust is imported, `os._exit` is [`commit_and_exit`]: the fast mode's
/// last records are committed first, whether or not C calls are recorded
/// (when they are, the C call does it as well).
static EXIT: pyo3::sync::PyOnceLock<Py<PyAny>> = pyo3::sync::PyOnceLock::new();

/// Puts `wrapper` (named `_exit`, bound to module `posix`: in a trace it is
/// the C call `posix._exit`, as the original) in place of `os._exit`.
pub fn guard_exit(py: Python<'_>, wrapper: &Bound<'_, PyAny>) -> PyResult<()> {
    let os = py.import("os")?;
    let original = os.getattr("_exit")?;
    if original.is(wrapper) || EXIT.get(py).is_some() {
        return Ok(());
    }
    let _ = EXIT.set(py, original.unbind());
    os.setattr("_exit", wrapper)?;
    py.import("posix")?.setattr("_exit", wrapper)
}

/// The body of the `os._exit` that [`guard_exit`] puts in place.
pub fn commit_and_exit(
    py: Python<'_>,
    args: &Bound<'_, pyo3::types::PyTuple>,
    kwargs: Option<&Bound<'_, pyo3::types::PyDict>>,
) -> PyResult<Py<PyAny>> {
    fast::flush_all();
    match EXIT.get(py) {
        Some(original) => original.call(py, args, kwargs),
        None => Err(pyo3::exceptions::PyRuntimeError::new_err(
            "os._exit is missing",
        )),
    }
}

/// Starts tracing, for every thread (see the backend for how). When the
/// callbacks cannot be armed, tracing stays off and the error is raised.
pub fn enable(py: Python<'_>, thread_start: &Bound<'_, PyAny>) -> PyResult<()> {
    warn_if_no_provider(py);
    tp::guard_stop_signals();
    ensure_tracked(py);
    if !ENABLED.load(Ordering::SeqCst) {
        // Nesting restarts from here on every thread, before any callback
        // sees tracing on: while it was off, callbacks counted nothing, so
        // the counts of the last enabled stretch are stale (a thread
        // running between the two stores would close frames with them).
        hook::restart_nesting();
    }
    let was_enabled = ENABLED.swap(true, Ordering::SeqCst);
    let result = backend::start(py, thread_start).and_then(|()| {
        // Before arming: starting the watcher imports modules, which
        // would be traced.
        if backend::CAN_ARM_ALL_THREADS {
            start_watcher(py)?;
        }
        sync(py)
    });
    if result.is_err() && !was_enabled {
        ENABLED.store(false, Ordering::SeqCst);
        let _ = sync(py);
        let _ = backend::stop(py);
    }
    result
}

/// Without the tracepoint provider (LTTng-UST not installed), tracing
/// stays off whatever enable() says: one line on stderr says so, the first
/// time tracing is asked for.
fn warn_if_no_provider(py: Python<'_>) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if let Some(line) = tp::provider_warning() {
        if !WARNED.swap(true, Ordering::Relaxed) {
            let _ = py
                .import("sys")
                .and_then(|sys| sys.getattr("stderr"))
                .and_then(|err| err.call_method1("write", (format!("pyust: {line}\n"),)));
        }
    }
}

/// Stops tracing on every thread.
pub fn disable(py: Python<'_>) -> PyResult<()> {
    ENABLED.store(false, Ordering::SeqCst);
    let disarmed = sync(py);
    fast::flush_all();
    backend::stop(py).and(disarmed)
}

pub fn is_enabled() -> bool {
    ENABLED.load(Ordering::SeqCst)
}

/// Which backend this build uses.
pub fn backend_name() -> &'static str {
    backend::NAME
}

/// Which callbacks are armed: the backend's `shape` of the enabled events
/// they were armed for, 0 when disarmed.
static SHAPE: AtomicU8 = AtomicU8::new(0);

/// The callbacks `ENABLED` and the sessions want now (a backend shape, 0
/// for none).
fn wanted_shape() -> u8 {
    if !ENABLED.load(Ordering::SeqCst) {
        return 0;
    }
    if !backend::CAN_ARM_ALL_THREADS {
        return backend::FULL_SHAPE; // armed for good at enable()
    }
    backend::shape(tp::enabled())
}

/// Arms, re-arms or disarms the callbacks as `ENABLED` and the sessions
/// want. An arming that fails leaves them disarmed.
fn sync(py: Python<'_>) -> PyResult<()> {
    // One at a time (`enable()`, `disable()` and the watcher may run at
    // once): waiting detaches, as arming runs Python code.
    static SYNC: Mutex<()> = Mutex::new(());
    let _one = SYNC.lock_py_attached(py).unwrap_or_else(|e| e.into_inner());
    let want = wanted_shape();
    let armed = SHAPE.load(Ordering::SeqCst);
    if want == armed {
        return Ok(());
    }
    if want != 0 {
        if armed == 0 {
            // Frames already running close without a trace; a session
            // that just started gets every definition again.
            hook::restart_nesting();
            fast::new_epoch();
        }
        SHAPE.store(want, Ordering::SeqCst);
        // ARMED once the callbacks are in place, not before: on a
        // free-threaded build the program runs while this thread arms,
        // and `_armed()` must not say so before events can come.
        backend::arm(py, want)
            .map(|()| ARMED.store(true, Ordering::SeqCst))
            .inspect_err(|_| {
                ARMED.store(false, Ordering::SeqCst);
                SHAPE.store(0, Ordering::SeqCst);
                let _ = backend::disarm(py);
            })
    } else {
        ARMED.store(false, Ordering::SeqCst);
        SHAPE.store(0, Ordering::SeqCst);
        fast::flush_all();
        backend::disarm(py)
    }
}

/// The watcher: a native thread that polls LTTng's enabled flags (an
/// atomic read) every `WATCH_PERIOD` and takes the GIL only to arm or
/// disarm. Stopped at interpreter exit (atexit), restarted after fork.
fn start_watcher(py: Python<'_>) -> PyResult<()> {
    let mut watcher = WATCHER.lock().unwrap_or_else(|e| e.into_inner());
    if watcher.is_some() {
        return Ok(());
    }
    WATCH_STOP.store(false, Ordering::SeqCst);
    let handle = std::thread::Builder::new()
        .name("pyust-watcher".into())
        .spawn(|| {
            tp::block_signals();
            loop {
                std::thread::sleep(WATCH_PERIOD);
                if WATCH_STOP.load(Ordering::SeqCst) {
                    break;
                }
                if wanted_shape() != SHAPE.load(Ordering::SeqCst) {
                    Python::attach(|py| {
                        if WATCH_STOP.load(Ordering::SeqCst) {
                            return;
                        }
                        if let Err(err) = sync(py) {
                            // Nobody to raise it to: the program goes on untraced.
                            err.write_unraisable(py, None);
                        }
                    });
                }
            }
        })
        .map_err(|e| pyo3::exceptions::PyOSError::new_err(e.to_string()))?;
    tp::name_thread(&handle, c"pyust-watcher");
    *watcher = Some(handle);
    drop(watcher);
    static AT_EXIT: std::sync::Once = std::sync::Once::new();
    let mut result = Ok(());
    AT_EXIT.call_once(|| {
        result = py
            .import("pyust._pyust")
            .and_then(|m| m.getattr("_stop_watcher"))
            .and_then(|stop| py.import("atexit")?.call_method1("register", (stop,)))
            .map(drop);
    });
    result
}

/// Stops the watcher (atexit: before the interpreter finalizes).
pub fn stop_watcher(py: Python<'_>) {
    fast::flush_all();
    WATCH_STOP.store(true, Ordering::SeqCst);
    let handle = WATCHER.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(handle) = handle {
        py.detach(|| {
            let _ = handle.join();
        });
    }
}

/// `os.register_at_fork(before=...)`: LTTng-UST's fork protocol. From here
/// to the matching after-fork hook, the forking thread emits nothing: the
/// other at-fork hooks that run meanwhile would emit with LTTng's fork
/// locks held, or in the child before it is re-registered.
pub fn before_fork(py: Python<'_>) {
    #[cfg(Py_3_12)]
    super::forkwarn::before_fork(py);
    #[cfg(not(Py_3_12))]
    let _ = py;
    if record_path().is_some() && ENABLED.load(Ordering::SeqCst) {
        // Under `record`: the child says on this pair when it is tracked.
        // (Close-on-exec: a child that execs says so by closing it.)
        let pair = UnixStream::pair().ok();
        FORK_READY.with(|ready| *ready.borrow_mut() = pair);
    }
    fast::before_fork();
    hook::mute_current_thread(true);
    tp::before_fork();
}

pub fn after_fork_parent(py: Python<'_>) {
    tp::after_fork_parent();
    fast::after_fork_parent();
    hook::mute_current_thread(false);
    if let Some((mut parent_end, child_end)) = FORK_READY.with(|ready| ready.borrow_mut().take()) {
        // The fork returns once `record` tracks the child, as an untraced
        // fork returns with the child running: else a short-lived child
        // (a Pool worker the parent terminates) can be killed while it
        // still waits, before running any of its code.
        drop(child_end);
        py.detach(|| {
            let _ = parent_end.set_read_timeout(Some(TRACK_TIMEOUT));
            let _ = parent_end.read(&mut [0u8; 1]);
        });
    }
}

thread_local! {
    /// From `before_fork` to the after-fork hook of the same thread, under
    /// `record`: (parent's end, child's end) of the pair on which the child
    /// tells its parent that `record` tracks it.
    static FORK_READY: std::cell::RefCell<Option<(UnixStream, UnixStream)>> =
        const { std::cell::RefCell::new(None) };
}

/// In the child: tell the parent (see `after_fork_parent`) it may go on.
fn release_parent() {
    if let Some((parent_end, mut child_end)) = FORK_READY.with(|ready| ready.borrow_mut().take()) {
        drop(parent_end);
        let _ = child_end.write_all(b"r");
    }
}

/// In a forked child: LTTng-UST re-registers under the child's pid, the
/// frames running at the fork (the parent's) close without a trace, and
/// the watcher thread, which did not survive the fork, starts anew.
pub fn after_fork_child(py: Python<'_>) {
    #[cfg(Py_3_12)]
    super::forkwarn::after_fork_child(py);
    tp::after_fork_child();
    fast::after_fork_child();
    hook::restart_nesting();
    if ENABLED.load(Ordering::SeqCst) {
        // Still muted: nothing is emitted before `record` tracks this child.
        ensure_tracked(py);
    }
    release_parent();
    hook::mute_current_thread(false);
    let stale = WATCHER.lock().unwrap_or_else(|e| e.into_inner()).take();
    // Not joinable here (no such thread in this process): forget it.
    std::mem::forget(stale);
    if ENABLED.load(Ordering::SeqCst) && backend::CAN_ARM_ALL_THREADS {
        let _ = start_watcher(py);
    }
}

/// Under `pyust record` (or `attach`): the path of its control socket, or
/// null. Each process of the recorded program connects there once,
/// before its first event; `record` adds the peer's pid to its session's
/// vpid tracker (`lttng track --userspace --vpid`, which returns once the
/// process's tracepoints are set up for the session) and answers `go`, or
/// `no REASON`. A pointer, not a lock (one held by another thread at a
/// fork would stay held in the child); a path it replaces (a second
/// `attach`) is leaked, as a thread may still read it.
static RECORD: AtomicPtr<PathBuf> = AtomicPtr::new(std::ptr::null_mut());
/// The process that last had `record`'s answer (0: none), `go` or not: a
/// forked child has another pid, so it asks again.
static ASKED: AtomicU32 = AtomicU32::new(0);
/// The process one of whose threads is asking (or last asked).
static ASKING: AtomicU32 = AtomicU32::new(0);
/// How long a process waits for `record`'s answer.
const TRACK_TIMEOUT: Duration = Duration::from_secs(30);

fn record_path() -> Option<&'static PathBuf> {
    let path = RECORD.load(Ordering::SeqCst);
    // SAFETY: set from a leaked Box, never freed.
    (!path.is_null()).then(|| unsafe { &*path })
}

/// `record`'s (or `attach`'s) process: remember the control socket and get
/// tracked now (before the launcher asks whether a session records). A
/// new socket (another `attach`) asks again.
pub fn join_record(py: Python<'_>, path: PathBuf) {
    if record_path() != Some(&path) {
        // black_box: LLVM 19 (Rust 1.85's) turns a global only ever set to
        // one allocation into a static plus an `init` flag, which it then
        // cannot load atomically ("Cannot select: AtomicLoad").
        let path = std::hint::black_box(Box::into_raw(Box::new(path)));
        RECORD.store(path, Ordering::SeqCst);
        ASKED.store(0, Ordering::SeqCst);
        ASKING.store(0, Ordering::SeqCst);
    }
    ensure_tracked(py)
}

/// `attach`'s detach: this process and its forks belong to no recording.
pub fn leave_record() {
    RECORD.store(std::ptr::null_mut(), Ordering::SeqCst);
    ASKED.store(0, Ordering::SeqCst);
    ASKING.store(0, Ordering::SeqCst);
}

/// Once per process under `record`: wait until `record` tracks it. A
/// failure is one line on stderr; the program runs on, and `record`'s
/// trace lacks this process (other sessions still get its events).
fn ensure_tracked(py: Python<'_>) {
    let Some(path) = record_path() else {
        return;
    };
    let pid = std::process::id();
    // One thread of this process asks; the others enabling meanwhile wait
    // for its answer (detached), so none emits before the process is
    // tracked. Pids, not a lock: a child forked while a thread of its
    // parent was asking asks anew.
    loop {
        if ASKED.load(Ordering::SeqCst) == pid {
            return; // answered (a failure was said then)
        }
        let asking = ASKING.load(Ordering::SeqCst);
        if asking != pid
            && ASKING
                .compare_exchange(asking, pid, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            break;
        }
        py.detach(|| std::thread::sleep(Duration::from_millis(1)));
    }
    let answer = py.detach(|| ask_record(path));
    ASKED.store(pid, Ordering::SeqCst);
    if let Err(reason) = answer {
        // stderr may be closed: nothing to do about it then.
        let _ = writeln!(
            std::io::stderr(),
            "pyust: process {pid} is not in the recording: {reason}"
        );
    }
}

/// One exchange with `record`: connect, read its answer to the end.
fn ask_record(path: &std::path::Path) -> Result<(), String> {
    let mut stream = UnixStream::connect(path)
        .map_err(|e| format!("cannot reach pyust record ({e}); has it ended?"))?;
    stream
        .set_read_timeout(Some(TRACK_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("no answer from pyust record ({e})"))?;
    match answer.trim_end() {
        "go" => Ok(()),
        other => Err(other.strip_prefix("no ").unwrap_or(other).to_string()),
    }
}

/// In a child that is about to exec (a subprocess with `preexec_fn`):
/// re-initialising LTTng-UST there can abort, and nothing in it is worth
/// tracing. Release what `before_fork` took, trace nothing more.
pub fn forked_for_exec() {
    release_parent();
    tp::after_fork_parent();
    fast::after_fork_parent();
    hook::mute_current_thread(false);
    ENABLED.store(false, Ordering::SeqCst);
    ARMED.store(false, Ordering::SeqCst);
    SHAPE.store(0, Ordering::SeqCst);
}

/// `threading`'s profile hook for threads started while tracing (only the
/// profile backend installs it).
pub fn thread_start(frame: &Bound<'_, PyAny>, event: &str, arg: Option<&Bound<'_, PyAny>>) {
    backend::thread_start(frame, event, arg)
}

/// Runs `code` in `globals` traced, as the body of `python -m pyust`: no
/// frame of pyust is between the hook and the script. This thread stops
/// being reported when the code ends; other threads go on.
pub fn run(
    py: Python<'_>,
    code: &Bound<'_, PyCode>,
    globals: &Bound<'_, PyAny>,
    thread_start: &Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    enable(py, thread_start)?;
    // SAFETY: GIL held; `code` is a code object and `globals` a dict (checked
    // by the caller), both alive for the call.
    let result = unsafe { ffi::PyEval_EvalCode(code.as_ptr(), globals.as_ptr(), globals.as_ptr()) };
    backend::leave_current_thread();
    // SAFETY: PyEval_EvalCode returns a new reference or null with an error set.
    unsafe { Bound::from_owned_ptr_or_err(py, result) }.map(Bound::unbind)
}
