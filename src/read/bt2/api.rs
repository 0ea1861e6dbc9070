//! libbabeltrace2's C API as pyust uses it: the constants, a table of
//! function pointers resolved with `dlsym` from the library `dlopen`ed on
//! first use, its error as one line, and guards that put each object
//! back. Every `unsafe` of the binding is a call through this table.

use std::ffi::{c_char, c_int, c_void, CStr, CString};

/// Opaque babeltrace2 objects (only ever behind pointers).
pub(super) type Obj = c_void;

/// A NUL-terminated literal as a C string pointer.
macro_rules! cstr {
    ($s:literal) => {
        concat!($s, "\0").as_ptr().cast::<c_char>()
    };
}

// The constants of babeltrace2 2.0's API (babeltrace2/*.h).
pub(super) const BT_FUNC_STATUS_OK: c_int = 0;
pub(super) const BT_FUNC_STATUS_END: c_int = 1;
pub(super) const BT_FUNC_STATUS_ERROR: c_int = -1;
pub(super) const BT_FUNC_STATUS_AGAIN: c_int = 11;
pub(super) const BT_VALUE_TYPE_STRING: c_int = 1 << 6;
pub(super) const BT_VALUE_TYPE_UNSIGNED_INTEGER: c_int = (1 << 3) | (1 << 2);
pub(super) const BT_VALUE_TYPE_SIGNED_INTEGER: c_int = (1 << 4) | (1 << 2);
pub(super) const BT_LOGGING_LEVEL_NONE: c_int = 0xff;
pub(super) const BT_MESSAGE_TYPE_EVENT: c_int = 1 << 2;
pub(super) const BT_MESSAGE_TYPE_DISCARDED_EVENTS: c_int = 1 << 5;
pub(super) const BT_PROPERTY_AVAILABILITY_AVAILABLE: c_int = 1;
pub(super) const BT_FIELD_CLASS_TYPE_INTEGER: u64 = 1 << 2;
pub(super) const BT_FIELD_CLASS_TYPE_SIGNED_INTEGER: u64 = (1 << 4) | BT_FIELD_CLASS_TYPE_INTEGER;
pub(super) const BT_FIELD_CLASS_TYPE_STRING: u64 = 1 << 9;
pub(super) const BT_FIELD_CLASS_TYPE_ARRAY: u64 = 1 << 11;

pub(super) type InitFn = unsafe extern "C" fn(*mut Obj, *mut c_void) -> c_int;
pub(super) type ConsumeFn = unsafe extern "C" fn(*mut Obj, *mut c_void) -> c_int;
pub(super) type FinalizeFn = unsafe extern "C" fn(*mut c_void);

/// Declares the libbabeltrace2 functions used, as a table of function
/// pointers resolved by `dlsym`.
macro_rules! api {
    ($($name:ident: fn($($arg:ty),*) $(-> $ret:ty)?;)*) => {
        #[allow(non_snake_case)]
        pub(super) struct Api {
            $(pub(super) $name: unsafe extern "C" fn($($arg),*) $(-> $ret)?,)*
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
pub(super) const RTLD_NOW: c_int = 2;

/// The library's functions, loaded once per process (never unloaded).
pub(super) fn api() -> Result<&'static Api, String> {
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

/// The current thread's babeltrace2 error, as one line after `what`.
pub(super) unsafe fn take_error(api: &Api, what: &str) -> String {
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

pub(super) struct Graph(pub(super) &'static Api, pub(super) *mut Obj);
impl Drop for Graph {
    fn drop(&mut self) {
        if !self.1.is_null() {
            // SAFETY: our reference, put once.
            unsafe { (self.0.bt_graph_put_ref)(self.1) }
        }
    }
}

pub(super) struct Executor(pub(super) &'static Api, pub(super) *mut Obj);
impl Drop for Executor {
    fn drop(&mut self) {
        // SAFETY: our reference, put once.
        unsafe { (self.0.bt_query_executor_put_ref)(self.1) }
    }
}

pub(super) struct Value(pub(super) &'static Api, pub(super) *mut Obj);
impl Drop for Value {
    fn drop(&mut self) {
        // SAFETY: our reference, put once.
        unsafe { (self.0.bt_value_put_ref)(self.1) }
    }
}

pub(super) struct Plugin(pub(super) &'static Api, pub(super) *const Obj);
impl Plugin {
    pub(super) unsafe fn find(api: &'static Api, name: &str) -> Result<Plugin, String> {
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
