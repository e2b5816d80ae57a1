//! API keys: who may call. Keys are stored as SHA-256 hashes (or read from an
//! environment variable at start and hashed); a presented key is hashed and compared
//! with every configured hash in constant time. Each key carries its own limits and the
//! models it may use. The edge's auth layer finds the caller; the rate limits, model
//! authorization and token budgets read it.

use std::collections::HashSet;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::KeyConfig;
use crate::limits::{RequestLimit, TokenLimit};
use crate::store::Store;

pub struct ApiKey {
    pub name: Arc<str>,
    digest: [u8; 32],
    models: Option<HashSet<String>>,
    pub requests: Option<RequestLimit>,
    pub tokens: Option<Arc<TokenLimit>>,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the digest: it is as good as the key for an offline guess.
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ApiKey {
    pub fn allows(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|m| m.contains(model))
    }
}

/// The authenticated caller, in the request's extensions.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<ApiKey>);

/// The configured keys, each with the entry it was made from (a reload keeps a key
/// whose entry is unchanged, and with it the state of its limits).
#[derive(Debug, Default)]
pub struct Keys(Vec<(KeyConfig, Arc<ApiKey>)>);

pub fn sha256(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// What names a key's limits in the shared store: derived from its hash, not the hash
/// itself (which is as good as the key for an offline guess) and not its name (two
/// replicas may name the same key differently).
fn store_id(digest: &[u8; 32]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"meshgate store key id\0");
    hasher.update(digest);
    hex::encode(&hasher.finalize()[..12])
}

impl Keys {
    pub fn from_config(configs: &[KeyConfig], store: Option<&Arc<Store>>) -> Result<Self, String> {
        Self::reusing(configs, &Keys::default(), store)
    }

    /// The keys of `configs`, taking those whose entry is unchanged from `previous`;
    /// their limits are kept in `store` when there is one.
    pub fn reusing(
        configs: &[KeyConfig],
        previous: &Keys,
        store: Option<&Arc<Store>>,
    ) -> Result<Self, String> {
        let mut keys = Vec::with_capacity(configs.len());
        for c in configs {
            if let Some((_, same)) = previous.0.iter().find(|(p, _)| p == c) {
                keys.push((c.clone(), Arc::clone(same)));
                continue;
            }
            let digest = match (&c.sha256, &c.key_env) {
                (Some(hex_digest), _) => {
                    let mut digest = [0u8; 32];
                    hex::decode_to_slice(hex_digest, &mut digest)
                        .map_err(|e| format!("key `{}`: sha256: {e}", c.name))?;
                    digest
                }
                (None, Some(var)) => {
                    let key = std::env::var(var)
                        .map_err(|_| format!("key `{}`: {var} is not set", c.name))?;
                    sha256(key.as_bytes())
                }
                (None, None) => return Err(format!("key `{}`: set sha256 or key_env", c.name)),
            };
            let id = store_id(&digest);
            let key = Arc::new(ApiKey {
                name: c.name.as_str().into(),
                digest,
                models: c.models.as_ref().map(|m| m.iter().cloned().collect()),
                requests: c.requests_per_minute.map(|rpm| {
                    RequestLimit::new(rpm, c.burst, store, &format!("requests:key:{id}"))
                }),
                tokens: c
                    .tokens_per_minute
                    .map(|tpm| Arc::new(TokenLimit::new(tpm, store, &format!("tokens:key:{id}")))),
            });
            keys.push((c.clone(), key));
        }
        Ok(Self(keys))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The key whose hash matches, comparing with every key so the time taken does not
    /// depend on which one (if any) matched.
    pub fn find(&self, presented: &[u8]) -> Option<Arc<ApiKey>> {
        let digest = sha256(presented);
        let mut found = None;
        for (_, key) in &self.0 {
            if bool::from(key.digest.ct_eq(&digest)) {
                found = Some(Arc::clone(key));
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        let hash = hex::encode(sha256(b"sk-right"));
        Keys::from_config(
            &[KeyConfig {
                name: "app".into(),
                sha256: Some(hash),
                key_env: None,
                models: Some(vec!["llama3.2".into()]),
                requests_per_minute: None,
                burst: None,
                tokens_per_minute: None,
            }],
            None,
        )
        .unwrap()
    }

    #[test]
    fn finds_only_the_right_key() {
        let keys = keys();
        assert_eq!(&*keys.find(b"sk-right").unwrap().name, "app");
        assert!(keys.find(b"sk-wrong").is_none());
        assert!(keys.find(b"").is_none());
    }

    #[test]
    fn allowed_models() {
        let key = keys().find(b"sk-right").unwrap();
        assert!(key.allows("llama3.2"));
        assert!(!key.allows("qwen2.5"));
    }

    #[test]
    fn debug_never_shows_the_digest() {
        let key = keys().find(b"sk-right").unwrap();
        let shown = format!("{key:?}");
        assert!(
            !shown.contains(&hex::encode(sha256(b"sk-right"))[..8]),
            "{shown}"
        );
    }
}
