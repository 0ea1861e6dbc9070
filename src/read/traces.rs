//! Finding the traces in a folder and the hosts that recorded them: a
//! folder may hold one trace per buffer scheme and bitness (LTTng's
//! per-UID and per-PID layouts) or, from a relay daemon, one per host.

use std::path::{Path, PathBuf};

/// Host names, numbered in order of appearance (0: none); never
/// forgotten, and few (one per machine a relay received from).
static HOSTS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// The number of host name `name`.
pub fn intern_host(name: &str) -> u32 {
    if name.is_empty() {
        return 0;
    }
    let mut hosts = HOSTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = hosts.iter().position(|h| h == name) {
        return i as u32 + 1;
    }
    hosts.push(name.to_owned());
    hosts.len() as u32
}

/// The name of host number `host` ("" for 0).
pub fn host_name(host: u32) -> String {
    let hosts = HOSTS.lock().unwrap_or_else(|e| e.into_inner());
    match host {
        0 => String::new(),
        n => hosts.get(n as usize - 1).cloned().unwrap_or_default(),
    }
}

/// The host name a trace's metadata gives (its `env` block's
/// `hostname`), "" when it says none.
pub fn metadata_hostname(dir: &Path) -> String {
    std::fs::read(dir.join("metadata"))
        .map(|data| hostname_in(&data))
        .unwrap_or_default()
}

/// The `hostname` of a metadata file's bytes, "" when it says none.
pub fn hostname_in(data: &[u8]) -> String {
    // CTF 1.8: `hostname = "vm";`, CTF 2 (JSON): `"hostname":"vm"`.
    let Some(at) = memchr::memmem::find(data, b"hostname") else {
        return String::new();
    };
    let rest = &data[at + b"hostname".len()..];
    let Some(open) = rest
        .iter()
        .position(|&b| !matches!(b, b'"' | b' ' | b'=' | b':'))
    else {
        return String::new();
    };
    if open == 0 || rest[open - 1] != b'"' {
        return String::new();
    }
    let rest = &rest[open..];
    let end = memchr::memchr(b'"', rest).unwrap_or(0);
    String::from_utf8_lossy(&rest[..end]).into_owned()
}

/// The host names of the traces under `root`, sorted, without repeats.
pub fn trace_hosts(root: &Path) -> Vec<String> {
    let mut dirs = Vec::new();
    find_traces(root, &mut dirs, 0);
    let mut hosts: Vec<String> = dirs
        .iter()
        .map(|d| metadata_hostname(d))
        .filter(|h| !h.is_empty())
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

/// Trace directories under `dir` (those with a `metadata` file), the
/// same for both of `report`'s readers.
pub fn find_traces(dir: &Path, out: &mut Vec<PathBuf>, depth: u32) {
    if dir.join("metadata").is_file() {
        out.push(dir.to_path_buf());
        return;
    }
    if depth > 8 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut dirs: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for d in dirs {
        find_traces(&d, out, depth + 1);
    }
}
