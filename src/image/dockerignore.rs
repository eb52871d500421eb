//! `.dockerignore` with Docker's own semantics (moby/patternmatcher), not `.gitignore`'s:
//! patterns are anchored at the context root, `**` spans any number of path segments,
//! `!pattern` re-includes, the last matching pattern wins, and a pattern that matches a
//! directory excludes everything below it.

use std::fmt;

/// One compiled pattern. `text` is the cleaned pattern (no `!`), kept for the
/// "can an exception re-include something below this excluded directory" check.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    text: String,
    exclusion: bool,
    kind: MatchKind,
}

/// Mirrors patternmatcher's match types: its fast paths are not pure optimisations
/// (e.g. `**foo` is a suffix match and matches `afoo`), so they are reproduced as-is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MatchKind {
    Exact,
    /// `dir/**`: any path starting with `dir/`.
    Prefix(String),
    /// `**/name`: any path ending with `/name`, or exactly `name`.
    Suffix(String),
    Glob(Vec<Token>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Char(char),
    /// `*`: any run of characters without `/`.
    Star,
    /// `?`: one character that is not `/`.
    Question,
    /// `**/` (or `**` mid-pattern): empty, or anything ending in `/`.
    AnyDirs,
    /// `**` at the end (not at the start): anything.
    AnyTail,
    Class {
        negated: bool,
        items: Vec<ClassItem>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ClassItem {
    One(char),
    Range(char, char),
}

/// A parsed `.dockerignore`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
}

/// A pattern Docker would reject (an unterminated `[` class, a lone `!`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError {
    pub pattern: String,
    pub reason: &'static str,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid .dockerignore pattern `{}`: {}",
            self.pattern, self.reason
        )
    }
}

impl DockerIgnore {
    /// Parse `.dockerignore` text exactly as Docker's ignorefile.ReadAll does:
    /// `#` comments only at the start of a line, surrounding whitespace trimmed,
    /// paths cleaned (`./a/../b` -> `b`) and a leading `/` dropped.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let mut patterns = Vec::new();
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let mut pattern = line.trim();
            if pattern.is_empty() {
                continue;
            }
            let exclusion = pattern.starts_with('!');
            if exclusion {
                pattern = pattern[1..].trim();
                if pattern.is_empty() {
                    return Err(PatternError {
                        pattern: "!".into(),
                        reason: "illegal exclusion pattern (nothing after `!`)",
                    });
                }
            }
            let mut cleaned = if pattern.is_empty() {
                String::new()
            } else {
                clean_path(pattern)
            };
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            patterns.push(compile(cleaned, exclusion)?);
        }
        Ok(Self { patterns })
    }

    /// Append an exception (`!path`): used to force the Dockerfile and `.dockerignore` in,
    /// as the docker CLI does when they match an exclude.
    pub fn keep(&mut self, path: &str) -> Result<(), PatternError> {
        self.patterns.push(compile(clean_path(path), true)?);
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exclusion)
    }

    /// Is `path` (relative to the context root, `/`-separated) excluded? A pattern matches the
    /// path itself or any of its parent directories; the last matching pattern decides.
    pub fn is_excluded(&self, path: &str) -> bool {
        let mut excluded = false;
        let parents: Vec<&str> = match path.rfind('/') {
            Some(i) => path[..i].split('/').collect(),
            None => Vec::new(),
        };
        for pattern in &self.patterns {
            // An exclude can only flip "kept" and an exception can only flip "excluded".
            if pattern.exclusion != excluded {
                continue;
            }
            let mut matched = pattern.matches(path);
            if !matched {
                let mut prefix = String::new();
                for dir in &parents {
                    if !prefix.is_empty() {
                        prefix.push('/');
                    }
                    prefix.push_str(dir);
                    if pattern.matches(&prefix) {
                        matched = true;
                        break;
                    }
                }
            }
            if matched {
                excluded = !pattern.exclusion;
            }
        }
        excluded
    }

    /// For an excluded directory: must the walk still descend because an exception may
    /// re-include something below it? Docker's rule: an exception whose text starts with
    /// `dir/` (so `!**/keep` does not reach into an excluded directory).
    pub fn may_reinclude_below(&self, dir: &str) -> bool {
        let dir_slash = format!("{dir}/");
        self.patterns
            .iter()
            .filter(|p| p.exclusion)
            .any(|p| format!("{}/", p.text).starts_with(&dir_slash))
    }
}

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        match &self.kind {
            MatchKind::Exact => path == self.text,
            MatchKind::Prefix(prefix) => path.starts_with(prefix.as_str()),
            MatchKind::Suffix(suffix) => {
                path.ends_with(suffix.as_str())
                    || suffix.strip_prefix('/').is_some_and(|rest| path == rest)
            }
            MatchKind::Glob(tokens) => {
                let chars: Vec<char> = path.chars().collect();
                glob_match(tokens, &chars)
            }
        }
    }
}

/// Go's filepath.Clean for `/`-separated paths.
fn clean_path(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

fn compile(text: String, exclusion: bool) -> Result<Pattern, PatternError> {
    #[derive(PartialEq)]
    enum Kind {
        Exact,
        Prefix,
        Suffix,
        Glob,
    }
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut kind = Kind::Exact;
    let mut i = 0;
    while i < chars.len() {
        let ch = chars[i];
        let first = i == 0;
        i += 1;
        match ch {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i >= chars.len() {
                    if kind == Kind::Exact {
                        kind = Kind::Prefix;
                    } else {
                        kind = Kind::Glob;
                    }
                    tokens.push(Token::AnyTail);
                } else {
                    kind = Kind::Glob;
                    tokens.push(Token::AnyDirs);
                }
                if first {
                    kind = Kind::Suffix;
                }
            }
            '*' => {
                kind = Kind::Glob;
                tokens.push(Token::Star);
            }
            '?' => {
                kind = Kind::Glob;
                tokens.push(Token::Question);
            }
            '\\' => match chars.get(i) {
                Some(next) => {
                    tokens.push(Token::Char(*next));
                    i += 1;
                }
                None => tokens.push(Token::Char('\\')),
            },
            '[' => {
                kind = Kind::Glob;
                let (class, next) = parse_class(&chars, i).ok_or_else(|| PatternError {
                    pattern: text.clone(),
                    reason: "unterminated `[`",
                })?;
                tokens.push(class);
                i = next;
            }
            other => tokens.push(Token::Char(other)),
        }
    }
    let kind = match kind {
        Kind::Exact => MatchKind::Exact,
        // The fast paths compare the raw pattern text, as patternmatcher does.
        Kind::Prefix => MatchKind::Prefix(text[..text.len().saturating_sub(2)].to_string()),
        Kind::Suffix => MatchKind::Suffix(text.get(2..).unwrap_or_default().to_string()),
        Kind::Glob => MatchKind::Glob(tokens),
    };
    Ok(Pattern {
        text,
        exclusion,
        kind,
    })
}

/// Parse a `[...]` class starting after the `[`; returns the token and the index after `]`.
fn parse_class(chars: &[char], mut i: usize) -> Option<(Token, usize)> {
    let negated = matches!(chars.get(i), Some('^'));
    if negated {
        i += 1;
    }
    let mut items = Vec::new();
    let mut first = true;
    loop {
        let mut ch = *chars.get(i)?;
        i += 1;
        if ch == ']' && !first {
            return Some((Token::Class { negated, items }, i));
        }
        first = false;
        if ch == '\\' {
            ch = *chars.get(i)?;
            i += 1;
        }
        if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|c| *c != ']') {
            let mut hi = *chars.get(i + 1)?;
            i += 2;
            if hi == '\\' {
                hi = *chars.get(i)?;
                i += 1;
            }
            items.push(ClassItem::Range(ch, hi));
        } else {
            items.push(ClassItem::One(ch));
        }
    }
}

/// Backtracking matcher over the whole path (the regex is anchored at both ends).
fn glob_match(tokens: &[Token], path: &[char]) -> bool {
    let Some((token, rest)) = tokens.split_first() else {
        return path.is_empty();
    };
    match token {
        Token::Char(c) => path.first() == Some(c) && glob_match(rest, &path[1..]),
        Token::Question => path.first().is_some_and(|c| *c != '/') && glob_match(rest, &path[1..]),
        Token::Class { negated, items } => {
            let Some(c) = path.first() else { return false };
            let hit = items.iter().any(|item| match item {
                ClassItem::One(x) => x == c,
                ClassItem::Range(lo, hi) => lo <= c && c <= hi,
            });
            hit != *negated && glob_match(rest, &path[1..])
        }
        Token::Star => {
            // Try every split point up to the next `/`.
            let limit = path.iter().position(|c| *c == '/').unwrap_or(path.len());
            (0..=limit).any(|n| glob_match(rest, &path[n..]))
        }
        Token::AnyDirs => {
            glob_match(rest, path)
                || path
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| **c == '/')
                    .any(|(i, _)| glob_match(rest, &path[i + 1..]))
        }
        Token::AnyTail => (0..=path.len()).any(|n| glob_match(rest, &path[n..])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignore(text: &str) -> DockerIgnore {
        DockerIgnore::parse(text).expect("valid patterns")
    }

    // The example file from Docker's documentation (docs.docker.com/build/concepts/context/#dockerignore-files).
    #[test]
    fn docker_docs_example() {
        let di = ignore("# comment\n*/temp*\n*/*/temp*\ntemp?\n");
        assert!(di.is_excluded("somedir/temporary.txt"));
        assert!(di.is_excluded("somedir/temp"));
        assert!(di.is_excluded("somedir/subdir/temporary.txt"));
        assert!(di.is_excluded("tempa"));
        assert!(di.is_excluded("tempb"));
        assert!(!di.is_excluded("temp"), "`?` needs exactly one character");
        assert!(
            !di.is_excluded("temporary.txt"),
            "`*/temp*` needs one directory level"
        );
        assert!(
            !di.is_excluded("a/b/c/temp"),
            "`*/*/temp*` is exactly two levels"
        );
        assert!(!di.is_excluded("# comment"));
    }

    #[test]
    fn double_star_matches_any_depth() {
        let di = ignore("**/*.go\n");
        assert!(di.is_excluded("main.go"));
        assert!(di.is_excluded("a/b/c/main.go"));
        assert!(!di.is_excluded("a/main.rs"));
    }

    // Docs: "*.md / !README*.md / README-secret.md" -> no markdown except README files other
    // than README-secret.md.
    #[test]
    fn last_match_wins_docs_example() {
        let di = ignore("*.md\n!README*.md\nREADME-secret.md\n");
        assert!(di.is_excluded("CHANGELOG.md"));
        assert!(!di.is_excluded("README.md"));
        assert!(!di.is_excluded("README-public.md"));
        assert!(di.is_excluded("README-secret.md"));
        // Patterns are anchored at the root: `*.md` does not reach into directories.
        assert!(!di.is_excluded("docs/guide.md"));

        let di = ignore("*.md\nREADME-secret.md\n!README*.md\n");
        assert!(
            !di.is_excluded("README-secret.md"),
            "the later exception wins"
        );
    }

    #[test]
    fn matched_directory_excludes_its_subtree() {
        let di = ignore("target\nnode_modules/\n");
        assert!(di.is_excluded("target"));
        assert!(di.is_excluded("target/release/app"));
        assert!(di.is_excluded("node_modules/x/y.js"));
        assert!(!di.is_excluded("src/target.rs"));
        assert!(
            !di.is_excluded("sub/target/x"),
            "anchored: only the root `target`"
        );
    }

    #[test]
    fn exception_inside_excluded_directory() {
        let di = ignore("data\n!data/keep.txt\n");
        assert!(di.is_excluded("data/big.bin"));
        assert!(!di.is_excluded("data/keep.txt"));
        assert!(di.may_reinclude_below("data"));
        assert!(!di.may_reinclude_below("other"));
        // `!**/keep` cannot rescue a file from an excluded directory: Docker skips the dir.
        let di = ignore("data\n!**/keep\n");
        assert!(!di.may_reinclude_below("data"));
    }

    #[test]
    fn paths_are_cleaned_and_root_slash_dropped() {
        let di = ignore("/secret.txt\n./build/../out\n  spaced  \n");
        assert!(di.is_excluded("secret.txt"));
        assert!(di.is_excluded("out/x"));
        assert!(!di.is_excluded("build"));
        assert!(di.is_excluded("spaced"));
    }

    #[test]
    fn prefix_suffix_and_classes() {
        let di = ignore("logs/**\n**foo\n[a-c]?.txt\n[^x]y\n");
        assert!(di.is_excluded("logs/a/b"));
        assert!(
            di.is_excluded("afoo"),
            "`**foo` is a suffix match in patternmatcher"
        );
        assert!(di.is_excluded("x/y/foo"));
        assert!(di.is_excluded("b1.txt"));
        assert!(!di.is_excluded("d1.txt"));
        assert!(di.is_excluded("ay"));
        assert!(!di.is_excluded("xy"));
        assert!(DockerIgnore::parse("[abc\n").is_err());
    }

    #[test]
    fn star_does_not_cross_directories_but_double_star_does() {
        let di = ignore("a/*/c\nx/**/z\n");
        assert!(di.is_excluded("a/b/c"));
        assert!(!di.is_excluded("a/b/b/c"));
        assert!(di.is_excluded("x/z"));
        assert!(di.is_excluded("x/1/2/3/z"));
    }

    #[test]
    fn escapes_and_literal_regex_chars() {
        // With another wildcard present, `\*` is a literal star.
        let di = ignore("file\\*?.txt\na.b\n");
        assert!(di.is_excluded("file*1.txt"));
        assert!(!di.is_excluded("filex1.txt"));
        // patternmatcher quirk, mirrored: without any wildcard the pattern is compared as
        // plain text, backslash included.
        let quirk = ignore("file\\*.txt\n");
        assert!(!quirk.is_excluded("file*.txt"));
        assert!(quirk.is_excluded("file\\*.txt"));
        assert!(di.is_excluded("a.b"));
        assert!(!di.is_excluded("axb"));
    }

    #[test]
    fn keep_forces_dockerfile_in() {
        let mut di = ignore("*\n");
        assert!(di.is_excluded("Dockerfile"));
        di.keep("Dockerfile").expect("valid");
        assert!(!di.is_excluded("Dockerfile"));
        assert!(di.is_excluded("other"));
    }
}
