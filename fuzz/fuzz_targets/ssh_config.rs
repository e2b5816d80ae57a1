//! OpenSSH client config text, as meshgate reads it without `ssh`: the `Host` alias
//! listing with `Include` (`hosts::read`), the pure-Rust resolution of one alias
//! (`SshTarget::resolve` with `Resolver::PureRust`), and OpenSSH pattern lists.
//!
//! Input: an alias line, then up to four files `a`..`d` separated by NUL bytes, written
//! to a private temp directory (`a` is the config). Inputs naming paths outside it
//! (`/`, `~`) are skipped, so a run only ever reads its own files. Checks, beyond "no
//! panic" and "no hang" (an `Include` web must stay cheap):
//! - listed aliases are unique, not patterns, and all match the pattern `*`;
//! - `matches_list` agrees with a plain recursive reference matcher;
//! - a resolved target is for the alias asked, and its ProxyJump chain is bounded.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use meshgate_transports::ssh::hosts;
use meshgate_transports::ssh::{ResolveOptions, Resolver, SshTarget};

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("meshgate-fuzz-ssh-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.contains(['/', '~']) {
        return;
    }
    let (alias, rest) = text.split_once('\n').unwrap_or((text, ""));

    // Pattern lists against names, on the raw strings.
    let reference = reference_list(alias, rest.lines().next().unwrap_or(""));
    assert_eq!(
        hosts::matches_list(alias, rest.lines().next().unwrap_or("")),
        reference,
        "matches_list({alias:?}, ..)"
    );

    let dir = dir();
    let files: Vec<&str> = rest.splitn(4, '\0').collect();
    for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
        std::fs::write(dir.join(name), files.get(i).copied().unwrap_or("")).unwrap();
    }
    let config = dir.join("a");

    let list = hosts::read(&config).expect("the config exists");
    for (i, alias) in list.aliases.iter().enumerate() {
        assert!(!hosts::is_pattern(alias), "pattern listed: {alias:?}");
        assert!(
            !list.aliases[..i].contains(alias),
            "listed twice: {alias:?}"
        );
    }
    assert_eq!(list.matching("*").count(), list.aliases.len());
    assert!(list.files.iter().all(|f| f.starts_with(dir)));

    // ssh2-config follows Include itself, from the real home directory: skipped.
    if files[0].to_ascii_lowercase().contains("include") {
        return;
    }
    let options = ResolveOptions {
        config_path: Some(config),
        resolver: Resolver::PureRust,
        ..Default::default()
    };
    if let Ok(target) = SshTarget::resolve(alias, &options) {
        assert_eq!(target.alias, alias);
        let mut hops = 0;
        let mut jump = &target.jump;
        while let Some(hop) = jump {
            hops += 1;
            jump = &hop.jump;
        }
        assert!(hops <= 10, "{hops} hops");
    }
});

/// OpenSSH's pattern-list rule, written plainly: some pattern matches, no `!` one does.
fn reference_list(patterns: &str, name: &str) -> bool {
    let name: Vec<char> = name.chars().collect();
    let mut matched = false;
    for p in patterns.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (negated, p) = match p.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, p),
        };
        let p: Vec<char> = p.chars().collect();
        if glob(&p, &name) {
            if negated {
                return false;
            }
            matched = true;
        }
    }
    matched
}

/// `*` any run, `?` one character; dynamic programming, so hostile patterns are cheap.
fn glob(p: &[char], n: &[char]) -> bool {
    // ok[j]: p[..i] matches n[..j].
    let mut ok = vec![false; n.len() + 1];
    ok[0] = true;
    for &c in p {
        let mut next = vec![false; n.len() + 1];
        if c == '*' {
            let mut any = false;
            for j in 0..=n.len() {
                any |= ok[j];
                next[j] = any;
            }
        } else {
            for j in 1..=n.len() {
                next[j] = ok[j - 1] && (c == '?' || c == n[j - 1]);
            }
        }
        ok = next;
    }
    ok[n.len()]
}
