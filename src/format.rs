//! The fast mode's record format, the one thing the recording side
//! (`record::fast` packs it) and the reading side (`read::fast` unpacks it)
//! share. Neither imports the other: both import this leaf.
//!
//! A `python_fast:batch` event (`src/tp/fast_tp.h`) carries one thread's
//! records as `data`, starting at `base` ns on LTTng's clock and lasting
//! `span` ns, or `ticks` in the recorder's own tick unit (the TSC or ns):
//! a record's offset maps onto LTTng's clock as `base + offset * span /
//! ticks`. Each record is two little-endian 32-bit words:
//!
//! ```text
//! word 0: offset in ticks from the batch's start
//! word 1: kind << KIND_SHIFT | id       (kind: CALL .. EXCEPTION)
//! ```
//!
//! and an `EXCEPTION` record is followed by two more words: the line
//! number, and the id of the exception's type. An id names a code object
//! or C function (or, for an exception's type, its qualified name); its
//! names come in a `python_fast:def` event of the same process, emitted on
//! the id's first use in each epoch. Id 0 is "no name" (a return).

/// Record kinds (the top 3 bits of a record's word).
pub const CALL: u32 = 0;
pub const RETURN: u32 = 1;
pub const C_CALL: u32 = 2;
pub const C_RETURN: u32 = 3;
pub const EXCEPTION: u32 = 4;
pub const KIND_SHIFT: u32 = 29;
/// The id's bits of a record's word.
pub const ID_MASK: u32 = (1 << KIND_SHIFT) - 1;

/// A batch whose first record is this old (ns) is committed: readers wait
/// about this long (and a margin) for other threads' batches.
pub const FLUSH_NS: u64 = 100_000_000;
/// How often definitions are re-emitted (ns): a recording that starts
/// while the program runs resolves every id after at most one epoch.
pub const EPOCH_NS: u64 = 1_000_000_000;
