//! The sink at the end of babeltrace2's graph: each message it consumes
//! becomes a `Message` for Rust, its fields found once per event class.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};

use super::api::*;
use crate::read::event::{Discarded, Event, Kind, Message};
use crate::read::traces::intern_host;

/// Where the fields of one event class are, found once per class.
pub(super) struct ClassInfo {
    kind: Option<Kind>,
    payload: Fields,
    context: Fields,
}

/// Where the members read are in a structure field: for each name of
/// its list, (index, integer is signed), or None when absent.
#[derive(Default)]
pub(super) struct Fields {
    slots: [Option<(u64, bool)>; 13],
}

// Positions in `PAYLOAD_NAMES` and `CONTEXT_NAMES`.
pub(super) const CO_NAME: usize = 0;
pub(super) const CO_QUALNAME: usize = 1;
pub(super) const MODULE: usize = 2;
pub(super) const CO_FILENAME: usize = 3;
pub(super) const CO_FIRSTLINENO: usize = 4;
pub(super) const LINENO: usize = 5;
pub(super) const EXC_TYPE: usize = 6;
pub(super) const ID: usize = 7;
pub(super) const TID: usize = 8;
pub(super) const BASE: usize = 9;
pub(super) const DATA: usize = 10;
pub(super) const SPAN: usize = 11;
pub(super) const TICKS: usize = 12;
pub(super) const VPID: usize = 0;
pub(super) const VTID: usize = 1;
pub(super) const PROCNAME: usize = 2;

pub(super) const PAYLOAD_NAMES: [&str; 13] = [
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
pub(super) const CONTEXT_NAMES: [&str; 3] = ["vpid", "vtid", "procname"];

pub(super) struct Sink<'f> {
    pub(super) api: &'static Api,
    pub(super) iterator: *mut Obj,
    pub(super) classes: HashMap<usize, ClassInfo>,
    /// The host of each stream seen (by its address).
    pub(super) hosts: HashMap<usize, u32>,
    pub(super) callback: &'f mut dyn FnMut(Message<'_>) -> Result<(), String>,
    pub(super) error: Option<String>,
    /// A batch's records, copied out of babeltrace2's fields.
    pub(super) data: Vec<u8>,
}

pub(super) unsafe extern "C" fn sink_init(iterator: *mut Obj, data: *mut c_void) -> c_int {
    // SAFETY: the caller upholds this function's contract (see its doc).
    unsafe {
        (*data.cast::<Sink>()).iterator = iterator;
        BT_FUNC_STATUS_OK
    }
}

pub(super) unsafe extern "C" fn sink_consume(_iterator: *mut Obj, data: *mut c_void) -> c_int {
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
