//! Reading: from a trace folder or a live session to one stream of
//! `python:*` events in time order, whichever mode recorded them.
//!
//! - `traces`: finding the traces of a folder, and their hosts;
//! - `ctf`: pyust's own reader of LTTng-UST's CTF 1.8 traces (fast);
//! - `bt2`: libbabeltrace2, for anything else (CTF 2, live sessions);
//! - `fast`: the fast mode's batches unpacked into the same events;
//! - `event`: what both readers hand over.
//!
//! Nothing here knows the tracer (`crate::record`); the fast mode's record
//! format is the leaf `crate::format`.

mod bt2;
mod ctf;
mod event;
mod fast;
#[cfg(test)]
pub(crate) mod fuzz;
mod traces;

use std::path::Path;

pub use bt2::live_sessions;
pub use ctf::check as check_packets;
pub use event::{Discarded, Event, Kind, Message};
pub use fast::Stats;
pub use traces::{find_traces, host_name, metadata_hostname, trace_hosts};

use fast::Decoder;

/// Reads the traces under `trace`, handing `each` every message with the
/// fast mode's batches unpacked. LTTng-UST's traces go through pyust's own
/// reader, anything it does not understand through libbabeltrace2;
/// PYUST_REPORT_READER=babeltrace2 or =pyust picks one (the latter fails
/// where it cannot read).
pub fn read(
    trace: &Path,
    each: &mut dyn FnMut(Message<'_>) -> Result<(), String>,
) -> Result<Stats, String> {
    let mut decoder = Decoder::new();
    let mut unpacking = |message: Message<'_>| decoder.message(message, each);
    let choice = std::env::var("PYUST_REPORT_READER").unwrap_or_default();
    // Sizes no packet can have, in one line (libbabeltrace2 would abort).
    ctf::check(trace)?;
    if choice == "babeltrace2" {
        bt2::read(trace, &mut unpacking)?;
    } else if let Some(why) = ctf::read(trace, &mut unpacking)? {
        if choice == "pyust" {
            return Err(format!(
                "pyust's trace reader cannot read {}: {why}",
                trace.display()
            ));
        }
        bt2::read(trace, &mut unpacking)?;
    }
    decoder.release(i64::MAX, each)?;
    Ok(decoder.stats)
}

/// Reads live sessions (`bt2::live`) as `read` reads a trace folder.
pub fn live(
    urls: &[String],
    each: &mut dyn FnMut(Message<'_>) -> Result<(), String>,
    pace: &mut dyn FnMut(bool) -> Result<bool, String>,
) -> Result<Stats, String> {
    let mut decoder = Decoder::new();
    let mut unpacking = |message: Message<'_>| decoder.message(message, each);
    bt2::live(urls, &mut unpacking, pace)?;
    decoder.release(i64::MAX, each)?;
    Ok(decoder.stats)
}
