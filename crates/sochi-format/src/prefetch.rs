//! The prefetch artifact (docs/format.md §3.8): per layer, the ranges of
//! spans to fetch before the layer is mounted.
//!
//! The body is the reference's Go struct encoded by `encoding/json`:
//! `{"version":"1.0","prefetch_spans":[{"start_span":S,"end_span":E}]}`,
//! with `"priority":N` inside a span only when it is not zero. Span ids are
//! Go `int32` (`compression.SpanID`), the priority a Go `int` (64 bits).
//!
//! Decoding follows Go's `json.Unmarshal` into that struct, then the
//! reference's checks (version `"1.0"`, at least one range): keys match
//! case-insensitively (Go's folding, so `"Start_Span"` is `start_span`),
//! unknown keys are ignored, a repeated key's last value wins, `null`
//! leaves a number or string at its zero value, a `null` range is the
//! range `0..=0`, and a number that is not an integer of the field's width
//! is an error. sochi refuses what the reference reads in two cases: a
//! body over [`MAX_PREFETCH_ARTIFACT_SIZE`], and a key or the version that
//! is not valid UTF-8 or holds a lone surrogate escape (Go reads those as
//! U+FFFD, so such a version is refused by both anyway).

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::json::JsonWriter;

/// The only version the reference writes and reads.
pub const PREFETCH_ARTIFACT_VERSION: &str = "1.0";

/// The largest prefetch artifact sochi reads (1 MiB). The reference has no
/// limit; its builder writes at most one range per span (about 35 bytes
/// each), so 1 MiB is some 30,000 disjoint ranges, far beyond a real layer's.
pub const MAX_PREFETCH_ARTIFACT_SIZE: usize = 1 << 20;

/// One range of spans to prefetch, both ends inclusive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefetchSpan {
    /// First span.
    pub start_span: i32,
    /// Last span (inclusive).
    pub end_span: i32,
    /// Lower is earlier; the reference writes 0 (omitted) and does not use
    /// it yet.
    pub priority: i64,
}

/// The prefetch artifact of one layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefetchArtifact {
    /// Always [`PREFETCH_ARTIFACT_VERSION`] once decoded.
    pub version: String,
    /// Span ranges; the builder writes them sorted and merged.
    pub prefetch_spans: Vec<PrefetchSpan>,
}

impl PrefetchArtifact {
    /// The artifact of `ranges` as the reference's builder makes it: sorted
    /// by `(start_span, end_span)`, and ranges that overlap or touch
    /// (`next.start_span <= current.end_span + 1`) merged, the first
    /// range's priority kept. `None` when there are no ranges: the
    /// reference writes no artifact then.
    pub fn merged(ranges: impl IntoIterator<Item = PrefetchSpan>) -> Option<PrefetchArtifact> {
        let mut ranges: Vec<PrefetchSpan> = ranges.into_iter().collect();
        ranges.sort_by_key(|r| (r.start_span, r.end_span));
        let mut merged: Vec<PrefetchSpan> = Vec::with_capacity(ranges.len());
        for range in ranges {
            match merged.last_mut() {
                // Go adds in int32 and wraps: a range ending at i32::MAX
                // touches nothing after it.
                Some(current) if range.start_span <= current.end_span.wrapping_add(1) => {
                    current.end_span = current.end_span.max(range.end_span);
                }
                _ => merged.push(range),
            }
        }
        (!merged.is_empty()).then(|| PrefetchArtifact {
            version: PREFETCH_ARTIFACT_VERSION.to_string(),
            prefetch_spans: merged,
        })
    }

    /// Decodes a prefetch artifact as the reference does (see the module
    /// doc), refusing a body over [`MAX_PREFETCH_ARTIFACT_SIZE`], a version
    /// other than `"1.0"` and an empty range list.
    pub fn from_bytes(bytes: &[u8]) -> Result<PrefetchArtifact> {
        let invalid = |detail: String| Error::Invalid {
            what: "prefetch artifact",
            detail,
        };
        if bytes.len() > MAX_PREFETCH_ARTIFACT_SIZE {
            return Err(invalid(format!(
                "{} bytes, more than the {MAX_PREFETCH_ARTIFACT_SIZE} sochi reads",
                bytes.len()
            )));
        }
        let artifact: PrefetchArtifact =
            serde_json::from_slice(bytes).map_err(|source| Error::Json {
                what: "prefetch artifact",
                source,
            })?;
        if artifact.version != PREFETCH_ARTIFACT_VERSION {
            return Err(invalid(format!(
                "unsupported version {:?} (expected {PREFETCH_ARTIFACT_VERSION:?})",
                artifact.version
            )));
        }
        if artifact.prefetch_spans.is_empty() {
            return Err(invalid("no span ranges".to_string()));
        }
        Ok(artifact)
    }

    /// Go-canonical bytes (compact, fields in the Go struct's order).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = JsonWriter::new();
        w.begin_object();
        w.key("version");
        w.string(&self.version);
        w.key("prefetch_spans");
        w.begin_array();
        for s in &self.prefetch_spans {
            w.begin_object();
            w.key("start_span");
            w.int(i64::from(s.start_span));
            w.key("end_span");
            w.int(i64::from(s.end_span));
            if s.priority != 0 {
                w.key("priority");
                w.int(s.priority);
            }
            w.end_object();
        }
        w.end_array();
        w.end_object();
        w.finish().into_bytes()
    }

    /// Checks every range against the layer's zTOC, which has `span_count`
    /// spans: a range must start at span 0 or later, not end before it
    /// starts, and end at the last span or earlier. `artifact` (its digest)
    /// names the artifact in the error.
    pub fn validate_against(&self, artifact: &Digest, span_count: usize) -> Result<()> {
        for (range, span) in self.prefetch_spans.iter().enumerate() {
            let problem = if span.start_span < 0 {
                Some("starts before span 0")
            } else if span.end_span < span.start_span {
                Some("ends before it starts")
            } else if !usize::try_from(span.end_span).is_ok_and(|end| end < span_count) {
                Some("ends past the layer's last span")
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(Error::PrefetchRange {
                    artifact: artifact.clone(),
                    range,
                    start_span: span.start_span,
                    end_span: span.end_span,
                    span_count,
                    problem,
                });
            }
        }
        Ok(())
    }
}

/// The fields of the Go struct, matched as `encoding/json` matches keys.
#[derive(Clone, Copy)]
enum Field {
    Version,
    PrefetchSpans,
    StartSpan,
    EndSpan,
    Priority,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::Version => "version",
            Field::PrefetchSpans => "prefetch_spans",
            Field::StartSpan => "start_span",
            Field::EndSpan => "end_span",
            Field::Priority => "priority",
        }
    }

    /// The field of `fields` that `key` names: equal under Go's case
    /// folding (`bytes.EqualFold`: ASCII case, and U+212A KELVIN SIGN and
    /// U+017F LONG S, which fold to `k` and `s`).
    fn find(fields: &[Field], key: &str) -> Option<Field> {
        fields.iter().copied().find(|f| go_fold_eq(key, f.name()))
    }
}

/// `key` equals `name` (ASCII lower case and `_`) under Go's JSON key
/// folding.
fn go_fold_eq(key: &str, name: &str) -> bool {
    let mut name = name.bytes();
    for c in key.chars() {
        let Some(n) = name.next() else {
            return false;
        };
        let same = match c {
            '\u{212A}' => n == b'k',
            '\u{017F}' => n == b's',
            c if c.is_ascii() => c.to_ascii_lowercase() == char::from(n),
            _ => false,
        };
        if !same {
            return false;
        }
    }
    name.next().is_none()
}

impl<'de> Deserialize<'de> for PrefetchArtifact {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ArtifactVisitor)
    }
}

impl<'de> Deserialize<'de> for PrefetchSpan {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SpanVisitor)
    }
}

struct ArtifactVisitor;

impl<'de> Visitor<'de> for ArtifactVisitor {
    type Value = PrefetchArtifact;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a prefetch artifact object")
    }

    /// A top-level `null` decodes to the zero struct (and is then refused
    /// for its empty version).
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(PrefetchArtifact {
            version: String::new(),
            prefetch_spans: Vec::new(),
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut version = String::new();
        let mut spans = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            match Field::find(&[Field::Version, Field::PrefetchSpans], &key) {
                Some(Field::Version) => {
                    if let Some(v) = map.next_value::<Option<String>>()? {
                        version = v;
                    }
                }
                Some(_) => {
                    // `null` makes a Go slice nil.
                    let ranges = map.next_value::<Option<Vec<Option<PrefetchSpan>>>>()?;
                    spans = ranges
                        .unwrap_or_default()
                        .into_iter()
                        .map(Option::unwrap_or_default)
                        .collect();
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(PrefetchArtifact {
            version,
            prefetch_spans: spans,
        })
    }
}

struct SpanVisitor;

impl<'de> Visitor<'de> for SpanVisitor {
    type Value = PrefetchSpan;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a prefetch span object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut span = PrefetchSpan::default();
        let fields = [Field::StartSpan, Field::EndSpan, Field::Priority];
        while let Some(key) = map.next_key::<String>()? {
            match Field::find(&fields, &key) {
                Some(Field::StartSpan) => {
                    if let Some(v) = map.next_value::<Option<i32>>()? {
                        span.start_span = v;
                    }
                }
                Some(Field::EndSpan) => {
                    if let Some(v) = map.next_value::<Option<i32>>()? {
                        span.end_span = v;
                    }
                }
                Some(_) => {
                    if let Some(v) = map.next_value::<Option<i64>>()? {
                        span.priority = v;
                    }
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(start_span: i32, end_span: i32) -> PrefetchSpan {
        PrefetchSpan {
            start_span,
            end_span,
            priority: 0,
        }
    }

    #[test]
    fn artifact_is_go_canonical() {
        let a = PrefetchArtifact {
            version: "1.0".into(),
            prefetch_spans: vec![
                span(0, 2),
                PrefetchSpan {
                    start_span: 5,
                    end_span: 5,
                    priority: 1,
                },
            ],
        };
        let bytes = a.to_bytes();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"version":"1.0","prefetch_spans":[{"start_span":0,"end_span":2},{"start_span":5,"end_span":5,"priority":1}]}"#
        );
        assert_eq!(PrefetchArtifact::from_bytes(&bytes).unwrap(), a);
    }

    #[test]
    fn merged_sorts_and_joins_ranges_that_overlap_or_touch() {
        let a = PrefetchArtifact::merged([
            span(7, 7),
            span(0, 2),
            span(3, 3), // touches 0..=2
            span(9, 12),
            span(10, 11), // inside 9..=12
            span(0, 2),   // a duplicate
            span(14, 14), // a gap of one span (13): kept apart
        ])
        .unwrap();
        assert_eq!(
            a.prefetch_spans,
            vec![span(0, 3), span(7, 7), span(9, 12), span(14, 14)]
        );
        assert!(PrefetchArtifact::merged([]).is_none());
        // Go's int32 addition wraps: nothing after a range ending at MAX
        // touches it, though 5..=6 lies inside it.
        let edge = PrefetchArtifact::merged([span(5, 6), span(i32::MIN, i32::MAX)]).unwrap();
        assert_eq!(
            edge.prefetch_spans,
            vec![span(i32::MIN, i32::MAX), span(5, 6)]
        );
    }

    #[test]
    fn priority_is_written_only_when_not_zero_and_read_when_absent() {
        let a = PrefetchArtifact::from_bytes(
            br#"{"version":"1.0","prefetch_spans":[{"start_span":1,"end_span":2},{"start_span":3,"end_span":4,"priority":-7}]}"#,
        )
        .unwrap();
        assert_eq!(a.prefetch_spans[0].priority, 0);
        assert_eq!(a.prefetch_spans[1].priority, -7);
        assert!(!String::from_utf8(a.to_bytes())
            .unwrap()
            .contains(r#""end_span":2,"priority""#));
    }

    #[test]
    fn decoding_follows_go_encoding_json() {
        let read = |json: &str| PrefetchArtifact::from_bytes(json.as_bytes());
        // Keys fold like Go's (ASCII case, the Kelvin sign, the long s),
        // unknown keys are ignored, the last of a repeated key wins.
        let a = read(
            "{\"VERSION\":\"0.9\",\"Version\":\"1.0\",\"extra\":[1,{}],\
             \"prefetch_\u{17F}pans\":[{\"Start_Span\":4,\"END_SPAN\":6,\"priority\":3,\"x\":null}]}",
        )
        .unwrap();
        assert_eq!(
            a.prefetch_spans,
            vec![PrefetchSpan {
                start_span: 4,
                end_span: 6,
                priority: 3
            }]
        );
        // null: a zero number, and a zero range.
        let a =
            read(r#"{"version":"1.0","prefetch_spans":[null,{"start_span":null,"end_span":2}]}"#)
                .unwrap();
        assert_eq!(a.prefetch_spans, vec![span(0, 0), span(0, 2)]);
        // Not an integer of the field's width, or not a number: an error.
        for bad in [
            r#"{"version":"1.0","prefetch_spans":[{"start_span":1.0,"end_span":2}]}"#,
            r#"{"version":"1.0","prefetch_spans":[{"start_span":1e2,"end_span":2}]}"#,
            r#"{"version":"1.0","prefetch_spans":[{"start_span":2147483648,"end_span":2}]}"#,
            r#"{"version":"1.0","prefetch_spans":[{"start_span":"1","end_span":2}]}"#,
            r#"{"version":"1.0","prefetch_spans":[{"start_span":1,"priority":9223372036854775808}]}"#,
            r#"{"version":"1.0","prefetch_spans":[[1,2]]}"#,
            r#"{"version":"1.0","prefetch_spans":{}}"#,
            r#"{"version":1,"prefetch_spans":[{}]}"#,
            r#"{"version":"1.0","prefetch_spans":[{}]} x"#,
            r#"[]"#,
        ] {
            assert!(read(bad).is_err(), "{bad}");
        }
        // The range limits of the Go types are read.
        let a = read(&format!(
            r#"{{"version":"1.0","prefetch_spans":[{{"start_span":{},"end_span":{},"priority":{}}}]}}"#,
            i32::MIN,
            i32::MAX,
            i64::MIN
        ))
        .unwrap();
        assert_eq!(a.prefetch_spans[0].priority, i64::MIN);
    }

    #[test]
    fn wrong_version_empty_ranges_and_oversized_bodies_are_refused() {
        for (bad, needle) in [
            (
                r#"{"version":"1.1","prefetch_spans":[{"start_span":0,"end_span":0}]}"#,
                "unsupported version \"1.1\"",
            ),
            (r#"{"prefetch_spans":[{}]}"#, "unsupported version \"\""),
            ("null", "unsupported version"),
            (r#"{"version":"1.0","prefetch_spans":[]}"#, "no span ranges"),
            (
                r#"{"version":"1.0","prefetch_spans":null}"#,
                "no span ranges",
            ),
            (r#"{"version":"1.0"}"#, "no span ranges"),
        ] {
            let err = PrefetchArtifact::from_bytes(bad.as_bytes()).unwrap_err();
            assert!(err.to_string().contains(needle), "{bad}: {err}");
        }
        let mut big =
            br#"{"version":"1.0","prefetch_spans":[{"start_span":0,"end_span":0}]"#.to_vec();
        big.resize(MAX_PREFETCH_ARTIFACT_SIZE, b' ');
        big.push(b'}');
        let err = PrefetchArtifact::from_bytes(&big).unwrap_err();
        assert!(err.to_string().contains("1048577 bytes"), "{err}");
        big.pop();
        big.pop();
        big.push(b'}');
        assert!(PrefetchArtifact::from_bytes(&big).is_ok());
    }

    #[test]
    fn ranges_outside_the_layer_are_refused_by_name() {
        let digest = Digest::from("sha256:aa");
        let artifact = |ranges: Vec<PrefetchSpan>| PrefetchArtifact {
            version: "1.0".into(),
            prefetch_spans: ranges,
        };
        assert!(artifact(vec![span(0, 3), span(5, 9)])
            .validate_against(&digest, 10)
            .is_ok());
        for (ranges, needle) in [
            (
                vec![span(0, 3), span(5, 10)],
                "prefetch artifact sha256:aa: span range 1 (5..=10) ends past the layer's last span (the layer has 10 spans)",
            ),
            (vec![span(-1, 3)], "span range 0 (-1..=3) starts before span 0"),
            (vec![span(4, 3)], "span range 0 (4..=3) ends before it starts"),
        ] {
            let err = artifact(ranges).validate_against(&digest, 10).unwrap_err();
            assert!(
                err.to_string().contains(needle),
                "{err} does not contain {needle}"
            );
            assert!(matches!(err, Error::PrefetchRange { .. }));
        }
        assert!(artifact(vec![span(0, 0)])
            .validate_against(&digest, 0)
            .is_err());
    }
}
