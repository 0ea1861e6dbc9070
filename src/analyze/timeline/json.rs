//! The Chrome trace-event JSON (`--perfetto-json`).

use super::*;
// Chrome trace-event JSON

/// B/E pairs per frame, instant events for exceptions, process and
/// thread names as metadata (the viewers show them with the pid and tid:
/// "python 1234"). Times in microseconds from the first event.
pub(super) struct Json {
    path: PathBuf,
    out: BufWriter<File>,
    first: bool,
    seen_pids: std::collections::HashSet<i64>,
}

impl Json {
    pub(super) fn create(path: &Path) -> Result<Json, String> {
        let mut out = create(path)?;
        out.write_all(b"{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n")
            .map_err(|e| write_error(path, e))?;
        Ok(Json {
            path: path.to_path_buf(),
            out,
            first: true,
            seen_pids: Default::default(),
        })
    }

    pub(super) fn record(&mut self, json: std::fmt::Arguments<'_>) -> Result<(), String> {
        let sep: &[u8] = if self.first { b"" } else { b",\n" };
        self.first = false;
        self.out
            .write_all(sep)
            .and_then(|()| self.out.write_fmt(json))
            .map_err(|e| write_error(&self.path, e))
    }

    pub(super) fn thread(&mut self, t: &Track<'_>) -> Result<(), String> {
        if self.seen_pids.insert(t.pid) {
            self.record(format_args!(
                "{{\"ph\":\"M\",\"name\":\"process_name\",\"pid\":{},\"tid\":{},\"args\":{{\"name\":{}}}}}",
                t.pid,
                t.tid,
                JsonStr(t.procname)
            ))?;
        }
        self.record(format_args!(
            "{{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":{},\"tid\":{},\"args\":{{\"name\":{}}}}}",
            t.pid,
            t.tid,
            JsonStr(&thread_name(t))
        ))
    }

    pub(super) fn begin(
        &mut self,
        pid: i64,
        tid: i64,
        rel: i64,
        s: &Slice<'_>,
    ) -> Result<(), String> {
        if s.c {
            self.record(format_args!(
                "{{\"ph\":\"B\",\"pid\":{pid},\"tid\":{tid},\"ts\":{},\"cat\":\"c\",\"name\":{}}}",
                Micros(rel),
                JsonStr(s.label)
            ))
        } else {
            self.record(format_args!(
                "{{\"ph\":\"B\",\"pid\":{pid},\"tid\":{tid},\"ts\":{},\"cat\":\"python\",\"name\":{},\"args\":{{\"file\":{},\"line\":{}}}}}",
                Micros(rel),
                JsonStr(s.label),
                JsonStr(s.file),
                s.line
            ))
        }
    }

    pub(super) fn end(&mut self, pid: i64, tid: i64, rel: i64) -> Result<(), String> {
        self.record(format_args!(
            "{{\"ph\":\"E\",\"pid\":{pid},\"tid\":{tid},\"ts\":{}}}",
            Micros(rel)
        ))
    }

    pub(super) fn instant(
        &mut self,
        pid: i64,
        tid: i64,
        rel: i64,
        exc_type: &str,
        qualname: &str,
        line: i64,
    ) -> Result<(), String> {
        self.record(format_args!(
            "{{\"ph\":\"i\",\"s\":\"t\",\"pid\":{pid},\"tid\":{tid},\"ts\":{},\"cat\":\"exception\",\"name\":{},\"args\":{{\"in\":{},\"line\":{line}}}}}",
            Micros(rel),
            JsonStr(exc_type),
            JsonStr(qualname),
        ))
    }

    pub(super) fn finish(mut self) -> Result<(), String> {
        self.out
            .write_all(b"\n]}\n")
            .and_then(|()| self.out.flush())
            .map_err(|e| write_error(&self.path, e))
    }
}

pub(super) fn thread_name(t: &Track<'_>) -> String {
    if t.pid == t.tid {
        t.procname.to_owned()
    } else {
        format!("{} thread", t.procname)
    }
}

/// Microseconds with nanosecond precision, as the trace-event format wants.
pub(super) struct Micros(i64);

impl std::fmt::Display for Micros {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let n = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:03}", n / 1000, n % 1000)
    }
}

/// A JSON string literal.
pub(super) struct JsonStr<'a>(&'a str);

impl std::fmt::Display for JsonStr<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        f.write_char('"')?;
        for ch in self.0.chars() {
            match ch {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if (c as u32) < 0x20 => write!(f, "\\u{:04x}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        f.write_char('"')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(
            JsonStr("a\"b\\c\n\u{1}é").to_string(),
            "\"a\\\"b\\\\c\\n\\u0001é\""
        );
    }

    #[test]
    fn micros_keep_nanoseconds() {
        assert_eq!(Micros(1_234_567).to_string(), "1234.567");
        assert_eq!(Micros(5).to_string(), "0.005");
        assert_eq!(Micros(-1500).to_string(), "-1.500");
    }
}
