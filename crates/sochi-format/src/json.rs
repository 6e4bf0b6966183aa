//! Go-canonical JSON output (docs/format.md §4.4).
//!
//! The reference snapshotter decodes every SOCI index it fetches and
//! re-encodes it with Go's `encoding/json` before storing it under the digest
//! it fetched, so anything we publish must already be byte-identical to
//! Go's encoding: compact, struct fields in declaration order, map keys
//! sorted bytewise, and Go's string escaping (HTML-safe, U+2028/U+2029
//! escaped). [`JsonWriter`] writes exactly that; the model types in this
//! crate call it field by field in Go's order.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A writer for compact JSON in Go `encoding/json` style.
///
/// Invariant: `first` has one entry per open container, true until that
/// container received its first member; `after_key` is true between a key
/// and its value (no comma goes there).
#[derive(Debug, Default)]
pub struct JsonWriter {
    out: String,
    first: Vec<bool>,
    after_key: bool,
}

impl JsonWriter {
    /// A writer with an empty output.
    pub fn new() -> Self {
        Self::default()
    }

    /// The output so far.
    pub fn finish(self) -> String {
        self.out
    }

    fn separate(&mut self) {
        if self.after_key {
            self.after_key = false;
            return;
        }
        if let Some(first) = self.first.last_mut() {
            if *first {
                *first = false;
            } else {
                self.out.push(',');
            }
        }
    }

    /// Opens an object (as a value).
    pub fn begin_object(&mut self) {
        self.separate();
        self.out.push('{');
        self.first.push(true);
    }

    /// Closes the innermost object.
    pub fn end_object(&mut self) {
        self.out.push('}');
        self.first.pop();
    }

    /// Opens an array (as a value).
    pub fn begin_array(&mut self) {
        self.separate();
        self.out.push('[');
        self.first.push(true);
    }

    /// Closes the innermost array.
    pub fn end_array(&mut self) {
        self.out.push(']');
        self.first.pop();
    }

    /// Writes an object key; the next call writes its value.
    pub fn key(&mut self, key: &str) {
        self.separate();
        write_go_string(&mut self.out, key);
        self.out.push(':');
        self.after_key = true;
    }

    /// Writes a string value.
    pub fn string(&mut self, value: &str) {
        self.separate();
        write_go_string(&mut self.out, value);
    }

    /// Writes an integer value.
    pub fn int(&mut self, value: i64) {
        self.separate();
        let _ = write!(self.out, "{value}");
    }

    /// Writes `null`.
    pub fn null(&mut self) {
        self.separate();
        self.out.push_str("null");
    }

    /// Writes a `map[string]string` with keys sorted bytewise.
    pub fn string_map(&mut self, map: &BTreeMap<String, String>) {
        self.begin_object();
        for (k, v) in map {
            self.key(k);
            self.string(v);
        }
        self.end_object();
    }

    /// Writes a `[]string`.
    pub fn string_array(&mut self, values: &[String]) {
        self.begin_array();
        for v in values {
            self.string(v);
        }
        self.end_array();
    }
}

/// Appends `value` as a JSON string escaped the way Go's `encoding/json`
/// does by default (Go ≥ 1.22): `\b \f \n \r \t \" \\` short forms, other
/// C0 controls and `< > &` and U+2028/U+2029 as `\u00xx`/`\u20xx`.
pub fn write_go_string(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_like_go() {
        let mut s = String::new();
        write_go_string(&mut s, "a\"b\\c\n\r\t\u{8}\u{c}\u{1}<>&\u{2028}\u{2029}é");
        assert_eq!(
            s,
            r#""a\"b\\c\n\r\t\b\f\u0001\u003c\u003e\u0026\u2028\u2029é""#
        );
    }

    #[test]
    fn nested_containers_get_commas_right() {
        let mut w = JsonWriter::new();
        w.begin_object();
        w.key("a");
        w.int(1);
        w.key("b");
        w.begin_array();
        w.string("x");
        w.begin_object();
        w.end_object();
        w.end_array();
        w.key("c");
        let mut m = BTreeMap::new();
        m.insert("z".to_string(), "1".to_string());
        m.insert("B".to_string(), "2".to_string());
        w.string_map(&m);
        w.end_object();
        assert_eq!(w.finish(), r#"{"a":1,"b":["x",{}],"c":{"B":"2","z":"1"}}"#);
    }
}
