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
    let mut sink = Sink {
        api,
        iterator: std::ptr::null_mut(),
        classes: HashMap::new(),
        callback,
        error: None,
        data: Vec::new(),
    };
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
        let fs = (api.bt_plugin_borrow_source_component_class_by_name_const)(ctf.1, cstr!("fs"));
        let muxer_class =
            (api.bt_plugin_borrow_filter_component_class_by_name_const)(utils.1, cstr!("muxer"));
        if fs.is_null() || muxer_class.is_null() {
            return Err("babeltrace2: no source.ctf.fs or filter.utils.muxer component".into());
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
        for (i, dir) in traces.iter().enumerate() {
            let params = Value(api, (api.bt_value_map_create)());
            let inputs = (api.bt_value_array_create)();
            let path = CString::new(dir.as_os_str().as_encoded_bytes())
                .map_err(|_| format!("{}: bad path", dir.display()))?;
            (api.bt_value_array_append_string_element)(inputs, path.as_ptr());
            (api.bt_value_map_insert_entry)(params.1, cstr!("inputs"), inputs);
            (api.bt_value_put_ref)(inputs);
            let name = CString::new(format!("source{i}")).expect("no NUL");
            let mut source = std::ptr::null();
            if (api.bt_graph_add_source_component)(
                graph.1,
                fs,
                name.as_ptr(),
                params.1,
                BT_LOGGING_LEVEL_NONE,
                &mut source,
            ) != BT_FUNC_STATUS_OK
            {
                return Err(take_error(api, &format!("cannot read {}", dir.display())));
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
        let status = (api.bt_graph_run)(graph.1);
        if let Some(err) = sink.error.take() {
            // Our own error first: babeltrace2's is then only its echo.
            (api.bt_error_release)((api.bt_current_thread_take_error)());
            return Err(err);
        }
        if status != BT_FUNC_STATUS_OK {
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
                    let ev = Event {
                        kind,
                        ns,
                        vpid: c.int(api, context, VPID),
                        vtid,
                        procname: c.str(api, context, PROCNAME),
                        stream: (api.bt_event_borrow_stream_const)(event) as usize,
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
