//! `pyust report` over corrupted traces (see `crate::read::fuzz`): the
//! table, flame graph and timelines of whatever events the reader hands
//! over, or one line — never a panic. Through pyust's own reader only
//! (PYUST_REPORT_READER=pyust): libbabeltrace2's is another program's.

use proptest::prelude::*;

use super::{report, Options, Sort};
use crate::analyze::timeline::Limits;
use crate::read::fuzz::{change, corrupted, fixture, Change};

fn options(out: &std::path::Path) -> Options {
    Options {
        sort: Sort::Tottime,
        limit: 20,
        pid: None,
        tid: None,
        host: None,
        flamegraph: Some(out.with_extension("svg")),
        folded: Some(out.with_extension("folded")),
        perfetto: Some(out.with_extension("pftrace")),
        perfetto_json: Some(out.with_extension("json")),
        limits: Limits::default(),
    }
}

fn check(mode: &str, file: usize, changes: &[Change]) {
    std::env::set_var("PYUST_REPORT_READER", "pyust");
    let dir = corrupted(mode, file, changes);
    let opts = options(&dir.join("out"));
    let result = std::panic::catch_unwind(|| report(&dir, &opts, &mut || Ok(())));
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Err(_) => panic!("report panicked on {mode} file {file} with {changes:?}"),
        Ok(Err(why)) => assert!(!why.is_empty() && !why.contains('\n'), "{why:?}"),
        Ok(Ok(table)) => assert!(table.starts_with("pyust report: "), "{table}"),
    }
}

#[test]
fn the_fixtures_report() {
    for mode in ["readable", "fast"] {
        std::env::set_var("PYUST_REPORT_READER", "pyust");
        let out = std::env::temp_dir().join(format!("pyust-fixture-{}", std::process::id()));
        let table = report(&fixture(mode), &options(&out), &mut || Ok(())).unwrap();
        for ext in ["svg", "folded", "pftrace", "json"] {
            let _ = std::fs::remove_file(out.with_extension(ext));
        }
        assert!(table.contains("__main__.check"), "{mode}: {table}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_corrupt_trace_is_a_report_or_a_line(
        fast in any::<bool>(),
        file in 0usize..8,
        changes in proptest::collection::vec(change(), 1..4),
    ) {
        check(if fast { "fast" } else { "readable" }, file, &changes);
    }
}
