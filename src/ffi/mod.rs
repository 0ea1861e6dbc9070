//! Every foreign declaration the tracer needs beyond `pyo3::ffi`, in one
//! place: `lttng`, the LTTng-UST emitters of `src/tp/python_tp.c` and the
//! provider's loading; `cpython`, the interpreter entry points and fields
//! whose names or layout change across versions. (The reading side's
//! libbabeltrace2 binding is `crate::read::bt2`.)

pub mod cpython;
pub mod lttng;
