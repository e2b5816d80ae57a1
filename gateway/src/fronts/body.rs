//! Reading a request body once, into `Bytes` (bounded by the body limit), and checking
//! it against the OpenAI request type — so bad input gets a precise 4xx that names the
//! field, and never reaches a node.

use axum::extract::{FromRequest, FromRequestParts, Request};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::errors::GatewayError;
use crate::request::Inbound;
use crate::state::AppState;

impl<S: Send + Sync> FromRequestParts<S> for Inbound {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Inbound::new(&parts.headers, &parts.extensions))
    }
}

/// A validated request: the typed view meshgate reads, and the original bytes that
/// are forwarded (so fields meshgate does not know reach the node untouched).
pub struct Checked<T> {
    pub value: T,
    pub raw: Bytes,
}

impl<T: DeserializeOwned> FromRequest<AppState> for Checked<T> {
    type Rejection = GatewayError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        // A declared length over the limit is refused before a byte is read (and before
        // hyper answers `Expect: 100-continue`).
        let limit = state.limits.max_request_bytes;
        if http_body::Body::size_hint(req.body()).lower() > limit as u64 {
            return Err(GatewayError::PayloadTooLarge { limit });
        }
        let after = state.limits.body_timeout;
        let read = tokio::time::timeout(after, Bytes::from_request(req, state));
        let raw = read
            .await
            .map_err(|_| GatewayError::RequestTimeout { after })?;
        let raw = raw.map_err(|rejection| {
            if rejection.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
                GatewayError::PayloadTooLarge { limit }
            } else {
                GatewayError::MalformedJson(format!(
                    "could not read the request body: {}",
                    rejection.body_text()
                ))
            }
        })?;
        let value = parse(&raw)?;
        Ok(Self { value, raw })
    }
}

pub fn parse<T: DeserializeOwned>(raw: &[u8]) -> Result<T, GatewayError> {
    if raw.is_empty() {
        return Err(GatewayError::MalformedJson(
            "the request body is empty; send a JSON object".into(),
        ));
    }
    if let Err(e) = std::str::from_utf8(raw) {
        return Err(GatewayError::MalformedJson(format!(
            "the request body is not valid UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        )));
    }
    let mut de = serde_json::Deserializer::from_slice(raw);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        invalid(path, e.into_inner())
    })?;
    de.end().map_err(|e| invalid(".".into(), e))?;
    Ok(value)
}

fn invalid(path: String, e: serde_json::Error) -> GatewayError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            GatewayError::MalformedJson(format!("the request body is not valid JSON: {e}"))
        }
        Category::Data => {
            let message = e.to_string();
            // serde reports a missing field at the parent's path; name the field itself.
            let missing = message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next())
                .map(|field| {
                    if path == "." {
                        field.to_owned()
                    } else {
                        format!("{path}.{field}")
                    }
                });
            let param = missing.or_else(|| (path != ".").then_some(path));
            let message = match &param {
                Some(p) => format!("invalid request: `{p}`: {}", strip_position(&message)),
                None => format!("invalid request: {}", strip_position(&message)),
            };
            GatewayError::InvalidField { message, param }
        }
    }
}

/// serde_json appends " at line L column C"; with the field path named, it is noise.
fn strip_position(message: &str) -> &str {
    message
        .rsplit_once(" at line ")
        .map_or(message, |(head, _)| head)
}

#[cfg(test)]
mod tests {
    use meshgate_proto::openai::ChatCompletionRequest;

    use super::*;

    fn err(body: &[u8]) -> GatewayError {
        parse::<ChatCompletionRequest>(body).expect_err("should be rejected")
    }

    #[test]
    fn names_the_offending_field() {
        let e = err(br#"{"model":"m","messages":[{"role":1}]}"#);
        assert_eq!(e.param(), Some("messages[0].role"));
        let e = err(br#"{"messages":[]}"#);
        assert_eq!(e.param(), Some("model"));
        assert!(e.to_string().contains("missing field"), "{e}");
        let e = err(br#"{"model":"m","messages":[],"stream":"yes"}"#);
        assert_eq!(e.param(), Some("stream"));
    }

    #[test]
    fn syntax_errors_and_bad_bytes_are_malformed_json() {
        for body in [
            &b"{"[..],
            b"not json",
            b"",
            b"{\"model\":\"\xff\"}",
            br#"{"model":"m","messages":[]} trailing"#,
        ] {
            assert!(
                matches!(err(body), GatewayError::MalformedJson(_)),
                "{body:?}"
            );
        }
    }
}
