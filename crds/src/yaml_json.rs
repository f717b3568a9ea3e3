//! YAML text → JSON text (one text per document, in one buffer), written
//! straight from the parser's events.
//!
//! Why: serde_yaml_ng first collects every event of a document in one `Vec`
//! (~100 bytes an event, 125,000 events for a 5,000-route gateway), and growing
//! that `Vec`, with the page faults of memory the allocator had given back, was
//! most of a standalone reload. Here each event is written out as it comes, and
//! serde_json reads the text into the typed objects.
//!
//! The events come from our reader of the subset of YAML manifests are written
//! in (`subset`: block and one-line flow collections, one-line scalars), which
//! gives the events libyaml gives, five times faster than libyaml's scanner;
//! a text outside the subset is read by libyaml (the parser serde_yaml_ng uses).
//!
//! The JSON must be what `serde_json::Value::deserialize` of serde_yaml_ng's
//! document gives, the loader's authority (`manifests::generic_document`). What
//! this module is not sure to render the same way (tags, anchors and aliases,
//! floats, integers beyond 64 bits, keys that do not read as strings, syntax
//! errors) makes it give up with `None`, and the caller reads the text with
//! serde_yaml_ng as before. The tests compare the readers.

use std::fmt::Write as _;
use std::mem::MaybeUninit;

use unsafe_libyaml as unsafe_yaml;

mod subset;

/// The JSON text of each document of a YAML stream, in one buffer.
#[derive(Debug)]
pub struct Documents {
    json: String,
    /// Where each document's text ends in `json`.
    ends: Vec<usize>,
}

impl Documents {
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(&self.ends)
            .map(|(start, &end)| &self.json[start..end])
    }
}

/// The JSON text of each document of `text`, or `None`: read it another way.
pub fn documents(text: &str) -> Option<Documents> {
    // JSON is about as long as the YAML it comes from: one buffer, rarely grown.
    let mut out = Output {
        writer: Writer {
            out: String::with_capacity(text.len() + text.len() / 4),
            stack: Vec::new(),
        },
        ends: Vec::new(),
    };
    // Most manifests are in the subset our own reader takes; libyaml reads the rest.
    if subset::read(text, &mut |event| out.event(event)).is_some() {
        return Some(out.finish());
    }
    out.writer.out.clear();
    out.writer.stack.clear();
    out.ends.clear();
    let mut events = Events::new(text)?;
    loop {
        let event = events.next()?;
        let end = matches!(event, Event::StreamEnd);
        out.event(event)?;
        if end {
            return Some(out.finish());
        }
    }
}

/// The writer, and where each document ends in its text.
struct Output {
    writer: Writer,
    ends: Vec<usize>,
}

impl Output {
    fn event(&mut self, event: Event<'_>) -> Option<()> {
        match event {
            Event::StreamEnd => Some(()),
            Event::DocumentEnd => {
                if !self.writer.stack.is_empty() {
                    return None;
                }
                self.ends.push(self.writer.out.len());
                Some(())
            }
            event => self.writer.event(event),
        }
    }

    fn finish(self) -> Documents {
        Documents {
            json: self.writer.out,
            ends: self.ends,
        }
    }
}

/// What the writer needs of one libyaml event.
#[derive(Debug, PartialEq)]
enum Event<'a> {
    StreamEnd,
    DocumentEnd,
    /// A scalar without tag or anchor; `plain`: not quoted nor a block scalar.
    Scalar {
        value: &'a str,
        plain: bool,
    },
    SequenceStart,
    SequenceEnd,
    MappingStart,
    MappingEnd,
}

/// libyaml's parser over `text` (the parser serde_yaml_ng uses: same tokens,
/// same scalar values).
struct Events<'a> {
    parser: Box<MaybeUninit<unsafe_yaml::yaml_parser_t>>,
    /// The event last returned, deleted before the next one is parsed.
    event: MaybeUninit<unsafe_yaml::yaml_event_t>,
    has_event: bool,
    _text: &'a str,
}

impl<'a> Events<'a> {
    fn new(text: &'a str) -> Option<Events<'a>> {
        let mut parser = Box::new(MaybeUninit::<unsafe_yaml::yaml_parser_t>::uninit());
        // SAFETY: `parser` is heap memory libyaml initialises; the input outlives
        // the parser (`_text` keeps the borrow), and `Drop` frees it.
        unsafe {
            if unsafe_yaml::yaml_parser_initialize(parser.as_mut_ptr()).fail {
                return None;
            }
            unsafe_yaml::yaml_parser_set_encoding(
                parser.as_mut_ptr(),
                unsafe_yaml::YAML_UTF8_ENCODING,
            );
            unsafe_yaml::yaml_parser_set_input_string(
                parser.as_mut_ptr(),
                text.as_ptr(),
                text.len() as u64,
            );
        }
        Some(Events {
            parser,
            event: MaybeUninit::uninit(),
            has_event: false,
            _text: text,
        })
    }

    /// The next event; `None` on a syntax error or anything [`Event`] cannot
    /// say (aliases, anchors, tags).
    fn next(&mut self) -> Option<Event<'_>> {
        loop {
            self.delete_event();
            // SAFETY: the parser was initialised in `new`; a parsed event is
            // deleted before the next parse and in `Drop`. Strings are read with
            // the lengths libyaml gives and live until the event is deleted,
            // which the returned borrow of `self` guarantees.
            unsafe {
                if unsafe_yaml::yaml_parser_parse(self.parser.as_mut_ptr(), self.event.as_mut_ptr())
                    .fail
                {
                    return None;
                }
                self.has_event = true;
                let event = &*self.event.as_ptr();
                return Some(match event.type_ {
                    unsafe_yaml::YAML_STREAM_START_EVENT
                    | unsafe_yaml::YAML_DOCUMENT_START_EVENT => continue,
                    unsafe_yaml::YAML_STREAM_END_EVENT => Event::StreamEnd,
                    unsafe_yaml::YAML_DOCUMENT_END_EVENT => Event::DocumentEnd,
                    unsafe_yaml::YAML_SCALAR_EVENT => {
                        let s = &event.data.scalar;
                        if !s.anchor.is_null() || !s.tag.is_null() {
                            return None;
                        }
                        let bytes = std::slice::from_raw_parts(s.value, s.length as usize);
                        Event::Scalar {
                            value: std::str::from_utf8(bytes).ok()?,
                            plain: s.style == unsafe_yaml::YAML_PLAIN_SCALAR_STYLE,
                        }
                    }
                    unsafe_yaml::YAML_SEQUENCE_START_EVENT => {
                        let s = &event.data.sequence_start;
                        if !s.anchor.is_null() || !s.tag.is_null() {
                            return None;
                        }
                        Event::SequenceStart
                    }
                    unsafe_yaml::YAML_MAPPING_START_EVENT => {
                        let m = &event.data.mapping_start;
                        if !m.anchor.is_null() || !m.tag.is_null() {
                            return None;
                        }
                        Event::MappingStart
                    }
                    unsafe_yaml::YAML_SEQUENCE_END_EVENT => Event::SequenceEnd,
                    unsafe_yaml::YAML_MAPPING_END_EVENT => Event::MappingEnd,
                    // Aliases, and event types libyaml does not produce.
                    _ => return None,
                });
            }
        }
    }

    fn delete_event(&mut self) {
        if self.has_event {
            // SAFETY: `has_event` says the event was parsed and not yet deleted.
            unsafe { unsafe_yaml::yaml_event_delete(self.event.as_mut_ptr()) };
            self.has_event = false;
        }
    }
}

impl Drop for Events<'_> {
    fn drop(&mut self) {
        self.delete_event();
        // SAFETY: initialised in `new` (a failed `new` never builds `Events`).
        unsafe { unsafe_yaml::yaml_parser_delete(self.parser.as_mut_ptr()) };
    }
}

/// Open collections of the document being written.
enum Frame {
    Sequence { first: bool },
    Mapping { first: bool, key_next: bool },
}

struct Writer {
    out: String,
    stack: Vec<Frame>,
}

impl Writer {
    fn event(&mut self, event: Event<'_>) -> Option<()> {
        match event {
            Event::Scalar { value, plain } => {
                if self.separate() {
                    // A key: serde_json keeps keys as strings; one that reads as
                    // null, a boolean or a number is left to serde_yaml_ng.
                    if plain && !matches!(resolve(value), Plain::Str) {
                        return None;
                    }
                    string(&mut self.out, value);
                    self.out.push(':');
                } else if !plain {
                    string(&mut self.out, value);
                } else {
                    match resolve(value) {
                        Plain::Null => self.out.push_str("null"),
                        Plain::Bool(b) => self.out.push_str(if b { "true" } else { "false" }),
                        Plain::Int(n) => {
                            let _ = write!(self.out, "{n}");
                        }
                        Plain::Str => string(&mut self.out, value),
                        Plain::Unsure => return None,
                    }
                }
            }
            Event::SequenceStart | Event::MappingStart => {
                if self.separate() {
                    return None; // a collection as a mapping key
                }
                let mapping = matches!(event, Event::MappingStart);
                self.out.push(if mapping { '{' } else { '[' });
                self.stack.push(if mapping {
                    Frame::Mapping {
                        first: true,
                        key_next: true,
                    }
                } else {
                    Frame::Sequence { first: true }
                });
            }
            Event::SequenceEnd => match self.stack.pop() {
                Some(Frame::Sequence { .. }) => self.out.push(']'),
                _ => return None,
            },
            Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Mapping { key_next: true, .. }) => self.out.push('}'),
                _ => return None,
            },
            Event::StreamEnd | Event::DocumentEnd => return None,
        }
        Some(())
    }

    /// Writes the comma before the next node if it needs one; true when that
    /// node is a mapping key.
    fn separate(&mut self) -> bool {
        match self.stack.last_mut() {
            None => false,
            Some(Frame::Sequence { first }) => {
                if !std::mem::take(first) {
                    self.out.push(',');
                }
                false
            }
            Some(Frame::Mapping { first, key_next }) => {
                let key = *key_next;
                *key_next = !key;
                if key && !std::mem::take(first) {
                    self.out.push(',');
                }
                key
            }
        }
    }
}

/// `value` as a JSON string.
fn string(out: &mut String, value: &str) {
    out.push('"');
    let mut plain_from = 0;
    for (i, b) in value.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&value[plain_from..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        plain_from = i + 1;
    }
    out.push_str(&value[plain_from..]);
    out.push('"');
}

/// What an untagged plain scalar is (YAML 1.2 core schema, as serde_yaml_ng reads it).
#[derive(Debug, PartialEq)]
enum Plain {
    Null,
    Bool(bool),
    Int(i128),
    Str,
    /// A float, or an integer beyond 64 bits: left to serde_yaml_ng.
    Unsure,
}

fn resolve(v: &str) -> Plain {
    match v {
        "" | "~" | "null" | "Null" | "NULL" => return Plain::Null,
        "true" | "True" | "TRUE" => return Plain::Bool(true),
        "false" | "False" | "FALSE" => return Plain::Bool(false),
        _ => {}
    }
    // Most scalars are words: only these can start a number.
    if !v.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '+' | '-' | '.')) {
        return Plain::Str;
    }
    if let Some(n) = unsigned(v) {
        return if n <= u128::from(u64::MAX) {
            Plain::Int(n as i128)
        } else {
            Plain::Unsure
        };
    }
    if let Some(n) = negative(v) {
        return if n >= i128::from(i64::MIN) && n <= i128::from(i64::MAX) {
            Plain::Int(n)
        } else {
            Plain::Unsure
        };
    }
    if leading_zero_digits(v) {
        return Plain::Str;
    }
    if float(v) {
        return Plain::Unsure;
    }
    Plain::Str
}

/// `0x`, `0o`, `0b` or decimal, with an optional `+`.
fn unsigned(v: &str) -> Option<u128> {
    let digits = v.strip_prefix('+').unwrap_or(v);
    for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if let Some(rest) = digits.strip_prefix(prefix) {
            if rest.starts_with(['+', '-']) {
                return None;
            }
            if let Ok(n) = u128::from_str_radix(rest, radix) {
                return Some(n);
            }
        }
    }
    if digits.starts_with(['+', '-']) || leading_zero_digits(v) {
        return None;
    }
    digits.parse::<u128>().ok()
}

/// `-0x`, `-0o`, `-0b` or decimal (which `i128::from_str_radix` lets start with
/// a sign).
fn negative(v: &str) -> Option<i128> {
    if let Some(rest) = v.strip_prefix('-') {
        for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] {
            if let Some(digits) = rest.strip_prefix(prefix) {
                // `-` then the digits: a second sign makes it fail, as it must.
                if let Ok(n) = i128::from_str_radix(&format!("-{digits}"), radix) {
                    return Some(n);
                }
            }
        }
    }
    if leading_zero_digits(v) {
        return None;
    }
    v.parse::<i128>().ok()
}

/// `0` followed by digits (after an optional sign) is a string in YAML 1.2.
fn leading_zero_digits(v: &str) -> bool {
    let v = v.strip_prefix(['-', '+']).unwrap_or(v);
    v.len() > 1 && v.starts_with('0') && v[1..].bytes().all(|b| b.is_ascii_digit())
}

/// Would serde_yaml_ng read `v` as a float (finite, or one of the `.inf`/`.nan` forms)?
fn float(v: &str) -> bool {
    let unsigned = match v.strip_prefix('+') {
        Some(rest) if rest.starts_with(['+', '-']) => return false,
        Some(rest) => rest,
        None => v,
    };
    matches!(unsigned, ".inf" | ".Inf" | ".INF")
        || matches!(v, "-.inf" | "-.Inf" | "-.INF" | ".nan" | ".NaN" | ".NAN")
        || unsigned.parse::<f64>().is_ok_and(f64::is_finite)
}

#[cfg(test)]
mod tests;
