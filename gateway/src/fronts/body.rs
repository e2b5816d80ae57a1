//! Reading a request body once, into `Bytes` (bounded by the body limit), and checking
//! it against the OpenAI request type — so bad input gets a precise 4xx that names the
//! field, and never reaches a node.

use axum::extract::{FromRequest, FromRequestParts, Request};
use bytes::Bytes;
use serde::de::{DeserializeOwned, IgnoredAny};

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
    // serde reads a struct from an array too (`["m", [...]]`); every request meshgate
    // takes is an object, and the fronts edit it as one.
    if raw.trim_ascii_start().first() != Some(&b'{')
        && serde_json::from_slice::<IgnoredAny>(raw).is_ok()
    {
        return Err(GatewayError::InvalidField {
            message: "invalid request: the body must be a JSON object".into(),
            param: None,
        });
    }
    let mut de = serde_json::Deserializer::from_slice(raw);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        // Whether the body is JSON decides the kind, not serde's error category: a
        // mistyped field can come up before a syntax error further on, and serde_json
        // says "expected value" of a number where an enum (a `role`) is expected.
        match serde_json::from_slice::<IgnoredAny>(raw) {
            Err(syntax) => malformed(syntax),
            Ok(_) => invalid(e.path().to_string(), e.into_inner()),
        }
    })?;
    de.end().map_err(malformed)?;
    Ok(value)
}

fn malformed(e: serde_json::Error) -> GatewayError {
    GatewayError::MalformedJson(format!("the request body is not valid JSON: {e}"))
}

/// A JSON body that does not fit the request type at `path`.
fn invalid(path: String, e: serde_json::Error) -> GatewayError {
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
    fn a_mistyped_enum_is_an_invalid_field_not_malformed_json() {
        // Found by the request_parse fuzz target: serde_json reports a number where an
        // enum is expected as "expected value", a syntax error, so valid JSON was called
        // malformed.
        use meshgate_proto::anthropic::MessagesRequest;
        let e = parse::<MessagesRequest>(br#"{"model":"m","messages":[{"role":1}]}"#)
            .expect_err("role is not a role");
        assert_eq!(e.param(), Some("messages[0].role"), "{e}");
    }

    #[test]
    fn a_body_that_is_not_an_object_is_refused() {
        // serde reads a struct from an array: `["m"]` was a valid Responses request, and
        // the front then panicked editing it as an object.
        use meshgate_proto::responses::ResponsesRequest;
        for body in [&br#"["m"]"#[..], br#" ["m", []]"#, b"\"m\"", b"1"] {
            let e = parse::<ResponsesRequest>(body).expect_err("not an object");
            assert!(
                matches!(e, GatewayError::InvalidField { .. }),
                "{body:?}: {e}"
            );
            assert!(err(body).to_string().contains("object"), "{body:?}");
        }
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
            // Found by the request_parse fuzz target: a missing or mistyped field was
            // reported before the syntax error after it.
            br#"{"model":"m"} trailing"#,
            br#"{"model":1,"messages":"#,
        ] {
            assert!(
                matches!(err(body), GatewayError::MalformedJson(_)),
                "{body:?}"
            );
        }
    }
}
