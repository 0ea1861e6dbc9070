//! The LTTng-UST half: loading the tracepoint provider, the emitters and
//! enabled flags of the `python` and `python_fast` providers
//! (`src/tp/python_tp.c`) and LTTng-UST's fork protocol.
//!
//! The emitters are safe to call from any thread at any time: LTTng-UST
//! never blocks the caller (a full ring buffer discards the event) and the
//! strings are copied before they return.

use std::ffi::{c_char, c_int, CStr};

#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}

mod raw {
    use super::*;
    extern "C" {
        pub fn pyust_tp_load() -> *const c_char;
        pub fn pyust_tp_count() -> c_int;
        pub static pyust_tp_states: [*const c_int; 8];
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
        pub fn pyust_tp_emit_fast_def(
            id: u32,
            co_name: *const c_char,
            co_qualname: *const c_char,
            module: *const c_char,
            co_filename: *const c_char,
            co_firstlineno: i32,
        );
        pub fn pyust_tp_emit_fast_batch(
            tid: i32,
            base: u64,
            span: u64,
            ticks: u64,
            data: *const u8,
            len: u16,
        );
        pub fn pyust_tp_emit_fast_exception(exc_type: *const c_char);
        pub fn pyust_gettid() -> i32;
        pub fn pyust_guard_stop_signals() -> c_int;
        pub fn pyust_block_signals();
        pub fn clock_gettime(clock: c_int, ts: *mut Timespec) -> c_int;
        pub fn pthread_setname_np(thread: std::ffi::c_ulong, name: *const c_char) -> c_int;
        pub fn prctl(option: c_int, arg2: std::ffi::c_ulong, ...) -> c_int;
        pub fn getppid() -> c_int;
        pub fn pyust_tp_before_fork();
        pub fn pyust_tp_after_fork_parent();
        pub fn pyust_tp_after_fork_child();
        pub fn pyust_forward_sigusr1(pid: c_int) -> c_int;
    }
}

/// Names a thread just spawned (as `pyust-*`) before it runs: std names a
/// thread from within, once it is scheduled, and a fork meanwhile would
/// count it as one of the program's (`record::forkwarn`).
pub fn name_thread<T>(thread: &std::thread::JoinHandle<T>, name: &CStr) {
    use std::os::unix::thread::JoinHandleExt;
    // SAFETY: the handle's thread is alive until joined (the handle is
    // borrowed); the name is NUL-terminated and within 16 bytes.
    unsafe {
        raw::pthread_setname_np(thread.as_pthread_t() as std::ffi::c_ulong, name.as_ptr());
    }
}

/// Bits of [`enabled`]: which `python:*` events some session records.
pub const EV_CALL: c_int = 1;
pub const EV_RETURN: c_int = 2;
pub const EV_C_CALL: c_int = 4;
pub const EV_C_RETURN: c_int = 8;
pub const EV_EXCEPTION: c_int = 16;
/// `python_fast:batch`: the fast mode records.
pub const EV_FAST: c_int = 32;
/// `python_fast:c_calls`: the fast mode's batches hold C calls too.
pub const EV_FAST_C: c_int = 64;
/// `python_fast:exception` (not part of [`enabled`]: it goes with `EV_FAST`).
pub const EV_FAST_EXC: c_int = 128;

/// Why the tracepoint provider could not be loaded (None: it is loaded).
static LOAD_ERROR: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// Loads the tracepoint provider beside the module (once; called at
/// import). Until it is loaded, and for good when it cannot be, every
/// tracepoint is off: no session can enable them.
pub fn load_provider() -> Option<&'static str> {
    LOAD_ERROR
        .get_or_init(|| {
            // SAFETY: dlopens a file of ours; the result is NULL or a
            // NUL-terminated string in a static buffer, copied at once
            // (this runs once).
            unsafe {
                let err = raw::pyust_tp_load();
                (!err.is_null()).then(|| CStr::from_ptr(err).to_string_lossy().into_owned())
            }
        })
        .as_deref()
}

/// When the provider is not loaded: one line saying why and what to do.
pub fn provider_warning() -> Option<String> {
    let err = load_provider()?;
    Some(if err.contains("liblttng-ust.so") {
        "LTTng-UST is not installed (liblttng-ust.so.1 not found), so nothing is \
         traced: install liblttng-ust1t64 or liblttng-ust1 (Debian, Ubuntu), lttng-ust (Fedora)"
            .to_owned()
    } else {
        format!("nothing is traced: the tracepoint provider did not load ({err})")
    })
}

/// How many tracepoints this module defines (9 when the `python` and
/// `python_fast` providers were linked in whole).
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
    [
        EV_CALL,
        EV_RETURN,
        EV_C_CALL,
        EV_C_RETURN,
        EV_EXCEPTION,
        EV_FAST,
        EV_FAST_C,
    ]
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

/// `python_fast:def`: the names of id `id`.
pub fn emit_fast_def(
    id: u32,
    name: &CStr,
    qualname: &CStr,
    module: &CStr,
    filename: &CStr,
    firstlineno: i32,
) {
    // SAFETY: all pointers are NUL-terminated strings borrowed for the call.
    unsafe {
        raw::pyust_tp_emit_fast_def(
            id,
            name.as_ptr(),
            qualname.as_ptr(),
            module.as_ptr(),
            filename.as_ptr(),
            firstlineno,
        )
    }
}

/// `python_fast:batch`: thread `tid`'s records (`data`, at most 64 KiB),
/// from `base` (ns on LTTng's clock) for `span` ns or `ticks` ticks.
pub fn emit_fast_batch(tid: i32, base: u64, span: u64, ticks: u64, data: &[u8]) {
    let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
    // SAFETY: `data` is readable for `len` bytes, copied before the return.
    unsafe { raw::pyust_tp_emit_fast_batch(tid, base, span, ticks, data.as_ptr(), len) }
}

/// `python_fast:exception`: the type name of the exception just committed.
pub fn emit_fast_exception(exc_type: &CStr) {
    // SAFETY: a NUL-terminated string borrowed for the call.
    unsafe { raw::pyust_tp_emit_fast_exception(exc_type.as_ptr()) }
}

/// In a thread of pyust's own: the signals that end or stop a program
/// are delivered to the program's threads instead (see `python_tp.c`).
pub fn block_signals() {
    // SAFETY: changes the calling thread's signal mask only.
    unsafe { raw::pyust_block_signals() }
}

/// pyust's handler of the signals that end a program, where they have their
/// default action: an event being written is finished, the fast mode's
/// batches are committed, then the process dies of the signal as before
/// (see `python_tp.c`).
pub fn guard_stop_signals() {
    // SAFETY: installs a handler (sigaction) only over the default action.
    unsafe { raw::pyust_guard_stop_signals() };
}

/// This process gets `signal` when its parent (`parent`) dies; false when
/// the parent is already gone (or another process's child now).
pub fn die_with_parent(signal: c_int, parent: c_int) -> bool {
    const PR_SET_PDEATHSIG: c_int = 1;
    // SAFETY: prctl with an option that sets a flag of this process only;
    // getppid takes nothing.
    unsafe {
        raw::prctl(PR_SET_PDEATHSIG, signal as std::ffi::c_ulong) == 0 && raw::getppid() == parent
    }
}

/// The calling thread's id (what LTTng's `vtid` context records).
pub fn gettid() -> i32 {
    // SAFETY: a system call with no argument.
    unsafe { raw::pyust_gettid() }
}

/// Nanoseconds on the clock LTTng-UST stamps events with (its default
/// clock, CLOCK_MONOTONIC: no clock plugin is loaded by pyust).
#[inline]
pub fn clock_ns() -> u64 {
    const CLOCK_MONOTONIC: c_int = 1;
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: `ts` is a valid timespec for the call to fill (64-bit Linux).
    unsafe { raw::clock_gettime(CLOCK_MONOTONIC, &mut ts) };
    ts.sec as u64 * 1_000_000_000 + ts.nsec as u64
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

/// `record --flight-recorder`: SIGUSR1 received by this process is passed
/// on to `pid` (record), which takes a snapshot. False if the handler
/// could not be installed.
pub fn forward_sigusr1(pid: i32) -> bool {
    // SAFETY: installs a signal handler that only calls kill(); the pid it
    // reads is a sig_atomic_t set before the handler is installed.
    unsafe { raw::pyust_forward_sigusr1(pid) == 0 }
}
