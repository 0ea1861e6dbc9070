//! Every foreign declaration pyust needs beyond `pyo3::ffi`, in one place:
//! `lttng`, the LTTng-UST emitters of `src/tp/python_tp.c`; `cpython`, the
//! interpreter entry points and fields whose names or layout change across
//! versions; `bt2`, the reading of traces through libbabeltrace2 for
//! `pyust report`.

pub mod bt2;
pub mod cpython;
pub mod lttng;
