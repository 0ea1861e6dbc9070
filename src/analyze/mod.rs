//! Analysis: what the reading side's event stream (`crate::read`) becomes
//! for a person — `view` (text), `report` (a table per function, folded
//! stacks, a flame graph, Perfetto timelines through `timeline`) and `top`
//! (a live table). It imports `crate::read` and never the tracer.

pub mod report;
pub mod timeline;
pub mod top;
pub mod view;
