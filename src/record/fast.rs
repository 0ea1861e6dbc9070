//! The fast mode's hot half (`pyust record --mode fast`, the `python_fast`
//! provider): each thread packs its events into a buffer of its own, 8
//! bytes each, and commits the buffer to LTTng as one `python_fast:batch`
//! event; names travel once per id, in `python_fast:def` events.
//!
//! A record is (32-bit offset in ticks from the batch's start, 32-bit word
//! `kind << 29 | id`); an exception adds (lineno, id of its type). Ticks
//! are the CPU's time-stamp counter where the kernel keeps time with it
//! (the `tsc` clocksource: invariant and synchronized across CPUs), read
//! in a few cycles; elsewhere ns of CLOCK_MONOTONIC. Each batch also
//! carries its start and its length on CLOCK_MONOTONIC, LTTng-UST's own
//! clock (read twice per batch), and in ticks: readers map its records
//! onto LTTng's clock, so they line up with every other event of the
//! session.
//!
//! A batch is committed when it is full, when its first record is
//! `FLUSH_NS` old (by the thread's next event, or by the flusher thread
//! when the thread is idle), when its thread ends, before a fork, and when
//! tracing stops or the interpreter exits. Definitions are re-emitted on
//! each id's first use in each epoch: a new epoch starts at each arming
//! and every `EPOCH_NS`, so that a session started while the program runs
//! resolves every id after at most one epoch.
//!
//! Each batch has a lock, taken by its thread around each record (one
//! uncontended atomic swap) and by the flusher: a batch is never written
//! by two threads at once, on the free-threaded build too.

use std::cell::{Cell, UnsafeCell};
use std::ffi::CStr;
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::ffi::lttng as tp;
pub use crate::format::{
    CALL, C_CALL, C_RETURN, EPOCH_NS, EXCEPTION, FLUSH_NS, ID_MASK, KIND_SHIFT, RETURN,
};

/// Bytes of records per batch (512 plain records).
const CAP: usize = 4096;
/// The same in ticks, as each record tests it: 100 ms of CLOCK_MONOTONIC,
/// or 300 M cycles of the TSC (100 ms at 3 GHz; the 32-bit offsets last
/// 0.86 s at 5 GHz).
static FLUSH_TICKS: AtomicU64 = AtomicU64::new(FLUSH_NS);
/// Whether ticks are the TSC's (decided once, at import).
static TSC: AtomicBool = AtomicBool::new(false);

/// Uses the TSC when the kernel's clocksource is it (its reads are then
/// what CLOCK_MONOTONIC is made of).
pub fn init() {
    if let Some(ms) = std::env::var("PYUST_TEST_DYING_PAUSE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        TEST_DYING_PAUSE_MS.store(ms, Ordering::Relaxed);
    }
    // Ids start at a point of their own in each process image: an image
    // that `exec` replaced had the same pid, and `view` names a record by
    // (pid, id), so ids counted again from 1 would give the records the
    // old image committed before the exec the new image's names.
    // (splitmix64 of the time and the pid; 2^29 ids, a few thousand used.)
    let mut x = tp::clock_ns() ^ (u64::from(std::process::id()) << 32);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    NEXT_ID.store((x ^ (x >> 31)) as u32 & ID_MASK, Ordering::Relaxed);
    #[cfg(target_arch = "x86_64")]
    {
        let source = std::fs::read_to_string(
            "/sys/devices/system/clocksource/clocksource0/current_clocksource",
        )
        .unwrap_or_default();
        if source.trim() == "tsc" && std::env::var_os("PYUST_NO_TSC").is_none() {
            TSC.store(true, Ordering::Relaxed);
            FLUSH_TICKS.store(300_000_000, Ordering::Relaxed);
        }
    }
}

/// Now, in ticks.
#[inline]
fn ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    if TSC.load(Ordering::Relaxed) {
        // SAFETY: RDTSC reads a counter; it has no memory effect.
        return unsafe { std::arch::x86_64::_rdtsc() };
    }
    tp::clock_ns()
}
const FLUSHER_PERIOD: Duration = Duration::from_millis(50);

/// Whether the fast mode records (some session enables `python_fast:batch`).
#[inline]
pub fn on() -> bool {
    tp::on(tp::EV_FAST)
}

/// Whether its batches take C calls too.
#[inline]
pub fn on_c() -> bool {
    tp::on(tp::EV_FAST) && tp::on(tp::EV_FAST_C)
}

struct Records {
    tid: i32,
    /// `RUN` when this batch was (re)started on its thread.
    run: u64,
    /// The first record's time, in ticks and on LTTng's clock.
    base: u64,
    base_ns: u64,
    len: usize,
    /// While `flush` hands the records to LTTng (a signal handler that
    /// interrupted it must not hand them again).
    emitting: bool,
    data: [u8; CAP],
}

struct Batch {
    lock: AtomicBool,
    /// Set by its thread's end: the flusher commits and frees it.
    orphan: AtomicBool,
    records: UnsafeCell<Records>,
}

// SAFETY: `records` is only touched under `lock`.
unsafe impl Sync for Batch {}

impl Batch {
    // A spin lock: the records are exclusively the caller's until `unlock`.
    #[allow(clippy::mut_from_ref)]
    #[inline]
    fn lock(&self) -> &mut Records {
        while self.lock.swap(true, Ordering::Acquire) {
            std::hint::spin_loop();
        }
        // SAFETY: the lock is ours until `unlock`.
        unsafe { &mut *self.records.get() }
    }

    #[allow(clippy::mut_from_ref)]
    fn try_lock(&self) -> Option<&mut Records> {
        if self.lock.swap(true, Ordering::Acquire) {
            return None;
        }
        // SAFETY: as above.
        Some(unsafe { &mut *self.records.get() })
    }

    #[inline]
    fn unlock(&self) {
        self.lock.store(false, Ordering::Release);
    }
}

impl Records {
    /// Commits the records to LTTng and starts an empty batch.
    fn flush(&mut self) {
        if self.len > 0 && on() {
            let span = tp::clock_ns().saturating_sub(self.base_ns);
            let ticks = ticks().wrapping_sub(self.base);
            self.emitting = true;
            compiler_fence(Ordering::SeqCst);
            tp::emit_fast_batch(self.tid, self.base_ns, span, ticks, &self.data[..self.len]);
            compiler_fence(Ordering::SeqCst);
            self.emitting = false;
        }
        self.len = 0;
    }

    /// Appends one record of `words` at time `t`.
    #[inline]
    fn put(&mut self, t: u64, words: &[u32]) {
        let need = 4 + 4 * words.len();
        if self.len != 0
            && (t.wrapping_sub(self.base) >= FLUSH_TICKS.load(Ordering::Relaxed)
                || self.len + need > CAP)
        {
            self.flush();
        }
        if self.len == 0 {
            self.base = t;
            self.base_ns = tp::clock_ns();
        }
        let delta = t.wrapping_sub(self.base) as u32;
        let mut at = self.len;
        self.data[at..at + 4].copy_from_slice(&delta.to_le_bytes());
        for w in words {
            at += 4;
            self.data[at..at + 4].copy_from_slice(&w.to_le_bytes());
        }
        // The record whole before it counts (a signal handler on this
        // thread may commit the batch between two records).
        compiler_fence(Ordering::SeqCst);
        self.len = at + 4;
    }
}

/// Bumped in a forked child: batches of an older run are the parent's.
static RUN: AtomicU64 = AtomicU64::new(1);
static EPOCH: AtomicU32 = AtomicU32::new(1);
static NEXT_ID: AtomicU32 = AtomicU32::new(1);

/// Every live batch, for the flusher and `flush_all`; a spin lock (not a
/// Mutex) so that `before_fork` can hold it across fork().
static REGISTRY_LOCK: AtomicBool = AtomicBool::new(false);
struct Registry(UnsafeCell<Vec<usize>>);
// SAFETY: the vector is only touched under REGISTRY_LOCK.
unsafe impl Sync for Registry {}
static REGISTRY: Registry = Registry(UnsafeCell::new(Vec::new()));
/// The process the flusher thread runs in (0: none yet).
static FLUSHER_PID: AtomicI32 = AtomicI32::new(0);

fn registry_lock() -> &'static mut Vec<usize> {
    while REGISTRY_LOCK.swap(true, Ordering::Acquire) {
        std::thread::yield_now();
    }
    // SAFETY: the lock is ours until `registry_unlock`.
    unsafe { &mut *REGISTRY.0.get() }
}

fn registry_unlock() {
    REGISTRY_LOCK.store(false, Ordering::Release);
}

thread_local! {
    static BATCH: Cell<*const Batch> = const { Cell::new(std::ptr::null()) };
    static OWNER: Owner = const { Owner };
}

/// Hands the thread's batch to the flusher when the thread ends.
struct Owner;

impl Drop for Owner {
    fn drop(&mut self) {
        let b = BATCH.with(|c| c.replace(std::ptr::null()));
        if !b.is_null() {
            // SAFETY: registered batches are freed by the flusher only
            // once orphaned, which is this store.
            unsafe { (*b).orphan.store(true, Ordering::Release) };
        }
    }
}

/// The calling thread's batch, locked.
#[inline]
fn with_records(f: impl FnOnce(&mut Records, u64)) {
    let mut b = BATCH.with(Cell::get);
    let run = RUN.load(Ordering::Relaxed);
    // SAFETY: a non-null BATCH is this thread's live batch.
    if b.is_null() || unsafe { (*(*b).records.get()).run } != run {
        b = match new_batch(b, run) {
            Some(b) => b,
            None => return,
        };
    }
    let t = ticks();
    // SAFETY: as above.
    let batch = unsafe { &*b };
    f(batch.lock(), t);
    batch.unlock();
}

/// Starts the calling thread's batch (or restarts the one a fork left).
#[cold]
#[inline(never)]
fn new_batch(old: *const Batch, run: u64) -> Option<*const Batch> {
    let tid = tp::gettid();
    let b = if old.is_null() {
        let b: *const Batch = Box::into_raw(Box::new(Batch {
            lock: AtomicBool::new(false),
            orphan: AtomicBool::new(false),
            records: UnsafeCell::new(Records {
                tid,
                run,
                base: 0,
                base_ns: 0,
                len: 0,
                emitting: false,
                data: [0; CAP],
            }),
        }));
        // The thread's end orphans it (registers OWNER's destructor);
        // none at all while the thread is ending: not traced further.
        if OWNER.try_with(|_| ()).is_err() {
            // SAFETY: just made, never shared.
            drop(unsafe { Box::from_raw(b.cast_mut()) });
            return None;
        }
        BATCH.with(|c| c.set(b));
        b
    } else {
        // A forked child: the parent's batch is the parent's (emptied
        // before the fork); this thread's id is new.
        // SAFETY: this thread's batch; no other thread exists that knows it.
        let r = unsafe { &mut *(*old).records.get() };
        r.tid = tid;
        r.run = run;
        r.len = 0;
        old
    };
    registry_lock().push(b as usize);
    registry_unlock();
    ensure_flusher();
    Some(b)
}

fn ensure_flusher() {
    let pid = std::process::id() as i32;
    if FLUSHER_PID.swap(pid, Ordering::SeqCst) == pid {
        return;
    }
    tp::guard_stop_signals();
    if std::env::var_os("PYUST_TEST_NO_FLUSHER").is_some() {
        // For tests only: no batch is committed but by its own thread or a
        // signal's handler, so a test of the handler cannot pass on a
        // flush that came first (tests/test_fast.py).
        return;
    }
    let flusher = std::thread::Builder::new()
        .name("pyust-flusher".into())
        .spawn(move || {
            tp::block_signals();
            let mut epoch_start = tp::clock_ns();
            loop {
                std::thread::sleep(FLUSHER_PERIOD);
                if std::process::id() as i32 != pid {
                    return; // never runs: threads do not survive fork
                }
                let t = tp::clock_ns();
                if t.wrapping_sub(epoch_start) >= EPOCH_NS {
                    new_epoch();
                    epoch_start = t;
                }
                flush_registered(Some(t));
            }
        });
    if let Ok(flusher) = &flusher {
        tp::name_thread(flusher, c"pyust-flusher");
    }
}

/// Commits every thread's batch (`older_than`: only those whose first
/// record is at least `FLUSH_NS` before it), and frees those whose thread
/// has ended.
fn flush_registered(older_than: Option<u64>) {
    let registry = registry_lock();
    registry.retain(|&b| {
        // SAFETY: registered batches live until removed here.
        let batch = unsafe { &*(b as *const Batch) };
        let orphan = batch.orphan.load(Ordering::Acquire);
        let records = if orphan {
            Some(batch.lock())
        } else {
            batch.try_lock()
        };
        if let Some(r) = records {
            if orphan || older_than.is_none_or(|t| t.wrapping_sub(r.base_ns) >= FLUSH_NS) {
                r.flush();
            }
            batch.unlock();
        }
        if orphan {
            // SAFETY: orphaned: its thread is gone and no one else holds it.
            drop(unsafe { Box::from_raw(b as *mut Batch) });
        }
        !orphan
    });
    registry_unlock();
}

/// SIGTERM (`python_tp.c`): commits the batches that no thread holds at
/// this instant, taking no lock that could be held (the handler may have
/// interrupted their holder).
#[no_mangle]
pub extern "C" fn pyust_fast_flush_on_signal() {
    // A lock another thread holds is released within microseconds (pyust's
    // own threads never take this signal: they block it); one this thread
    // held when the signal came never is: give up on it after a while.
    let deadline = tp::clock_ns() + SIGNAL_WAIT_NS;
    let take = |lock: &AtomicBool| loop {
        if !lock.swap(true, Ordering::Acquire) {
            return true;
        }
        if tp::clock_ns() > deadline {
            return false;
        }
        std::hint::spin_loop();
    };
    if !take(&REGISTRY_LOCK) {
        return;
    }
    let pause = TEST_DYING_PAUSE_MS.load(Ordering::Relaxed);
    if pause > 0 {
        // For tests only: the commit made to last, a second signal in it.
        std::thread::sleep(Duration::from_millis(pause));
    }
    let own = BATCH.with(Cell::get);
    // SAFETY: the registry lock is ours.
    for &b in unsafe { &*REGISTRY.0.get() } {
        // SAFETY: registered batches live until removed under that lock.
        let batch = unsafe { &*(b as *const Batch) };
        if b as *const Batch == own {
            // This thread's own batch, maybe locked by the code the signal
            // interrupted (between two records, or in the middle of one,
            // which does not count yet): the whole records are committed,
            // unless that code was committing them itself. The process
            // dies in this handler, so that code never resumes.
            let was_locked = batch.lock.swap(true, Ordering::Acquire);
            // SAFETY: this thread's batch; no other thread writes it.
            let r = unsafe { &mut *batch.records.get() };
            if !r.emitting {
                r.flush();
            }
            if !was_locked {
                batch.unlock();
            }
        } else if take(&batch.lock) {
            // SAFETY: the batch's lock is ours.
            unsafe { &mut *batch.records.get() }.flush();
            batch.unlock();
        }
    }
    registry_unlock();
}

/// For tests only (PYUST_TEST_DYING_PAUSE_MS, read at import): how long the
/// signal's commit pauses with the registry locked.
static TEST_DYING_PAUSE_MS: AtomicU64 = AtomicU64::new(0);

/// How long the SIGTERM handler waits for a lock another thread holds.
const SIGNAL_WAIT_NS: u64 = 20_000_000;

/// Commits every batch: tracing stops, or the interpreter exits.
pub fn flush_all() {
    flush_registered(None);
}

/// A new epoch: each id's next use emits its definition again.
pub fn new_epoch() {
    EPOCH.fetch_add(1, Ordering::Relaxed);
}

/// Before fork(): the forking thread's records go out first, and the
/// registry stays locked over the fork (the child must find it unlocked).
pub fn before_fork() {
    let b = BATCH.with(Cell::get);
    if !b.is_null() {
        // SAFETY: this thread's live batch.
        let batch = unsafe { &*b };
        batch.lock().flush();
        batch.unlock();
    }
    let _ = registry_lock();
}

pub fn after_fork_parent() {
    registry_unlock();
}

/// In the child: only the forking thread is left; its batch restarts
/// under the child's run, and definitions go out again under its pid.
pub fn after_fork_child() {
    // SAFETY: the registry lock is held (`before_fork`); the other
    // threads' batches are left allocated (their memory is the parent's
    // copy, and nothing frees it safely here).
    unsafe { (*REGISTRY.0.get()).clear() };
    RUN.fetch_add(1, Ordering::Relaxed);
    new_epoch();
    registry_unlock();
}

/// Ids handed out in this process image.
static IDS_GIVEN: AtomicU32 = AtomicU32::new(0);

/// A fresh id (never 0: id 0 names an unknown function, "?"). Once every
/// id has been given (2^29 - 1: a program that made that many functions
/// and modules), 0: its events read "?" rather than another's name.
pub fn new_id() -> u32 {
    if IDS_GIVEN.fetch_add(1, Ordering::Relaxed) >= ID_MASK {
        IDS_GIVEN.store(ID_MASK, Ordering::Relaxed);
        return 0;
    }
    loop {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed) & ID_MASK;
        if id != 0 {
            return id;
        }
    }
}

/// An id and the epoch its definition was last emitted in.
pub struct Def {
    pub id: u32,
    epoch: AtomicU32,
    /// A C function that ends the process (`os._exit`): every batch is
    /// committed right after its record, as no exit hook will run.
    pub exits: bool,
}

impl Def {
    pub fn new() -> Def {
        Def {
            id: new_id(),
            epoch: AtomicU32::new(0),
            exits: false,
        }
    }

    /// Another definition of the same names (the same code under another
    /// globals dict with the same `__name__`): the same id.
    pub fn same_as(other: &Def) -> Def {
        Def {
            id: other.id,
            epoch: AtomicU32::new(0),
            exits: other.exits,
        }
    }

    /// The id of a C function named `name`.
    pub fn of_c_function(name: &CStr) -> Def {
        Def {
            exits: name.to_bytes() == b"_exit",
            ..Def::new()
        }
    }

    /// The id, its definition emitted first (by `emit`) when not yet in
    /// this epoch.
    #[inline]
    pub fn use_id(&self, emit: impl FnOnce(u32)) -> u32 {
        let epoch = EPOCH.load(Ordering::Relaxed);
        if self.epoch.load(Ordering::Relaxed) != epoch {
            emit(self.id);
            self.epoch.store(epoch, Ordering::Relaxed);
        }
        self.id
    }
}

impl Default for Def {
    fn default() -> Self {
        Def::new()
    }
}

/// A call, return, C call or C return record.
#[inline]
pub fn push(kind: u32, id: u32) {
    with_records(|r, t| r.put(t, &[kind << KIND_SHIFT | id]));
}

/// An exception of type `type_id` in the code `code_id` at `lineno`;
/// with `python_fast:exception` enabled, the batch is committed at once and
/// that event names the type (for triggers).
pub fn push_exception(code_id: u32, lineno: i32, type_id: u32, type_name: &CStr) {
    let mark = tp::on(tp::EV_FAST_EXC);
    with_records(|r, t| {
        r.put(
            t,
            &[EXCEPTION << KIND_SHIFT | code_id, lineno as u32, type_id],
        );
        if mark {
            r.flush();
            tp::emit_fast_exception(type_name);
        }
    });
}
