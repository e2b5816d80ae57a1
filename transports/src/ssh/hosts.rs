//! Which `Host` aliases an OpenSSH client config names, and OpenSSH's pattern matching,
//! so `[[nodes]] ssh = "gpu-*"` can become one node per matching alias.
//!
//! Resolving one alias's settings is `ssh -G`'s job (see `config.rs`); listing the
//! aliases is not something `ssh` or `ssh2-config` offers, so this reads the `Host` lines
//! itself, following `Include` as OpenSSH does (relative paths from `~/.ssh`, globs).

use std::path::{Path, PathBuf};

use super::config::expand_home;

/// The concrete aliases of a config (patterns and negations left out), in file order
/// without duplicates, and every file read, so a watcher can notice an edit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostList {
    pub aliases: Vec<String>,
    pub files: Vec<PathBuf>,
}

impl HostList {
    /// The aliases matching an OpenSSH pattern list (`gpu-*`, `gpu-?,!gpu-old`).
    pub fn matching<'a>(&'a self, patterns: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.aliases
            .iter()
            .map(String::as_str)
            .filter(move |alias| matches_list(patterns, alias))
    }
}

/// Read the `Host` aliases of `config` and the files it includes. A missing top file is
/// an error; a missing include is skipped (OpenSSH skips it too).
pub fn read(config: &Path) -> std::io::Result<HostList> {
    let mut list = HostList::default();
    let text = std::fs::read_to_string(config)?;
    list.files.push(config.to_path_buf());
    let base = config
        .parent()
        .map_or_else(|| expand_home(Path::new("~/.ssh")), Path::to_path_buf);
    scan(&text, &base, &mut list, 0);
    Ok(list)
}

/// Whether the text has any pattern character: such a `ssh` value names several hosts.
pub fn is_pattern(value: &str) -> bool {
    value.contains(['*', '?', '!', ','])
}

fn scan(text: &str, base: &Path, list: &mut HostList, depth: usize) {
    // OpenSSH stops at 16 levels of Include; so do we (and so a loop ends).
    if depth > 16 {
        return;
    }
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (keyword, rest) = split_keyword(line);
        if keyword.eq_ignore_ascii_case("host") {
            for word in words(rest) {
                if !is_pattern(&word) && !list.aliases.contains(&word) {
                    list.aliases.push(word);
                }
            }
        } else if keyword.eq_ignore_ascii_case("include") {
            for word in words(rest) {
                for path in include_paths(&word, base) {
                    // A file read once has given its aliases and followed its includes:
                    // reading it again adds nothing, and an Include loop that names a
                    // file twice would otherwise take 2^16 reads.
                    if list.files.contains(&path) {
                        continue;
                    }
                    if let Ok(text) = std::fs::read_to_string(&path) {
                        list.files.push(path);
                        scan(&text, base, list, depth + 1);
                    }
                }
            }
        }
    }
}

/// `Keyword value`, `Keyword=value` or `Keyword = value`.
fn split_keyword(line: &str) -> (&str, &str) {
    let end = line
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(line.len());
    let rest = line[end..].trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest).trim_start();
    (&line[..end], rest)
}

/// Whitespace-separated words, double quotes grouping.
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// An `Include` argument as files: `~` expanded, relative to `base` (`~/.ssh` for the
/// user's config), a glob in the file name matched against the directory's entries.
fn include_paths(word: &str, base: &Path) -> Vec<PathBuf> {
    let path = expand_home(Path::new(word));
    let path = if path.is_absolute() {
        path
    } else {
        base.join(path)
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !is_pattern(&name) {
        return vec![path];
    }
    let Some(dir) = path.parent() else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| matches_one(&name, &e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    // OpenSSH reads glob results in sorted order.
    found.sort();
    found
}

/// OpenSSH's pattern-list rule: a comma-separated list matches if some pattern matches
/// and no negated (`!`) one does.
pub fn matches_list(patterns: &str, name: &str) -> bool {
    let mut matched = false;
    for pattern in patterns.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match pattern.strip_prefix('!') {
            Some(negated) if matches_one(negated, name) => return false,
            Some(_) => {}
            None => matched |= matches_one(pattern, name),
        }
    }
    matched
}

/// `*` any run of characters, `?` exactly one; case-sensitive like OpenSSH's host names
/// after it lowercases them (aliases are compared as written).
fn matches_one(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative wildcard match with one backtrack point: linear in practice, never
    // exponential on hostile patterns.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        // `*` first: a `*` in the name is no reason to take the pattern's as a letter.
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_openssh_does() {
        assert!(matches_list("gpu-*", "gpu-1"));
        assert!(matches_list("gpu-*", "gpu-"));
        assert!(!matches_list("gpu-*", "cpu-1"));
        assert!(matches_list("gpu-?", "gpu-7"));
        assert!(!matches_list("gpu-?", "gpu-17"));
        assert!(matches_list("gpu-*,!gpu-old", "gpu-new"));
        assert!(!matches_list("gpu-*,!gpu-old", "gpu-old"));
        assert!(!matches_list("!gpu-old", "anything"));
        assert!(matches_list("*a*b*c", "xaxxbxxxc"));
        assert!(!matches_list("*a*b*c", "xaxxbxxx"));
        assert!(!matches_list(&"*a".repeat(40), &"a".repeat(30)));
        // Found by the ssh_config fuzz target: a `*` facing a `*` in the name was
        // matched as a letter, and the rest of the name then failed.
        assert!(matches_list("gp]u-*", "gp]u-*,"));
        assert!(matches_list("a*", "a*b"));
    }

    #[test]
    fn an_include_loop_reads_each_file_once() {
        // Found by fuzz/fuzz_targets/ssh_config.rs (a timeout): every file read again
        // at each of 16 levels, three times over, is 3^17 reads.
        let dir = std::env::temp_dir().join(format!("mg-hosts-loop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a"), "Host gpu-1\nInclude a a b\n").unwrap();
        std::fs::write(dir.join("b"), "Host gpu-2\nInclude a b b\n").unwrap();
        let list = read(&dir.join("a")).unwrap();
        assert_eq!(list.aliases, ["gpu-1", "gpu-2"]);
        assert_eq!(list.files, [dir.join("a"), dir.join("b")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lists_concrete_aliases_through_includes() {
        let dir = std::env::temp_dir().join(format!("mg-hosts-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("conf.d")).unwrap();
        std::fs::write(
            dir.join("config"),
            "Host gpu-1 gpu-2\n  HostName 10.0.0.1\nHost *\n  User me\n\
             Include conf.d/*.conf\nHost=\"gpu-3\" !gpu-x gpu-?\nMatch host x\n",
        )
        .unwrap();
        std::fs::write(dir.join("conf.d/b.conf"), "Host gpu-5\n").unwrap();
        std::fs::write(dir.join("conf.d/a.conf"), "host gpu-4 gpu-1\n").unwrap();
        std::fs::write(dir.join("conf.d/skip.txt"), "Host nope\n").unwrap();
        let list = read(&dir.join("config")).unwrap();
        assert_eq!(list.aliases, ["gpu-1", "gpu-2", "gpu-4", "gpu-5", "gpu-3"]);
        assert_eq!(list.files.len(), 3);
        let gpus: Vec<_> = list.matching("gpu-*,!gpu-2").collect();
        assert_eq!(gpus, ["gpu-1", "gpu-4", "gpu-5", "gpu-3"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
