//! curl's `-i` output (status line, headers, body) as the exec transport's curl
//! fallback reads it, arriving in arbitrary chunks. Checks, beyond "no panic":
//! - fed chunk by chunk (parsing after each, as the transport does) the outcome is the
//!   one of parsing all bytes at once: same status, headers and body bytes left over,
//!   or the same error;
//! - a parsed head is a final one (not 1xx) and carries no hop-by-hop header;
//! - what is left after the head is a suffix of the input (body bytes untouched).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use meshgate_fuzz::{chunked, chunks};
use meshgate_transports::fuzzing::curl_head;

type Outcome = Result<Option<(http::StatusCode, http::HeaderMap)>, String>;

fuzz_target!(|data: &[u8]| {
    let (cuts, payload) = chunked(data);

    let mut whole_buf = BytesMut::from(payload);
    let whole = curl_head(&mut whole_buf);

    let mut buf = BytesMut::new();
    let mut incremental: Outcome = Ok(None);
    for chunk in chunks(&cuts, payload) {
        buf.extend_from_slice(chunk);
        if matches!(incremental, Ok(None)) {
            incremental = curl_head(&mut buf);
        }
    }
    assert_eq!(incremental, whole, "chunking changed the head");
    assert_eq!(buf, whole_buf, "chunking changed the bytes left over");
    assert!(
        payload.ends_with(&whole_buf),
        "bytes left over are not the input's tail"
    );

    if let Ok(Some((status, headers))) = &whole {
        assert!(!status.is_informational(), "1xx head returned: {status}");
        for hop in [
            "connection",
            "keep-alive",
            "transfer-encoding",
            "te",
            "upgrade",
        ] {
            assert!(!headers.contains_key(hop), "hop-by-hop {hop} kept");
        }
    }
});
