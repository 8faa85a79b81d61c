//! How a request path reads to the Node routers behind the proxy, so that the paths the proxy
//! answers itself (the token route) match every spelling a router could take for them.
//!
//! A Node app finds its route from `req.url` in one of a few ways: Node's docs show
//! `new URL(req.url, 'http://' + host).pathname` (WHATWG URL: `\` is `/`, `%2e` is a dot
//! segment, dot segments are resolved, and a leading `//` or `/\` makes the first segment an
//! authority), the legacy `url.parse(req.url).pathname` (`\` is `/`), or a plain split at `?`;
//! then the router may match case-insensitively, ignore a trailing slash, decode `%xx` once
//! (find-my-way) or cut the path at the first `;` (find-my-way with `useSemicolonDelimiter`).
//!
//! The rule (README, "Which paths the proxy answers"):
//! 1. A path that starts with `//` or `/\` is refused with `400`: WHATWG URL reads its first
//!    segment as a host (`//evil.example/api/stream/token` is `/api/stream/token` to Node),
//!    while routers that do not parse it that way see another path. No single reading is right,
//!    so the proxy forwards none of them.
//! 2. Every other path is matched in its [canonical form](canonical): `%xx` decoded once, `\`
//!    read as `/`, empty and `.` segments dropped, `..` resolved, ASCII case ignored; both the
//!    whole path and the path cut at its first `;` are tried. This is a superset of what any
//!    of the readings above can route to, so a path that any of them takes for the token
//!    route is the token route here too. The request itself still reaches Node byte for byte.

use std::borrow::Cow;

/// A request path, read the ways a Node router could read it.
#[derive(Debug)]
pub(crate) struct RoutePath<'a> {
    /// The canonical form of the whole path.
    whole: Cow<'a, [u8]>,
    /// The canonical forms of the path cut at its first `;`: cut before the dot segments are
    /// resolved (find-my-way cuts the raw path) and after (WHATWG URL resolves `/;x/..` first).
    cut: [Option<Vec<u8>>; 2],
}

/// Why a path is refused before any route sees it; the log's reason, never the path itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AmbiguousPath;

impl std::fmt::Display for AmbiguousPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the path starts with // or /\\ (Node's URL parser reads a host there)")
    }
}

impl<'a> RoutePath<'a> {
    /// Reads `path` (the request's path, without the query) or refuses it (rule 1).
    pub(crate) fn parse(path: &'a str) -> Result<Self, AmbiguousPath> {
        let bytes = path.as_bytes();
        if bytes.len() >= 2 && bytes[0] == b'/' && matches!(bytes[1], b'/' | b'\\') {
            return Err(AmbiguousPath);
        }
        if is_plain(bytes) {
            // The usual path: nothing to decode, resolve or cut.
            return Ok(Self {
                whole: Cow::Borrowed(bytes),
                cut: [None, None],
            });
        }
        // Cut after decoding: a `%3B` is a `;` to a router that decodes before it cuts.
        let decoded = percent_decode(bytes);
        let cut_raw = cut_at_semicolon(&decoded);
        let whole = resolve_segments(decoded);
        let cut_resolved = cut_at_semicolon(&whole);
        Ok(Self {
            whole,
            cut: [cut_raw, cut_resolved],
        })
    }

    /// Whether any reading of the path is exactly `route` (canonical: `/a/b`).
    pub(crate) fn is(&self, route: &str) -> bool {
        self.forms()
            .any(|form| form.eq_ignore_ascii_case(route.as_bytes()))
    }

    /// Whether any reading of the path is `prefix` or under it, segment by segment (`/api`
    /// covers `/api` and `/api/x`, not `/apix`); `prefix` is canonical ([`canonical_prefix`]).
    pub(crate) fn under(&self, prefix: &str) -> bool {
        let prefix = prefix.as_bytes();
        if prefix == b"/" {
            return true;
        }
        self.forms().any(|form| {
            form.len() >= prefix.len()
                && form[..prefix.len()].eq_ignore_ascii_case(prefix)
                && (form.len() == prefix.len() || form[prefix.len()] == b'/')
        })
    }

    fn forms(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(self.whole.as_ref()).chain(self.cut.iter().flatten().map(Vec::as_slice))
    }
}

/// A configured prefix or path in the form [`RoutePath::is`] and [`RoutePath::under`] compare
/// with: dot segments resolved, no trailing `/`. (Configured paths have no `%`, `\` or `;`
/// to read: they are the proxy's own spelling.)
pub(crate) fn canonical_prefix(prefix: &str) -> String {
    String::from_utf8_lossy(&resolve_segments(Cow::Borrowed(prefix.as_bytes()))).into_owned()
}

/// The canonical form of `path` up to its first `;`, when it has one.
fn cut_at_semicolon(path: &[u8]) -> Option<Vec<u8>> {
    let at = path.iter().position(|&b| b == b';')?;
    Some(resolve_segments(Cow::Borrowed(&path[..at])).into_owned())
}

/// `\` read as `/`, empty and `.` segments dropped, `..` resolved (no decoding).
fn resolve_segments(path: Cow<'_, [u8]>) -> Cow<'_, [u8]> {
    if is_resolved(&path) {
        return path;
    }
    let mut segments: Vec<&[u8]> = Vec::with_capacity(8);
    for segment in path.split(|&b| b == b'/' || b == b'\\') {
        match segment {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    if segments.is_empty() {
        return Cow::Borrowed(b"/");
    }
    let mut out = Vec::with_capacity(path.len());
    for segment in segments {
        out.push(b'/');
        out.extend_from_slice(segment);
    }
    Cow::Owned(out)
}

/// Already canonical and without `;`, in one pass: starts with `/`, no `%`, `\` or `;`, no
/// empty segment and no segment starting with `.` (so no dot segment), no trailing `/`.
fn is_plain(path: &[u8]) -> bool {
    if path == b"/" {
        return true;
    }
    if path.first() != Some(&b'/') || path.last() == Some(&b'/') {
        return false;
    }
    let mut after_slash = false;
    for &b in path {
        match b {
            b'%' | b'\\' | b';' => return false,
            b'/' | b'.' if after_slash => return false,
            _ => {}
        }
        after_slash = b == b'/';
    }
    true
}

/// Starts with `/`, has no `\`, empty, `.` or `..` segment and no trailing `/`.
fn is_resolved(path: &[u8]) -> bool {
    if path == b"/" {
        return true;
    }
    if path.first() != Some(&b'/') || path.ends_with(b"/") {
        return false;
    }
    path[1..]
        .split(|&b| b == b'/')
        .all(|s| !s.is_empty() && s != b"." && s != b".." && !s.contains(&b'\\'))
}

/// Decodes every valid `%xx` once; anything else is kept as it is.
fn percent_decode(bytes: &[u8]) -> Cow<'_, [u8]> {
    if !bytes.contains(&b'%') {
        return Cow::Borrowed(bytes);
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The canonical form of a whole `path`: `%xx` decoded once, `\` read as `/`, empty and `.` segments dropped and `..`
    /// resolved, always starting with `/` and never ending with one (`/` alone for the root). Case
    /// is kept; compare with `eq_ignore_ascii_case`. A path that is already canonical (the usual
    /// case) is returned as it is, without allocating.
    fn canonical(path: &[u8]) -> Cow<'_, [u8]> {
        resolve_segments(percent_decode(path))
    }

    fn canon(path: &str) -> String {
        String::from_utf8(canonical(path.as_bytes()).into_owned()).unwrap()
    }

    #[test]
    fn canonical_form_reads_paths_the_way_node_routers_can() {
        for (path, expected) in [
            ("/", "/"),
            ("", "/"),
            ("/api/hello", "/api/hello"),
            ("/API/Hello/", "/API/Hello"),
            ("/api\\stream\\token", "/api/stream/token"),
            ("/api/stream%5Ctoken", "/api/stream/token"),
            ("/api//stream///token", "/api/stream/token"),
            ("/api/./stream/x/../token", "/api/stream/token"),
            ("/api/%2e/stream/%2E%2E/stream/token", "/api/stream/token"),
            ("/../api", "/api"),
            ("/%61pi/%73tream", "/api/stream"),
            ("/api%2Fstream", "/api/stream"),
            ("/a%zz", "/a%zz"),
            ("/%2561", "/%61"),
        ] {
            assert_eq!(canon(path), expected, "{path}");
        }
    }

    #[test]
    fn clean_paths_are_borrowed() {
        for path in ["/", "/api/hello", "/a/b.c/d..e", "/A;b"] {
            assert!(
                matches!(canonical(path.as_bytes()), Cow::Borrowed(_)),
                "{path}"
            );
        }
        for path in ["/a/", "/a//b", "/a/./b", "/a/../b", "/a%41", "/a\\b", "a"] {
            assert!(
                matches!(canonical(path.as_bytes()), Cow::Owned(_)),
                "{path}"
            );
        }
    }

    #[test]
    fn plain_paths_take_the_short_way_and_agree_with_the_long_one() {
        for path in ["/", "/api/hello", "/a/b.c", "/a/b..", "/A-Z_~!$&'()*+,=:@"] {
            assert!(is_plain(path.as_bytes()), "{path}");
            assert_eq!(canonical(path.as_bytes()), path.as_bytes(), "{path}");
        }
        for path in [
            "",
            "a",
            "/a/",
            "/a//b",
            "/a/./b",
            "/.well-known",
            "/a%20",
            "/a\\b",
            "/a;b",
        ] {
            assert!(!is_plain(path.as_bytes()), "{path}");
        }
    }

    #[test]
    fn a_prefix_covers_every_spelling_of_the_paths_under_it() {
        let under = |path: &str| RoutePath::parse(path).unwrap().under("/api/admin");
        for path in [
            "/api/admin",
            "/API/Admin",
            "/api/./admin",
            "/api/x/../admin",
            "/api/%61dmin",
            "/api/admin;x",
            "/api/admin/",
            "/api/admin/users/7",
            "/api\\admin",
        ] {
            assert!(under(path), "{path}");
        }
        for path in ["/api/adminx", "/api", "/apiadmin", "/api/other/admin", "/"] {
            assert!(!under(path), "{path}");
        }
        assert!(RoutePath::parse("/anything").unwrap().under("/"));
        assert_eq!(canonical_prefix("/api/admin/"), "/api/admin");
        assert_eq!(canonical_prefix("/"), "/");
    }

    #[test]
    fn a_leading_double_slash_or_slash_backslash_is_refused() {
        for path in ["//x/api/stream/token", "/\\x/api", "//", "/\\"] {
            assert_eq!(RoutePath::parse(path).unwrap_err(), AmbiguousPath, "{path}");
        }
        for path in ["/", "/x//y", "/%2F/x", "/x\\\\y"] {
            assert!(RoutePath::parse(path).is_ok(), "{path}");
        }
    }

    #[test]
    fn a_path_is_a_route_whole_or_cut_at_its_first_semicolon() {
        let is = |path: &str| RoutePath::parse(path).unwrap().is("/api/stream/token");
        for path in [
            "/api/stream/token",
            "/API/Stream/TOKEN/",
            "/api\\stream\\token",
            "/api/stream\\token",
            "/api/stream/token;x",
            "/api/stream/token;jsessionid=1;y",
            "/api/stream/%74oken;",
            "/api/stream/token%2F",
            "/api/stream/token%3Bx",
            "/;x/../api/stream/token;",
            "/;x/../%61pi/x\\..\\stream/token%3Bx",
        ] {
            assert!(is(path), "{path}");
        }
        for path in [
            "/api/stream;x/token",
            "/api;/stream/token",
            "/api/stream/tokens;x",
            ";/api/stream/token",
            "/api/stream",
            "/api/stream/token/x",
            "/%2561pi/stream/token",
        ] {
            assert!(!is(path), "{path}");
        }
    }
}
