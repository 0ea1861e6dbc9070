//! Reading CTF traces through libbabeltrace2 (the library behind the
//! `babeltrace2` command), for `pyust report`.
//!
//! The library is loaded with `dlopen` on first use, not linked: importing
//! the tracer never needs it, and a machine without it gets one clear
//! error from `pyust report` alone. The graph is the one `babeltrace2`
//! builds: one `source.ctf.fs` component per trace directory, a
//! `filter.utils.muxer` that merges their streams in time order, and a
//! simple sink whose consume function hands each message to Rust. Messages
//! are borrowed for the duration of the callback and released after it,
//! so memory stays bounded by babeltrace2's own buffers.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::Path;

/// Opaque babeltrace2 objects (only ever behind pointers).
type Obj = c_void;

/// A NUL-terminated literal as a C string pointer.
macro_rules! cstr {
    ($s:literal) => {
        concat!($s, "\0").as_ptr().cast::<c_char>()
    };
}

// The constants of babeltrace2 2.0's API (babeltrace2/*.h).
const BT_FUNC_STATUS_OK: c_int = 0;
const BT_FUNC_STATUS_END: c_int = 1;
const BT_FUNC_STATUS_ERROR: c_int = -1;
const BT_FUNC_STATUS_AGAIN: c_int = 11;
const BT_VALUE_TYPE_STRING: c_int = 1 << 6;
const BT_VALUE_TYPE_UNSIGNED_INTEGER: c_int = (1 << 3) | (1 << 2);
const BT_VALUE_TYPE_SIGNED_INTEGER: c_int = (1 << 4) | (1 << 2);
const BT_LOGGING_LEVEL_NONE: c_int = 0xff;
const BT_MESSAGE_TYPE_EVENT: c_int = 1 << 2;
const BT_MESSAGE_TYPE_DISCARDED_EVENTS: c_int = 1 << 5;
const BT_PROPERTY_AVAILABILITY_AVAILABLE: c_int = 1;
const BT_FIELD_CLASS_TYPE_INTEGER: u64 = 1 << 2;
const BT_FIELD_CLASS_TYPE_SIGNED_INTEGER: u64 = (1 << 4) | BT_FIELD_CLASS_TYPE_INTEGER;
const BT_FIELD_CLASS_TYPE_STRING: u64 = 1 << 9;
const BT_FIELD_CLASS_TYPE_ARRAY: u64 = 1 << 11;

type InitFn = unsafe extern "C" fn(*mut Obj, *mut c_void) -> c_int;
type ConsumeFn = unsafe extern "C" fn(*mut Obj, *mut c_void) -> c_int;
type FinalizeFn = unsafe extern "C" fn(*mut c_void);

/// Declares the libbabeltrace2 functions used, as a table of function
/// pointers resolved by `dlsym`.
macro_rules! api {
    ($($name:ident: fn($($arg:ty),*) $(-> $ret:ty)?;)*) => {
        #[allow(non_snake_case)]
        struct Api {
            $($name: unsafe extern "C" fn($($arg),*) $(-> $ret)?,)*
        }

        impl Api {
            /// SAFETY: `lib` is a handle of libbabeltrace2.so.0 from dlopen;
            /// each symbol has the C signature declared here (babeltrace2
            /// 2.0's ABI, stable across its 2.x releases).
            unsafe fn load(lib: *mut c_void) -> Result<Api, String> {
// SAFETY: the caller upholds this function's contract (see its doc).
unsafe {
                Ok(Api {
                    $($name: {
                        let sym = dlsym(lib, concat!(stringify!($name), "\0").as_ptr().cast());
                        if sym.is_null() {
                            return Err(format!("libbabeltrace2 has no {}", stringify!($name)));
                        }
                        std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($arg),*) $(-> $ret)?>(sym)
                    },)*
                })
            }
}
        }
    };
}

api! {
    bt_plugin_find: fn(*const c_char, c_int, c_int, c_int, c_int, c_int, *mut *const Obj) -> c_int;
    bt_plugin_borrow_source_component_class_by_name_const: fn(*const Obj, *const c_char) -> *const Obj;
    bt_plugin_borrow_filter_component_class_by_name_const: fn(*const Obj, *const c_char) -> *const Obj;
    bt_plugin_put_ref: fn(*const Obj);
    bt_graph_create: fn(u64) -> *mut Obj;
    bt_graph_put_ref: fn(*const Obj);
    bt_graph_add_source_component: fn(*mut Obj, *const Obj, *const c_char, *const Obj, c_int, *mut *const Obj) -> c_int;
    bt_graph_add_filter_component: fn(*mut Obj, *const Obj, *const c_char, *const Obj, c_int, *mut *const Obj) -> c_int;
    bt_graph_add_simple_sink_component: fn(*mut Obj, *const c_char, Option<InitFn>, ConsumeFn, Option<FinalizeFn>, *mut c_void, *mut *const Obj) -> c_int;
    bt_graph_connect_ports: fn(*mut Obj, *const Obj, *const Obj, *mut *const Obj) -> c_int;
    bt_graph_run: fn(*mut Obj) -> c_int;
    bt_graph_run_once: fn(*mut Obj) -> c_int;
    bt_query_executor_create: fn(*const Obj, *const c_char, *const Obj) -> *mut Obj;
    bt_query_executor_query: fn(*mut Obj, *mut *const Obj) -> c_int;
    bt_query_executor_put_ref: fn(*const Obj);
    bt_value_map_insert_string_entry: fn(*mut Obj, *const c_char, *const c_char) -> c_int;
    bt_value_map_borrow_entry_value_const: fn(*const Obj, *const c_char) -> *const Obj;
    bt_value_array_get_length: fn(*const Obj) -> u64;
    bt_value_array_borrow_element_by_index_const: fn(*const Obj, u64) -> *const Obj;
    bt_value_get_type: fn(*const Obj) -> c_int;
    bt_value_integer_unsigned_get: fn(*const Obj) -> u64;
    bt_value_integer_signed_get: fn(*const Obj) -> i64;
    bt_component_source_get_output_port_count: fn(*const Obj) -> u64;
    bt_component_source_borrow_output_port_by_index_const: fn(*const Obj, u64) -> *const Obj;
    bt_component_filter_get_input_port_count: fn(*const Obj) -> u64;
    bt_component_filter_borrow_input_port_by_index_const: fn(*const Obj, u64) -> *const Obj;
    bt_component_filter_borrow_output_port_by_index_const: fn(*const Obj, u64) -> *const Obj;
    bt_component_sink_borrow_input_port_by_index_const: fn(*const Obj, u64) -> *const Obj;
    bt_port_is_connected: fn(*const Obj) -> c_int;
    bt_value_map_create: fn() -> *mut Obj;
    bt_value_array_create: fn() -> *mut Obj;
    bt_value_array_append_string_element: fn(*mut Obj, *const c_char) -> c_int;
    bt_value_map_insert_entry: fn(*mut Obj, *const c_char, *mut Obj) -> c_int;
    bt_value_put_ref: fn(*const Obj);
    bt_message_iterator_next: fn(*mut Obj, *mut *const *const Obj, *mut u64) -> c_int;
    bt_message_get_type: fn(*const Obj) -> c_int;
    bt_message_put_ref: fn(*const Obj);
    bt_message_event_borrow_event_const: fn(*const Obj) -> *const Obj;
    bt_message_event_borrow_default_clock_snapshot_const: fn(*const Obj) -> *const Obj;
    bt_clock_snapshot_get_ns_from_origin: fn(*const Obj, *mut i64) -> c_int;
    bt_event_borrow_class_const: fn(*const Obj) -> *const Obj;
    bt_event_borrow_payload_field_const: fn(*const Obj) -> *const Obj;
    bt_event_borrow_common_context_field_const: fn(*const Obj) -> *const Obj;
    bt_event_borrow_stream_const: fn(*const Obj) -> *const Obj;
    bt_event_class_get_name: fn(*const Obj) -> *const c_char;
    bt_event_class_borrow_stream_class_const: fn(*const Obj) -> *const Obj;
    bt_event_class_borrow_payload_field_class_const: fn(*const Obj) -> *const Obj;
    bt_stream_class_borrow_event_common_context_field_class_const: fn(*const Obj) -> *const Obj;
    bt_stream_class_discarded_events_have_default_clock_snapshots: fn(*const Obj) -> c_int;
    bt_stream_borrow_class_const: fn(*const Obj) -> *const Obj;
    bt_stream_get_name: fn(*const Obj) -> *const c_char;
    bt_stream_borrow_trace_const: fn(*const Obj) -> *const Obj;
    bt_trace_borrow_environment_entry_value_by_name_const: fn(*const Obj, *const c_char) -> *const Obj;
    bt_value_string_get: fn(*const Obj) -> *const c_char;
    bt_field_class_get_type: fn(*const Obj) -> u64;
    bt_field_class_structure_get_member_count: fn(*const Obj) -> u64;
    bt_field_class_structure_borrow_member_by_index_const: fn(*const Obj, u64) -> *const Obj;
    bt_field_class_structure_member_get_name: fn(*const Obj) -> *const c_char;
    bt_field_class_structure_member_borrow_field_class_const: fn(*const Obj) -> *const Obj;
    bt_field_structure_borrow_member_field_by_index_const: fn(*const Obj, u64) -> *const Obj;
    bt_field_string_get_value: fn(*const Obj) -> *const c_char;
    bt_field_string_get_length: fn(*const Obj) -> u64;
    bt_field_integer_signed_get_value: fn(*const Obj) -> i64;
    bt_field_integer_unsigned_get_value: fn(*const Obj) -> u64;
    bt_field_array_get_length: fn(*const Obj) -> u64;
    bt_field_array_borrow_element_field_by_index_const: fn(*const Obj, u64) -> *const Obj;
    bt_clock_snapshot_get_value: fn(*const Obj) -> u64;
    bt_message_discarded_events_get_count: fn(*const Obj, *mut u64) -> c_int;
    bt_message_discarded_events_borrow_stream_const: fn(*const Obj) -> *const Obj;
    bt_message_discarded_events_borrow_beginning_default_clock_snapshot_const: fn(*const Obj) -> *const Obj;
    bt_message_discarded_events_borrow_end_default_clock_snapshot_const: fn(*const Obj) -> *const Obj;
    bt_current_thread_take_error: fn() -> *const Obj;
    bt_error_get_cause_count: fn(*const Obj) -> u64;
    bt_error_borrow_cause_by_index: fn(*const Obj, u64) -> *const Obj;
    bt_error_cause_get_message: fn(*const Obj) -> *const c_char;
    bt_error_release: fn(*const Obj);
}

#[link(name = "dl")]
extern "C" {
    fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void;
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    fn dlerror() -> *const c_char;
}
const RTLD_NOW: c_int = 2;

/// The library's functions, loaded once per process (never unloaded).
fn api() -> Result<&'static Api, String> {
    static API: std::sync::OnceLock<Result<Api, String>> = std::sync::OnceLock::new();
    API.get_or_init(|| {
        // SAFETY: dlopen/dlerror/dlsym with NUL-terminated names; the handle
        // stays open for the life of the process.
        unsafe {
            let lib = dlopen(cstr!("libbabeltrace2.so.0"), RTLD_NOW);
            if lib.is_null() {
                let why = dlerror();
                let why = if why.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr(why).to_string_lossy().into_owned()
                };
                return Err(format!(
                    "cannot load libbabeltrace2 ({why}); install babeltrace2 (apt-get install babeltrace2)"
                ));
            }
            Api::load(lib)
        }
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// What a `python:*` event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Call,
    Return,
    CCall,
    CReturn,
    Exception,
    /// `python_fast:def`: the names of an id.
    Def,
    /// `python_fast:batch`: packed events of one thread.
    Batch,
}

impl Kind {
    /// The kind of the event named `name` (`python:call`, ...), if any.
    pub fn from_event_name(name: &[u8]) -> Option<Kind> {
        match name {
            b"python:call" => Some(Kind::Call),
            b"python:return" => Some(Kind::Return),
            b"python:c_call" => Some(Kind::CCall),
            b"python:c_return" => Some(Kind::CReturn),
            b"python:exception" => Some(Kind::Exception),
            b"python_fast:def" => Some(Kind::Def),
            b"python_fast:batch" => Some(Kind::Batch),
            _ => None,
        }
    }
}

/// One `python:*` event, borrowed from babeltrace2 for the callback.
/// Absent fields read as "" or 0.
pub struct Event<'a> {
    pub kind: Kind,
    /// The host that recorded it (`host_name`; 0: not said).
    pub host: u32,
    /// Nanoseconds from the clock's origin.
    pub ns: i64,
    pub vpid: i64,
    pub vtid: i64,
    pub procname: &'a str,
    /// The data stream (per CPU and channel) the event was recorded in.
    pub stream: usize,
    pub co_name: &'a str,
    pub co_qualname: &'a str,
    pub module: &'a str,
    pub co_filename: &'a str,
    /// `co_firstlineno` of a call, `lineno` of an exception.
    pub line: i64,
    pub exc_type: &'a str,
    /// A definition's id.
    pub id: i64,
    /// A batch's base time, in ns from the clock's origin (as `ns`), and
    /// its records; `vtid` is then the batch's `tid` field.
    pub base_ns: i64,
    pub data: &'a [u8],
    /// A batch's length, in ns and in the ticks its records count.
    pub span: i64,
    pub ticks: i64,
}

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

/// Events the tracer recorded but LTTng could not keep (full buffers).
pub struct Discarded {
    pub count: u64,
    pub stream: usize,
    /// The data stream's name (its file in the trace).
    pub stream_name: String,
    /// The span they were lost in, when the trace says.
    pub begin_ns: Option<i64>,
    pub end_ns: Option<i64>,
}

pub enum Message<'a> {
    Event(Event<'a>),
    Discarded(Discarded),
    /// An event of another provider, or kernel event.
    Other,
}

/// Where the fields of one event class are, found once per class.
struct ClassInfo {
    kind: Option<Kind>,
    payload: Fields,
    context: Fields,
}

/// Where the members read are in a structure field: for each name of
/// its list, (index, integer is signed), or None when absent.
#[derive(Default)]
struct Fields {
    slots: [Option<(u64, bool)>; 13],
}

// Positions in `PAYLOAD_NAMES` and `CONTEXT_NAMES`.
const CO_NAME: usize = 0;
const CO_QUALNAME: usize = 1;
const MODULE: usize = 2;
const CO_FILENAME: usize = 3;
const CO_FIRSTLINENO: usize = 4;
const LINENO: usize = 5;
const EXC_TYPE: usize = 6;
const ID: usize = 7;
const TID: usize = 8;
const BASE: usize = 9;
const DATA: usize = 10;
const SPAN: usize = 11;
const TICKS: usize = 12;
const VPID: usize = 0;
const VTID: usize = 1;
const PROCNAME: usize = 2;

const PAYLOAD_NAMES: [&str; 13] = [
    "co_name",
    "co_qualname",
    "module",
    "co_filename",
    "co_firstlineno",
    "lineno",
    "exc_type",
    "id",
    "tid",
    "base",
    "data",
    "span",
    "ticks",
];
const CONTEXT_NAMES: [&str; 3] = ["vpid", "vtid", "procname"];

struct Sink<'f> {
    api: &'static Api,
    iterator: *mut Obj,
    classes: HashMap<usize, ClassInfo>,
    /// The host of each stream seen (by its address).
    hosts: HashMap<usize, u32>,
    callback: &'f mut dyn FnMut(Message<'_>) -> Result<(), String>,
    error: Option<String>,
    /// A batch's records, copied out of babeltrace2's fields.
    data: Vec<u8>,
}

/// Reads every trace under `root` (each directory holding a `metadata`
/// file: LTTng writes one per buffer scheme and bitness, and one for the
/// kernel) in time order, handing each message to `callback`. Stops at
/// the callback's first error.
pub fn read(
    root: &Path,
    callback: &mut dyn FnMut(Message<'_>) -> Result<(), String>,
) -> Result<(), String> {
    let api = api()?;
    let mut traces = Vec::new();
    find_traces(root, &mut traces, 0);
    if traces.is_empty() {
        return Err(format!(
            "{}: no CTF trace there (no metadata file)",
            root.display()
        ));
    }
    // babeltrace2 aborts the process on an empty metadata file: what a
    // trace cut short before its metadata was written leaves (a relay
    // daemon killed during the run).
    if let Some(empty) = traces
        .iter()
        .find(|dir| std::fs::metadata(dir.join("metadata")).is_ok_and(|m| m.len() == 0))
    {
        return Err(format!(
            "{}: the metadata file is empty (the trace was cut short before its metadata \
             was written): nothing in it can be read",
            empty.display()
        ));
    }
    let inputs: Vec<CString> = traces
        .iter()
        .map(|dir| {
            CString::new(dir.as_os_str().as_encoded_bytes())
                .map_err(|_| format!("{}: bad path", dir.display()))
        })
        .collect::<Result<_, _>>()?;
    run(api, "fs", &[], &inputs, callback, None)
}

/// Reads the live sessions at `urls` (`net://RELAY:LIVE_PORT/host/HOST/
/// SESSION`, as `live_sessions` gives them) through babeltrace2's
/// `src.ctf.lttng-live`, in time order, until they all end. `pace` is
/// called between reads (with `true` when no data was there and the
/// reading paused a little); its `Ok(true)` stops the reading, its error
/// stops it with that error.
pub fn live(
    urls: &[String],
    callback: &mut dyn FnMut(Message<'_>) -> Result<(), String>,
    pace: &mut dyn FnMut(bool) -> Result<bool, String>,
) -> Result<(), String> {
    let api = api()?;
    let inputs: Vec<CString> = urls
        .iter()
        .map(|u| CString::new(u.as_str()).map_err(|_| format!("{u}: bad URL")))
        .collect::<Result<_, _>>()?;
    // A session gone from the relay (destroyed, or never there) ends its
    // source rather than being waited for.
    run(
        api,
        "lttng-live",
        &[("session-not-found-action", "end")],
        &inputs,
        callback,
        Some(pace),
    )
}

/// One live session a relay daemon serves.
pub struct LiveSession {
    /// What `live` attaches to.
    pub url: String,
    pub hostname: String,
    pub name: String,
    pub streams: u64,
    pub clients: u64,
}

/// The sessions the relay daemon's live port at `url` (`net://HOST:PORT`)
/// serves: babeltrace2's `sessions` query of `src.ctf.lttng-live`.
pub fn live_sessions(url: &str) -> Result<Vec<LiveSession>, String> {
    let api = api()?;
    let c_url = CString::new(url).map_err(|_| format!("{url}: bad URL"))?;
    // SAFETY: every object taken is put back (the guards); the result is
    // read before the executor that holds it is put.
    unsafe {
        let ctf = Plugin::find(api, "ctf")?;
        let class =
            (api.bt_plugin_borrow_source_component_class_by_name_const)(ctf.1, cstr!("lttng-live"));
        if class.is_null() {
            return Err("babeltrace2: no source.ctf.lttng-live component".into());
        }
        let params = Value(api, (api.bt_value_map_create)());
        (api.bt_value_map_insert_string_entry)(params.1, cstr!("url"), c_url.as_ptr());
        // A source component class is a component class (the C API's
        // upcast is a plain pointer cast).
        let executor = (api.bt_query_executor_create)(class, cstr!("sessions"), params.1);
        if executor.is_null() {
            return Err(take_error(api, "cannot query the relay daemon"));
        }
        let executor = Executor(api, executor);
        let mut result: *const Obj = std::ptr::null();
        let mut tries = 0;
        loop {
            match (api.bt_query_executor_query)(executor.1, &mut result) {
                BT_FUNC_STATUS_OK => break,
                BT_FUNC_STATUS_AGAIN if tries < 50 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                _ => {
                    return Err(take_error(
                        api,
                        &format!("cannot list the sessions at {url}"),
                    ))
                }
            }
        }
        let result = Value(api, result.cast_mut());
        let get_str = |map: *const Obj, key: *const c_char| -> String {
            let v = (api.bt_value_map_borrow_entry_value_const)(map, key);
            if v.is_null() || (api.bt_value_get_type)(v) != BT_VALUE_TYPE_STRING {
                return String::new();
            }
            CStr::from_ptr((api.bt_value_string_get)(v))
                .to_string_lossy()
                .into_owned()
        };
        let get_int = |map: *const Obj, key: *const c_char| -> u64 {
            let v = (api.bt_value_map_borrow_entry_value_const)(map, key);
            if v.is_null() {
                return 0;
            }
            match (api.bt_value_get_type)(v) {
                BT_VALUE_TYPE_UNSIGNED_INTEGER => (api.bt_value_integer_unsigned_get)(v),
                BT_VALUE_TYPE_SIGNED_INTEGER => (api.bt_value_integer_signed_get)(v) as u64,
                _ => 0,
            }
        };
        let mut sessions = Vec::new();
        for i in 0..(api.bt_value_array_get_length)(result.1) {
            let map = (api.bt_value_array_borrow_element_by_index_const)(result.1, i);
            sessions.push(LiveSession {
                url: get_str(map, cstr!("url")),
                hostname: get_str(map, cstr!("target-hostname")),
                name: get_str(map, cstr!("session-name")),
                streams: get_int(map, cstr!("stream-count")),
                clients: get_int(map, cstr!("client-count")),
            });
        }
        Ok(sessions)
    }
}

/// Builds and runs babeltrace2's graph: one source of class `ctf.<class>`
/// per input (its `inputs` parameter, plus `params`), a
/// `filter.utils.muxer` that merges their streams in time order, and the
/// sink handing each message to `callback`. With `pace`, the graph runs
/// step by step (a live source says "again" when it has nothing yet).
fn run(
    api: &'static Api,
    class: &str,
    params: &[(&str, &str)],
    inputs: &[CString],
    callback: &mut dyn FnMut(Message<'_>) -> Result<(), String>,
    mut pace: Option<&mut dyn FnMut(bool) -> Result<bool, String>>,
) -> Result<(), String> {
    let mut sink = Sink {
        api,
        iterator: std::ptr::null_mut(),
        classes: HashMap::new(),
        hosts: HashMap::new(),
        callback,
        error: None,
        data: Vec::new(),
    };
    let class_name = CString::new(class).expect("no NUL");
    let params: Vec<(CString, CString)> = params
        .iter()
        .map(|(k, v)| {
            (
                CString::new(*k).expect("no NUL"),
                CString::new(*v).expect("no NUL"),
            )
        })
        .collect();
    // SAFETY: the graph below is built and run on this thread; every
    // object taken is put back before returning (`Graph` drops it on any
    // path); `sink` outlives `bt_graph_run`, the only caller of its
    // callbacks.
    unsafe {
        let graph = Graph(api, (api.bt_graph_create)(0));
        if graph.1.is_null() {
            return Err("babeltrace2: cannot create a graph".into());
        }
        let ctf = Plugin::find(api, "ctf")?;
        let utils = Plugin::find(api, "utils")?;
        let source_class =
            (api.bt_plugin_borrow_source_component_class_by_name_const)(ctf.1, class_name.as_ptr());
        let muxer_class =
            (api.bt_plugin_borrow_filter_component_class_by_name_const)(utils.1, cstr!("muxer"));
        if source_class.is_null() || muxer_class.is_null() {
            return Err(format!(
                "babeltrace2: no source.ctf.{class} or filter.utils.muxer component"
            ));
        }
        let mut muxer = std::ptr::null();
        if (api.bt_graph_add_filter_component)(
            graph.1,
            muxer_class,
            cstr!("muxer"),
            std::ptr::null(),
            BT_LOGGING_LEVEL_NONE,
            &mut muxer,
        ) != BT_FUNC_STATUS_OK
        {
            return Err(take_error(api, "cannot add the muxer"));
        }
        for (i, input) in inputs.iter().enumerate() {
            let map = Value(api, (api.bt_value_map_create)());
            let list = (api.bt_value_array_create)();
            (api.bt_value_array_append_string_element)(list, input.as_ptr());
            (api.bt_value_map_insert_entry)(map.1, cstr!("inputs"), list);
            (api.bt_value_put_ref)(list);
            for (key, value) in &params {
                (api.bt_value_map_insert_string_entry)(map.1, key.as_ptr(), value.as_ptr());
            }
            let name = CString::new(format!("source{i}")).expect("no NUL");
            let mut source = std::ptr::null();
            if (api.bt_graph_add_source_component)(
                graph.1,
                source_class,
                name.as_ptr(),
                map.1,
                BT_LOGGING_LEVEL_NONE,
                &mut source,
            ) != BT_FUNC_STATUS_OK
            {
                return Err(take_error(
                    api,
                    &format!("cannot read {}", input.to_string_lossy()),
                ));
            }
            for port in 0..(api.bt_component_source_get_output_port_count)(source) {
                let out = (api.bt_component_source_borrow_output_port_by_index_const)(source, port);
                // The muxer always has one free input port: its last.
                let count = (api.bt_component_filter_get_input_port_count)(muxer);
                let input =
                    (api.bt_component_filter_borrow_input_port_by_index_const)(muxer, count - 1);
                if (api.bt_port_is_connected)(input) != 0
                    || (api.bt_graph_connect_ports)(graph.1, out, input, std::ptr::null_mut())
                        != BT_FUNC_STATUS_OK
                {
                    return Err(take_error(api, "cannot connect the trace's streams"));
                }
            }
        }
        let mut sink_component = std::ptr::null();
        if (api.bt_graph_add_simple_sink_component)(
            graph.1,
            cstr!("pyust-report"),
            Some(sink_init),
            sink_consume,
            None,
            (&mut sink as *mut Sink).cast(),
            &mut sink_component,
        ) != BT_FUNC_STATUS_OK
        {
            return Err(take_error(api, "cannot add the reader"));
        }
        let out = (api.bt_component_filter_borrow_output_port_by_index_const)(muxer, 0);
        let input = (api.bt_component_sink_borrow_input_port_by_index_const)(sink_component, 0);
        if (api.bt_graph_connect_ports)(graph.1, out, input, std::ptr::null_mut())
            != BT_FUNC_STATUS_OK
        {
            return Err(take_error(api, "cannot connect the reader"));
        }
        let status = match &mut pace {
            None => (api.bt_graph_run)(graph.1),
            Some(pace) => loop {
                let status = (api.bt_graph_run_once)(graph.1);
                let idle = status == BT_FUNC_STATUS_AGAIN;
                if idle {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                } else if status != BT_FUNC_STATUS_OK {
                    break status;
                }
                match pace(idle) {
                    Ok(false) => {}
                    Ok(true) => break BT_FUNC_STATUS_END,
                    Err(err) => {
                        sink.error = Some(err);
                        break BT_FUNC_STATUS_ERROR;
                    }
                }
            },
        };
        if let Some(err) = sink.error.take() {
            // Our own error first: babeltrace2's, if any, is then only
            // its echo (none when `pace` stopped the reading).
            let echo = (api.bt_current_thread_take_error)();
            if !echo.is_null() {
                (api.bt_error_release)(echo);
            }
            return Err(err);
        }
        if status != BT_FUNC_STATUS_OK && status != BT_FUNC_STATUS_END {
            return Err(take_error(api, "cannot read the trace"));
        }
    }
    Ok(())
}

/// Trace directories under `dir` (those with a `metadata` file), the
/// same for both of `report`'s readers.
pub(crate) fn find_traces(dir: &Path, out: &mut Vec<std::path::PathBuf>, depth: u32) {
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

/// The current thread's babeltrace2 error, as one line after `what`.
unsafe fn take_error(api: &Api, what: &str) -> String {
    // SAFETY: the caller upholds this function's contract (see its doc).
    unsafe {
        let error = (api.bt_current_thread_take_error)();
        if error.is_null() {
            return format!("babeltrace2: {what}");
        }
        let mut causes = Vec::new();
        for i in 0..(api.bt_error_get_cause_count)(error) {
            let cause = (api.bt_error_borrow_cause_by_index)(error, i);
            let message = (api.bt_error_cause_get_message)(cause);
            if !message.is_null() {
                causes.push(CStr::from_ptr(message).to_string_lossy().replace('\n', " "));
            }
        }
        (api.bt_error_release)(error);
        // The first cause is the deepest one (the actual reason).
        match causes.first() {
            Some(cause) => format!("babeltrace2: {what}: {cause}"),
            None => format!("babeltrace2: {what}"),
        }
    }
}

struct Graph(&'static Api, *mut Obj);
impl Drop for Graph {
    fn drop(&mut self) {
        if !self.1.is_null() {
            // SAFETY: our reference, put once.
            unsafe { (self.0.bt_graph_put_ref)(self.1) }
        }
    }
}

struct Executor(&'static Api, *mut Obj);
impl Drop for Executor {
    fn drop(&mut self) {
        // SAFETY: our reference, put once.
        unsafe { (self.0.bt_query_executor_put_ref)(self.1) }
    }
}

struct Value(&'static Api, *mut Obj);
impl Drop for Value {
    fn drop(&mut self) {
        // SAFETY: our reference, put once.
        unsafe { (self.0.bt_value_put_ref)(self.1) }
    }
}

struct Plugin(&'static Api, *const Obj);
impl Plugin {
    unsafe fn find(api: &'static Api, name: &str) -> Result<Plugin, String> {
        // SAFETY: the caller upholds this function's contract (see its doc).
        unsafe {
            let mut plugin = std::ptr::null();
            let c_name = CString::new(name).expect("no NUL");
            // Standard directories and the BABELTRACE_PLUGIN_PATH variable.
            let status = (api.bt_plugin_find)(c_name.as_ptr(), 1, 1, 1, 1, 0, &mut plugin);
            if status != BT_FUNC_STATUS_OK || plugin.is_null() {
                let error = (api.bt_current_thread_take_error)();
                if !error.is_null() {
                    (api.bt_error_release)(error);
                }
                return Err(format!(
                "babeltrace2's {name} plugin is missing; install babeltrace2 (apt-get install babeltrace2)"
            ));
            }
            Ok(Plugin(api, plugin))
        }
    }
}
impl Drop for Plugin {
    fn drop(&mut self) {
        // SAFETY: our reference, put once.
        unsafe { (self.0.bt_plugin_put_ref)(self.1) }
    }
}

unsafe extern "C" fn sink_init(iterator: *mut Obj, data: *mut c_void) -> c_int {
    // SAFETY: the caller upholds this function's contract (see its doc).
    unsafe {
        (*data.cast::<Sink>()).iterator = iterator;
        BT_FUNC_STATUS_OK
    }
}

unsafe extern "C" fn sink_consume(_iterator: *mut Obj, data: *mut c_void) -> c_int {
    // SAFETY: the caller upholds this function's contract (see its doc).
    unsafe {
        let sink = &mut *data.cast::<Sink>();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink.consume())) {
            Ok(Ok(status)) => status,
            Ok(Err(err)) => {
                sink.error = Some(err);
                BT_FUNC_STATUS_ERROR
            }
            Err(_) => {
                sink.error = Some("internal error while reading the trace".into());
                BT_FUNC_STATUS_ERROR
            }
        }
    }
}

impl Sink<'_> {
    /// One batch of messages from the muxer.
    unsafe fn consume(&mut self) -> Result<c_int, String> {
        // SAFETY: the caller upholds this function's contract (see its doc).
        unsafe {
            let api = self.api;
            let mut messages: *const *const Obj = std::ptr::null();
            let mut count = 0u64;
            match (api.bt_message_iterator_next)(self.iterator, &mut messages, &mut count) {
                BT_FUNC_STATUS_OK => {}
                BT_FUNC_STATUS_END => return Ok(BT_FUNC_STATUS_END),
                status => return Ok(status), // AGAIN, or an error babeltrace2 reports
            }
            let messages = std::slice::from_raw_parts(messages, count as usize);
            let mut result = Ok(());
            for &message in messages {
                if result.is_ok() {
                    result = self.handle(message);
                }
                (api.bt_message_put_ref)(message);
            }
            result.map(|()| BT_FUNC_STATUS_OK)
        }
    }

    unsafe fn handle(&mut self, message: *const Obj) -> Result<(), String> {
        // SAFETY: the caller upholds this function's contract (see its doc).
        unsafe {
            let api = self.api;
            match (api.bt_message_get_type)(message) {
                BT_MESSAGE_TYPE_EVENT => {
                    let event = (api.bt_message_event_borrow_event_const)(message);
                    let class = (api.bt_event_borrow_class_const)(event);
                    let info = self
                        .classes
                        .entry(class as usize)
                        .or_insert_with(|| class_info(api, class));
                    let Some(kind) = info.kind else {
                        return (self.callback)(Message::Other);
                    };
                    let mut ns = 0;
                    let mut origin = 0; // the clock's origin, in ns at 1 GHz
                    let clock = (api.bt_message_event_borrow_default_clock_snapshot_const)(message);
                    if !clock.is_null() {
                        (api.bt_clock_snapshot_get_ns_from_origin)(clock, &mut ns);
                        origin = ns.wrapping_sub((api.bt_clock_snapshot_get_value)(clock) as i64);
                    }
                    let payload = (api.bt_event_borrow_payload_field_const)(event);
                    let context = (api.bt_event_borrow_common_context_field_const)(event);
                    let p = &info.payload;
                    let c = &info.context;
                    let line = match p.int(api, payload, CO_FIRSTLINENO) {
                        0 => p.int(api, payload, LINENO),
                        n => n,
                    };
                    let (mut vtid, mut base_ns) = (c.int(api, context, VTID), 0);
                    self.data.clear();
                    if kind == Kind::Batch {
                        vtid = p.int(api, payload, TID);
                        base_ns = origin.wrapping_add(p.int(api, payload, BASE));
                        p.bytes(api, payload, DATA, &mut self.data);
                    }
                    let stream = (api.bt_event_borrow_stream_const)(event);
                    let host = *self
                        .hosts
                        .entry(stream as usize)
                        .or_insert_with(|| stream_host(api, stream));
                    let ev = Event {
                        kind,
                        host,
                        ns,
                        vpid: c.int(api, context, VPID),
                        vtid,
                        procname: c.str(api, context, PROCNAME),
                        stream: stream as usize,
                        co_name: p.str(api, payload, CO_NAME),
                        co_qualname: p.str(api, payload, CO_QUALNAME),
                        module: p.str(api, payload, MODULE),
                        co_filename: p.str(api, payload, CO_FILENAME),
                        line,
                        exc_type: p.str(api, payload, EXC_TYPE),
                        id: p.int(api, payload, ID),
                        base_ns,
                        data: &self.data,
                        span: p.int(api, payload, SPAN),
                        ticks: p.int(api, payload, TICKS),
                    };
                    (self.callback)(Message::Event(ev))
                }
                BT_MESSAGE_TYPE_DISCARDED_EVENTS => {
                    let mut count = 0u64;
                    if (api.bt_message_discarded_events_get_count)(message, &mut count)
                        != BT_PROPERTY_AVAILABILITY_AVAILABLE
                    {
                        count = 0; // unknown: LTTng always says, other tracers may not
                    }
                    let stream = (api.bt_message_discarded_events_borrow_stream_const)(message);
                    let name = (api.bt_stream_get_name)(stream);
                    let stream_name = if name.is_null() {
                        String::new()
                    } else {
                        CStr::from_ptr(name).to_string_lossy().into_owned()
                    };
                    let class = (api.bt_stream_borrow_class_const)(stream);
                    let (mut begin_ns, mut end_ns) = (None, None);
                    if (api.bt_stream_class_discarded_events_have_default_clock_snapshots)(class)
                        != 0
                    {
                        let mut ns = 0;
                        let b = (api
                        .bt_message_discarded_events_borrow_beginning_default_clock_snapshot_const)(
                        message,
                    );
                        if (api.bt_clock_snapshot_get_ns_from_origin)(b, &mut ns)
                            == BT_FUNC_STATUS_OK
                        {
                            begin_ns = Some(ns);
                        }
                        let e = (api
                            .bt_message_discarded_events_borrow_end_default_clock_snapshot_const)(
                            message,
                        );
                        if (api.bt_clock_snapshot_get_ns_from_origin)(e, &mut ns)
                            == BT_FUNC_STATUS_OK
                        {
                            end_ns = Some(ns);
                        }
                    }
                    (self.callback)(Message::Discarded(Discarded {
                        count,
                        stream: stream as usize,
                        stream_name,
                        begin_ns,
                        end_ns,
                    }))
                }
                _ => Ok(()),
            }
        }
    }
}

/// The host of a stream: its trace's `hostname` environment entry.
unsafe fn stream_host(api: &Api, stream: *const Obj) -> u32 {
    // SAFETY: the caller upholds this function's contract (see its doc).
    unsafe {
        let trace = (api.bt_stream_borrow_trace_const)(stream);
        if trace.is_null() {
            return 0;
        }
        let value =
            (api.bt_trace_borrow_environment_entry_value_by_name_const)(trace, cstr!("hostname"));
        if value.is_null() {
            return 0;
        }
        let name = (api.bt_value_string_get)(value);
        if name.is_null() {
            return 0;
        }
        intern_host(&CStr::from_ptr(name).to_string_lossy())
    }
}

/// The kind and field positions of an event class.
unsafe fn class_info(api: &Api, class: *const Obj) -> ClassInfo {
    // SAFETY: the caller upholds this function's contract (see its doc).
    unsafe {
        let name = (api.bt_event_class_get_name)(class);
        let name = if name.is_null() {
            &b""[..]
        } else {
            CStr::from_ptr(name).to_bytes()
        };
        let kind = Kind::from_event_name(name);
        if kind.is_none() {
            return ClassInfo {
                kind,
                payload: Fields::default(),
                context: Fields::default(),
            };
        }
        let stream_class = (api.bt_event_class_borrow_stream_class_const)(class);
        ClassInfo {
            kind,
            payload: Fields::of(
                api,
                (api.bt_event_class_borrow_payload_field_class_const)(class),
                &PAYLOAD_NAMES,
            ),
            context: Fields::of(
                api,
                (api.bt_stream_class_borrow_event_common_context_field_class_const)(stream_class),
                &CONTEXT_NAMES,
            ),
        }
    }
}

impl Fields {
    /// The members of structure class `class` (may be null) named in `wanted`.
    unsafe fn of(api: &Api, class: *const Obj, wanted: &[&str]) -> Fields {
        // SAFETY: the caller upholds this function's contract (see its doc).
        unsafe {
            let mut fields = Fields::default();
            if class.is_null() {
                return fields;
            }
            for i in 0..(api.bt_field_class_structure_get_member_count)(class) {
                let member = (api.bt_field_class_structure_borrow_member_by_index_const)(class, i);
                let name = CStr::from_ptr((api.bt_field_class_structure_member_get_name)(member));
                let Some(slot) = wanted.iter().position(|w| w.as_bytes() == name.to_bytes()) else {
                    continue;
                };
                let ty = (api.bt_field_class_get_type)((api
                    .bt_field_class_structure_member_borrow_field_class_const)(
                    member
                ));
                if ty & BT_FIELD_CLASS_TYPE_STRING == BT_FIELD_CLASS_TYPE_STRING
                    || ty & BT_FIELD_CLASS_TYPE_INTEGER == BT_FIELD_CLASS_TYPE_INTEGER
                    || ty & BT_FIELD_CLASS_TYPE_ARRAY == BT_FIELD_CLASS_TYPE_ARRAY
                {
                    let signed = ty & BT_FIELD_CLASS_TYPE_SIGNED_INTEGER
                        == BT_FIELD_CLASS_TYPE_SIGNED_INTEGER;
                    fields.slots[slot] = Some((i, signed));
                }
            }
            fields
        }
    }

    /// String member `slot` of `field` ("" when absent or not UTF-8).
    unsafe fn str<'a>(&self, api: &Api, field: *const Obj, slot: usize) -> &'a str {
        // SAFETY: the caller upholds this function's contract (see its doc).
        unsafe {
            let Some((index, _)) = self.slots[slot] else {
                return "";
            };
            if field.is_null() {
                return "";
            }
            let member = (api.bt_field_structure_borrow_member_field_by_index_const)(field, index);
            let ptr = (api.bt_field_string_get_value)(member);
            if ptr.is_null() {
                return "";
            }
            let len = (api.bt_field_string_get_length)(member) as usize;
            std::str::from_utf8(std::slice::from_raw_parts(ptr.cast::<u8>(), len)).unwrap_or("?")
        }
    }

    /// Array-of-bytes member `slot` of `field`, appended to `out`.
    unsafe fn bytes(&self, api: &Api, field: *const Obj, slot: usize, out: &mut Vec<u8>) {
        // SAFETY: the caller upholds this function's contract (see its doc).
        unsafe {
            let Some((index, _)) = self.slots[slot] else {
                return;
            };
            if field.is_null() {
                return;
            }
            let member = (api.bt_field_structure_borrow_member_field_by_index_const)(field, index);
            for i in 0..(api.bt_field_array_get_length)(member) {
                let byte = (api.bt_field_array_borrow_element_field_by_index_const)(member, i);
                out.push((api.bt_field_integer_unsigned_get_value)(byte) as u8);
            }
        }
    }

    /// Integer member `slot` of `field` (0 when absent).
    unsafe fn int(&self, api: &Api, field: *const Obj, slot: usize) -> i64 {
        // SAFETY: the caller upholds this function's contract (see its doc).
        unsafe {
            let Some((index, signed)) = self.slots[slot] else {
                return 0;
            };
            if field.is_null() {
                return 0;
            }
            let member = (api.bt_field_structure_borrow_member_field_by_index_const)(field, index);
            if signed {
                (api.bt_field_integer_signed_get_value)(member)
            } else {
                (api.bt_field_integer_unsigned_get_value)(member) as i64
            }
        }
    }
}
