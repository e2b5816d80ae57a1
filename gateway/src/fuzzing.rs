//! The stream parsers the fuzz targets in `fuzz/` feed that are private to this crate,
//! re-exported as they are (behind the `fuzzing` feature, so the API does not grow).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use meshgate_transports::Body;

use crate::fronts::continuation::Format;
use crate::telemetry::meter::Meter;

/// A native Ollama stream relayed in whole lines (`fronts::ollama::stream::native`).
pub fn ollama_lines(body: Body) -> impl Stream<Item = Bytes> {
    use futures_util::StreamExt;
    crate::fronts::ollama::stream::native(Arc::from("node"), body, Meter::default()).map(|line| {
        match line {
            Ok(line) => line,
            Err(never) => match never {},
        }
    })
}

/// Where the first whole SSE event (`ndjson` false) or NDJSON line ends in `buf`, as
/// stream continuation cuts a node's stream.
pub fn unit_end(ndjson: bool, buf: &[u8]) -> Option<usize> {
    let format = if ndjson { Format::Lines } else { Format::Sse };
    format.unit_end(buf)
}
