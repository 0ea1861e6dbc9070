//! The event model both readers hand over (pyust's CTF reader and
//! libbabeltrace2): one `python:*` or `python_fast:*` event, borrowed for
//! the callback, or a count of events LTTng discarded.

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
