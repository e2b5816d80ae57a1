//! `x-request-id` for requests that come without one: a random UUID (version 4 layout)
//! from the thread's fast generator. tower-http's `MakeRequestUuid` draws from the
//! operating system's random source (a system call per request); a request id needs to
//! be unique, not unpredictable.

use http::{HeaderValue, Request};
use tower_http::request_id::{MakeRequestId, RequestId};

#[derive(Clone, Copy, Debug, Default)]
pub struct MakeRequestUuid;

impl MakeRequestId for MakeRequestUuid {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        let value = HeaderValue::from_bytes(&uuid_v4(fastrand::u128(..)))
            .expect("hex digits and dashes are a valid header value");
        Some(RequestId::new(value))
    }
}

/// `bits` as a version-4, RFC 4122-variant UUID in its 36-character text form.
fn uuid_v4(bits: u128) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = (bits & !(0xf << 76) & !(0b11 << 62)) | (0x4 << 76) | (0b10 << 62);
    let mut out = [b'-'; 36];
    let mut nibble = 32;
    for (i, slot) in out.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            continue;
        }
        nibble -= 1;
        *slot = HEX[((bits >> (nibble * 4)) & 0xf) as usize];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_like_a_version_4_uuid() {
        let text = uuid_v4(u128::MAX);
        let text = std::str::from_utf8(&text).unwrap();
        assert_eq!(text, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let text = uuid_v4(0);
        assert_eq!(
            std::str::from_utf8(&text).unwrap(),
            "00000000-0000-4000-8000-000000000000"
        );
        let a = uuid_v4(fastrand::u128(..));
        let b = uuid_v4(fastrand::u128(..));
        assert_ne!(a, b);
    }
}
