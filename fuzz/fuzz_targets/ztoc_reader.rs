//! `Ztoc::from_bytes` on arbitrary bytes: never panics, and whatever it
//! accepts serializes to bytes that parse back to an equal value. (Not
//! byte-equal to the input: the reader sorts and dedups PAX records and a
//! hand-made buffer need not follow the reference writer's layout.)

#![no_main]

use libfuzzer_sys::fuzz_target;
use sochi_format::{format_mod_time, parse_mod_time, Ztoc, ZtocInfo};

fuzz_target!(|data: &[u8]| {
    let Ok(ztoc) = Ztoc::from_bytes(data) else {
        return;
    };
    let bytes = ztoc.to_bytes();
    let again = match Ztoc::from_bytes(&bytes) {
        Ok(again) => again,
        Err(err) => panic!("re-serialized zTOC does not parse: {err}"),
    };
    assert_eq!(
        again, ztoc,
        "re-serialized zTOC parses to a different value"
    );
    // Our own output is canonical: it re-serializes to itself.
    assert!(
        again.to_bytes() == bytes,
        "re-serialization is not idempotent"
    );
    assert_eq!(ztoc.try_to_bytes().ok().as_deref(), Some(&bytes[..]));

    // from_bytes checked the geometry and the header offsets: both succeed.
    let geometry = match ztoc.span_geometry() {
        Ok(geometry) => geometry,
        Err(err) => panic!("accepted zTOC has no span geometry: {err}"),
    };
    if let Err(err) = ztoc.tar_header_offsets() {
        panic!("accepted zTOC has bad header offsets: {err}");
    }
    for span in 0..geometry.span_count() {
        let start = geometry.start_compressed(sochi_format::SpanId(span));
        let end = geometry.end_compressed(sochi_format::SpanId(span));
        assert!(
            start.is_some() && end.is_some(),
            "span {span} has no bounds"
        );
        let _ = geometry.start_uncompressed(sochi_format::SpanId(span));
        let _ = geometry.end_uncompressed(sochi_format::SpanId(span));
        let _ = geometry.checkpoint(sochi_format::SpanId(span));
    }
    assert!(geometry.start_compressed(sochi_format::SpanId(geometry.span_count())).is_none());
    for entry in &ztoc.toc {
        let offset = u64::try_from(entry.uncompressed_offset).unwrap_or(0);
        let size = u64::try_from(entry.uncompressed_size).unwrap_or(0);
        let _ = geometry.span_of(offset);
        let _ = geometry.span_of(offset.saturating_add(size));
        if let Some((seconds, nanos)) = parse_mod_time(&entry.mod_time) {
            assert!(nanos < 1_000_000_000);
            // Our own text form parses back to the same instant (an offset
            // may move it out of years 0..=9999: then there is no text).
            let text = format_mod_time(seconds, nanos);
            if !text.is_empty() {
                assert_eq!(parse_mod_time(&text), Some((seconds, nanos)), "{text}");
            }
        }
    }
    let _ = ZtocInfo::new(&ztoc, data.len() as u64);
});
