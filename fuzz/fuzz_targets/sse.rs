//! `SseDecoder` fed in arbitrary chunks. Checks, beyond "no panic":
//! - the events are the same however the bytes are chunked (and whether they are
//!   drained after every chunk or once at the end);
//! - they are the events of a plain reference reading of the same bytes (lines split
//!   at `\n`, one trailing `\r` dropped, `data:` lines joined with `\n`, a blank line
//!   ending an event that has data);
//! - `has_partial` is true exactly when bytes after the last `\n` or data of an
//!   unfinished event remain.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate_fuzz::{chunked, chunks};
use meshgate_proto::sse::SseDecoder;

fuzz_target!(|data: &[u8]| {
    let (cuts, payload) = chunked(data);

    let mut incremental = SseDecoder::new();
    let mut got = Vec::new();
    for chunk in chunks(&cuts, payload) {
        incremental.push(chunk);
        while let Some(event) = incremental.next_event() {
            got.push(event);
        }
        assert_eq!(
            incremental.next_event(),
            None,
            "drained decoder yields more"
        );
    }

    let mut at_once = SseDecoder::new();
    for chunk in chunks(&cuts, payload) {
        at_once.push(chunk);
    }
    let mut whole = Vec::new();
    while let Some(event) = at_once.next_event() {
        whole.push(event);
    }
    assert_eq!(got, whole, "chunking changed the events");

    let (expected, pending) = reference(payload);
    assert_eq!(got, expected, "differs from the reference reading");
    assert_eq!(incremental.has_partial(), pending);
    assert_eq!(at_once.has_partial(), pending);
});

/// The events of `bytes`, and whether an unfinished event is left.
fn reference(bytes: &[u8]) -> (Vec<String>, bool) {
    let mut events = Vec::new();
    let mut data: Option<String> = None;
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    let tail = lines.pop().unwrap_or_default();
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            events.extend(data.take());
        } else if let Some(value) = line.strip_prefix(b"data:") {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            let value = String::from_utf8_lossy(value);
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(&value);
                }
                None => data = Some(value.into_owned()),
            }
        }
    }
    (events, !tail.is_empty() || data.is_some())
}
