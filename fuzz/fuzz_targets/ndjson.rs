//! A node's stream as the gateway cuts and parses it, fed in arbitrary chunks:
//! - the native Ollama relay (`fronts::ollama::stream::native`): it passes on whole
//!   lines only, every byte exactly once, and ends an unterminated last line with `\n`;
//! - the OpenAI SSE event stream the fronts re-encode (`fronts::events::events`): the
//!   same items (chunks, `[DONE]`, the error that ends it) however the bytes are chunked;
//! - stream continuation's cutting of a stream into units (one NDJSON line, one SSE
//!   event): a unit holds at most one event, and cutting loses no event.
#![no_main]

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{FutureExt, Stream, StreamExt};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use libfuzzer_sys::fuzz_target;
use meshgate::fronts::events::{Event, events};
use meshgate::fuzzing::{ollama_lines, unit_end};
use meshgate::telemetry::meter::Meter;
use meshgate_fuzz::{chunked, chunks};
use meshgate_proto::sse::SseDecoder;
use meshgate_transports::{Body, TransportError};

fn body(chunks: &[&[u8]]) -> Body {
    let frames: Vec<Result<Frame<Bytes>, TransportError>> = chunks
        .iter()
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
}

/// Every item of a stream whose sources are all ready.
fn collect<T>(stream: impl Stream<Item = T>) -> Vec<T> {
    let mut stream = Box::pin(stream);
    let mut out = Vec::new();
    loop {
        match stream.next().now_or_never() {
            Some(Some(item)) => out.push(item),
            Some(None) => return out,
            None => panic!("a stream over ready frames is pending"),
        }
    }
}

fn sse_events(chunks: &[&[u8]]) -> Vec<String> {
    let items = collect(events(Arc::from("node"), body(chunks), Meter::default()));
    items
        .into_iter()
        .map(|item| match item {
            Ok(Event::Chunk(json)) => json.to_string(),
            Ok(Event::Done) => "[DONE]".to_owned(),
            Err(e) => format!("error: {e}"),
        })
        .collect()
}

fn decoded(bytes: &[u8]) -> Vec<String> {
    let mut d = SseDecoder::new();
    d.push(bytes);
    std::iter::from_fn(|| d.next_event()).collect()
}

fuzz_target!(|data: &[u8]| {
    let (cuts, payload) = chunked(data);
    let parts = chunks(&cuts, payload);

    // Native NDJSON relay.
    let lines = collect(ollama_lines(body(&parts)));
    let mut joined = Vec::new();
    for line in &lines {
        assert!(line.ends_with(b"\n"), "half a line passed on: {line:?}");
        joined.extend_from_slice(line);
    }
    let mut expected = payload.to_vec();
    if !expected.is_empty() && !expected.ends_with(b"\n") {
        expected.push(b'\n');
    }
    assert_eq!(joined, expected, "bytes lost, doubled or reordered");

    // OpenAI SSE events.
    assert_eq!(
        sse_events(&parts),
        sse_events(&[payload]),
        "chunking changed the events"
    );

    // Continuation's units.
    for ndjson in [true, false] {
        let mut rest = payload;
        let mut from_units = Vec::new();
        while let Some(end) = unit_end(ndjson, rest) {
            assert!(end > 0 && end <= rest.len());
            let (unit, tail) = rest.split_at(end);
            if ndjson {
                assert_eq!(unit.iter().position(|&b| b == b'\n'), Some(end - 1));
            } else {
                let events = decoded(unit);
                assert!(events.len() <= 1, "one unit, several events: {unit:?}");
                from_units.extend(events);
            }
            rest = tail;
        }
        if !ndjson {
            from_units.extend(decoded(rest));
            assert_eq!(
                from_units,
                decoded(payload),
                "cutting into units lost events"
            );
        }
    }
});
