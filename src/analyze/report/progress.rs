//! `report`'s progress bar (stderr, on a terminal only).

use std::path::Path;

/// `report`'s progress on stderr, only when it is a terminal: events read,
/// their rate, and the share of the trace's bytes behind the current
/// event — the packets that end before it, from LTTng's packet indexes.
pub(super) struct Progress {
    bar: indicatif::ProgressBar,
    /// (end of packet in clock cycles, bytes up to and including it).
    packets: Vec<(u64, u64)>,
    first_cycles: u64,
    started: std::time::Instant,
}

impl Progress {
    pub(super) fn new(trace: &Path) -> Option<Progress> {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let mut packets = Vec::new();
        let mut first_cycles = u64::MAX;
        index_files(trace, &mut |data| {
            // LTTng's CTF index: a big-endian header (magic, major, minor,
            // entry size), then per packet: offset, packet size (bits),
            // content size, timestamp begin, timestamp end, ...
            let word = |at: usize| u64::from_be_bytes(data[at..at + 8].try_into().unwrap());
            let half = |at: usize| u32::from_be_bytes(data[at..at + 4].try_into().unwrap());
            if data.len() < 16 || half(0) != 0xC1F1_DCC1 {
                return;
            }
            let entry = half(12) as usize;
            if entry < 40 {
                return;
            }
            let mut at = 16;
            while at + entry <= data.len() {
                first_cycles = first_cycles.min(word(at + 24));
                packets.push((word(at + 32), word(at + 8) / 8));
                at += entry;
            }
        });
        packets.sort_unstable();
        let mut total = 0;
        for p in &mut packets {
            total += p.1;
            p.1 = total;
        }
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(total),
            indicatif::ProgressDrawTarget::stderr(),
        );
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "pyust report: {msg} [{bar:24}] {percent}% of {total_bytes} ({elapsed})",
            )
            .ok()?
            .progress_chars("=> "),
        );
        Some(Progress {
            bar,
            packets,
            first_cycles,
            started: std::time::Instant::now(),
        })
    }

    pub(super) fn update(&mut self, events: u64, first_ns: Option<i64>, now_ns: i64) {
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-3);
        self.bar.set_message(format!(
            "{:.1} M events, {:.2} M/s",
            events as f64 / 1e6,
            events as f64 / elapsed / 1e6
        ));
        // The indexes count clock cycles (LTTng's clock: 1 GHz), the
        // events nanoseconds since the epoch: aligned on the first event.
        if let Some(first) = first_ns {
            let cycles = self
                .first_cycles
                .saturating_add((now_ns - first).max(0) as u64);
            let done = self.packets.partition_point(|&(end, _)| end <= cycles);
            let bytes = done.checked_sub(1).map_or(0, |i| self.packets[i].1);
            self.bar.set_position(bytes);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// Calls `each` with the contents of every CTF index file under `dir`.
pub(super) fn index_files(dir: &Path, each: &mut dyn FnMut(&[u8])) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            index_files(&path, each);
        } else if path.extension().is_some_and(|e| e == "idx") {
            if let Ok(data) = std::fs::read(&path) {
                each(&data);
            }
        }
    }
}
