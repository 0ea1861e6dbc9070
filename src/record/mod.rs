//! Recording: from a call in the traced program to an LTTng event.
//!
//! - `control`: enabling, the watcher that arms the backend only while a
//!   session records, the launcher's `run`, `record`'s control socket,
//!   fork handling;
//! - `monitor` (CPython 3.12+, `sys.monitoring`) and `profile` (before:
//!   C profile and trace functions): the backends, which turn interpreter
//!   callbacks into calls of the hot path;
//! - `hook`: the hot path both share — per-thread nesting, names cached
//!   per code object and per C function, the emitters;
//! - `names`: a code object's qualified name and module, found once;
//! - `fast`: the fast mode's per-thread batches (format: `crate::format`);
//! - `forkwarn` (3.12+): CPython's fork-with-threads warning, not for
//!   LTTng-UST's threads or pyust's.
//!
//! Nothing here reads traces (`crate::read`) or analyses them.

mod cfuncs;
mod codes;
mod control;
mod fast;
#[cfg(Py_3_12)]
mod forkwarn;
pub mod hook;
#[cfg(Py_3_12)]
mod monitor;
mod names;
#[cfg(not(Py_3_12))]
mod profile;

pub use control::*;
#[cfg(all(Py_3_12, feature = "bench"))]
pub use monitor::bench_floor;
