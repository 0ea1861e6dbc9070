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

#[macro_use]
mod api;
mod sink;

use std::collections::HashMap;
use std::ffi::{c_char, CStr, CString};
use std::path::Path;

use api::*;
use sink::{sink_consume, sink_init, Sink};

use crate::read::event::Message;
use crate::read::traces::find_traces;

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
