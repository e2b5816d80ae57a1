//! A meshgate may be another meshgate's node. Each one adds itself to the standard
//! `Via` header (RFC 9110 §7.6.3: "used for … avoiding request loops"), so a request
//! that comes back to a meshgate it already passed (an A→B→A mesh configured by
//! mistake), or that passed more than `[server] max_hops` meshgates, is refused at once
//! with 508 instead of multiplying load around the loop.

use axum::response::Response;
use http::header::VIA;
use http::{HeaderValue, Request};
use tower_http::validate_request::{ValidateRequest, ValidateRequestHeaderLayer};

use crate::errors::{GatewayError, render};

/// This meshgate's name in `Via` (`meshgate-<random>`, new each start: two processes
/// never share it) and the hop limit.
#[derive(Clone)]
pub struct Hops {
    entry: HeaderValue,
    pseudonym: String,
    max_hops: u32,
}

impl Hops {
    pub fn new(pseudonym: String, max_hops: u32) -> Self {
        let entry =
            HeaderValue::try_from(format!("1.1 {pseudonym}")).expect("pseudonym is a token");
        Self {
            entry,
            pseudonym,
            max_hops,
        }
    }

    /// A fresh pseudonym for this process.
    pub fn pseudonym() -> String {
        format!("meshgate-{:08x}", fastrand::u32(..))
    }

    pub fn layer(self) -> ValidateRequestHeaderLayer<Hops> {
        ValidateRequestHeaderLayer::custom(self)
    }

    /// Check the request's `Via`, then add this meshgate to it.
    fn pass(&self, headers: &mut http::HeaderMap) -> Result<(), GatewayError> {
        let mut meshgates = 0u32;
        for value in headers.get_all(VIA) {
            // `Via: 1.1 meshgate-ab12cd34, 1.1 proxy (comment)`: protocol, received-by.
            let text = String::from_utf8_lossy(value.as_bytes());
            for entry in text.split(',') {
                let received_by = entry.split_whitespace().nth(1).unwrap_or_default();
                if received_by == self.pseudonym {
                    return Err(GatewayError::Loop(format!(
                        "this request already passed this meshgate ({}): the mesh has a loop; \
                         check which nodes point back at a meshgate that routes to them",
                        self.pseudonym
                    )));
                }
                meshgates += u32::from(received_by.starts_with("meshgate-"));
            }
        }
        if meshgates >= self.max_hops {
            return Err(GatewayError::TooManyHops {
                hops: meshgates,
                max: self.max_hops,
            });
        }
        headers.append(VIA, self.entry.clone());
        Ok(())
    }
}

impl<B> ValidateRequest<B> for Hops {
    type ResponseBody = axum::body::Body;

    fn validate(&mut self, request: &mut Request<B>) -> Result<(), Response> {
        if super::is_exempt(request.uri().path()) {
            return Ok(());
        }
        self.pass(request.headers_mut()).map_err(|error| {
            tracing::warn!(%error, "request refused");
            render::respond_in(error, request.headers(), request.uri().path())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_and_long_chains_are_refused() {
        let hops = Hops::new("meshgate-0000000a".into(), 2);
        let mut h = http::HeaderMap::new();
        hops.pass(&mut h).unwrap();
        assert_eq!(h.get(VIA).unwrap(), "1.1 meshgate-0000000a");
        assert!(matches!(hops.pass(&mut h), Err(GatewayError::Loop(_))));

        let mut h = http::HeaderMap::new();
        h.insert(
            VIA,
            "1.1 meshgate-1, HTTP/1.1 proxy (squid)".parse().unwrap(),
        );
        hops.pass(&mut h).unwrap();
        assert_eq!(h.get_all(VIA).iter().count(), 2);

        let mut h = http::HeaderMap::new();
        h.insert(
            VIA,
            "1.1 meshgate-1, HTTP/1.1 proxy (squid)".parse().unwrap(),
        );
        h.append(VIA, "1.1 meshgate-2".parse().unwrap());
        let e = hops.pass(&mut h).unwrap_err();
        assert!(
            matches!(e, GatewayError::TooManyHops { hops: 2, max: 2 }),
            "{e}"
        );
    }
}
