//! The parsers the fuzz targets in `fuzz/` feed that are private to this crate,
//! re-exported as they are (behind the `fuzzing` feature, so the API does not grow).

use bytes::BytesMut;
use http::{HeaderMap, StatusCode};

/// curl's `-i` output head, as the exec transport's curl fallback reads it: `Ok(None)`
/// until a whole head has arrived; the head is consumed from `buf`.
pub fn curl_head(buf: &mut BytesMut) -> Result<Option<(StatusCode, HeaderMap)>, String> {
    crate::ssh::exec::curl::parse_head(buf).map(|head| head.map(|h| (h.status, h.headers)))
}
