//! The trace reader fuzzed: real traces (`tests/data/ctf/`, one per
//! recording mode, of `tests/scenarios/exception.py`) corrupted at random —
//! bytes overwritten, integers of the packet header set to extremes,
//! files cut short or emptied, the metadata's text changed — must give
//! events or one line saying what is wrong, never a panic, an abort (an
//! allocation of a size read from the trace) or a hang.
//!
//! `PROPTEST_CASES` sets the number of traces tried (default 256, about a
//! second); the regressions below are traces that once broke the reader.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use proptest::prelude::*;

use super::fast::Decoder;
use super::Message;

pub(crate) fn fixture(mode: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/ctf")
        .join(mode)
}

/// What a reading of `dir` gave: the events, or the reader's one line.
fn read_own(dir: &Path) -> Result<usize, String> {
    let mut decoder = Decoder::new();
    let mut events = 0;
    let mut each = |m: Message<'_>| {
        if let Message::Event(_) = m {
            events += 1;
        }
        Ok(())
    };
    let mut unpacking = |message: Message<'_>| decoder.message(message, &mut each);
    if let Some(why) = super::ctf::read(dir, &mut unpacking)? {
        return Err(why);
    }
    decoder.release(i64::MAX, &mut each)?;
    Ok(events)
}

#[derive(Debug, Clone)]
pub(crate) enum Change {
    /// One byte at this offset (modulo the file's size).
    Byte(usize, u8),
    /// A little-endian u64 at this 8-byte-aligned offset (the packet
    /// header and context are made of them).
    Word(usize, u64),
    /// The file cut at this offset.
    Cut(usize),
}

pub(crate) fn change() -> impl Strategy<Value = Change> {
    let word = prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(1 << 63),
        Just(1 << 35),
        Just(u32::MAX as u64),
        any::<u64>(),
        0u64..100_000,
    ];
    prop_oneof![
        (0usize..8192, any::<u8>()).prop_map(|(o, b)| Change::Byte(o, b)),
        // Mostly within the first packet's header and context (64 bytes).
        (prop_oneof![0usize..12, 0usize..1024], word).prop_map(|(o, w)| Change::Word(o * 8, w)),
        (0usize..8192).prop_map(Change::Cut),
    ]
}

static CASE: AtomicU32 = AtomicU32::new(0);

/// A copy of the `mode` fixture with `changes` made to its `file`-th file
/// (sorted by name: the metadata first).
pub(crate) fn corrupted(mode: &str, file: usize, changes: &[Change]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "pyust-fuzz-{}-{}",
        std::process::id(),
        CASE.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut names: Vec<_> = std::fs::read_dir(fixture(mode))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    let target = file % names.len();
    for (i, name) in names.iter().enumerate() {
        let mut data = std::fs::read(fixture(mode).join(name)).unwrap();
        if i == target {
            for c in changes {
                match *c {
                    Change::Byte(o, b) if !data.is_empty() => {
                        let n = data.len();
                        data[o % n] = b;
                    }
                    Change::Word(o, w) if o + 8 <= data.len() => {
                        data[o..o + 8].copy_from_slice(&w.to_le_bytes());
                    }
                    Change::Cut(o) => data.truncate(o.min(data.len())),
                    _ => {}
                }
            }
        }
        std::fs::write(dir.join(name), data).unwrap();
    }
    dir
}

fn check(mode: &str, file: usize, changes: &[Change]) {
    let dir = corrupted(mode, file, changes);
    let result = std::panic::catch_unwind(|| read_own(&dir));
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Err(_) => panic!("the reader panicked on {mode} file {file} with {changes:?}"),
        Ok(Err(why)) => assert!(
            !why.is_empty() && !why.contains('\n'),
            "not one line: {why:?}"
        ),
        Ok(Ok(_)) => {}
    }
}

#[test]
fn the_fixtures_read_whole() {
    // What the fuzzing starts from: 12 events in either mode.
    assert_eq!(read_own(&fixture("readable")), Ok(12));
    assert_eq!(read_own(&fixture("fast")), Ok(12));
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_corrupt_trace_is_a_line_not_a_crash(
        fast in any::<bool>(),
        file in 0usize..8,
        changes in proptest::collection::vec(change(), 1..4),
    ) {
        check(if fast { "fast" } else { "readable" }, file, &changes);
    }
}

/// Traces that broke the reader, each found by the fuzzing above or by
/// hand (issue: a packet_size of 2^63 aborted on its allocation).
#[test]
fn regressions() {
    for (mode, file, changes) in [
        // packet_size (bits, at byte 56) = 2^63: 2^60 bytes asked.
        ("readable", 1, vec![Change::Word(56, 1 << 63)]),
        ("fast", 3, vec![Change::Word(56, u64::MAX)]),
        // content_size (at 48) below the header's own size.
        ("readable", 1, vec![Change::Word(48, 8)]),
        ("readable", 2, vec![Change::Word(48, 0)]),
        // A zero packet_size (a reader that seeks back by it loops).
        (
            "readable",
            1,
            vec![Change::Word(56, 0), Change::Word(48, 0)],
        ),
    ] {
        check(mode, file, &changes);
    }
}
