//! Which paths go upstream. Forwarding is decided on the raw path (what is forwarded is what was
//! sent); the admin check also looks at the path as the homeserver will read it (percent-decoded,
//! dot segments resolved), so `/_synapse/%61dmin/` cannot slip past `admin_allow`.

use percent_encoding::percent_decode_str;

/// What a homeserver does with a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/_matrix/`, `/_synapse/client/` or a configured prefix: to the homeserver.
    Forward,
    /// `/_synapse/admin/`: to the homeserver from `admin_allow` only.
    Admin,
    /// Anything else: 404 `M_UNRECOGNIZED`.
    NotServed,
}

const ALWAYS_FORWARDED: &[&str] = &["/_matrix/", "/_synapse/client/"];

pub fn classify(raw_path: &str, extra_prefixes: &[String]) -> Route {
    if is_admin(raw_path) {
        return Route::Admin;
    }
    let forwarded = ALWAYS_FORWARDED.iter().any(|p| raw_path.starts_with(p))
        || extra_prefixes
            .iter()
            .any(|p| raw_path.starts_with(p.as_str()));
    if forwarded {
        Route::Forward
    } else {
        Route::NotServed
    }
}

/// Whether the path reaches Synapse's admin API, raw or as the homeserver decodes it.
pub fn is_admin(raw_path: &str) -> bool {
    // Fast path: a path with nothing to decode or resolve is what it says (most requests).
    if !raw_path.contains(['%', '.']) && !raw_path.contains("//") {
        return raw_path == "/_synapse/admin" || raw_path.starts_with("/_synapse/admin/");
    }
    let segments = normalized_segments(raw_path);
    matches!(segments.as_slice(), [first, second, ..] if first == "_synapse" && second == "admin")
}

/// Percent-decoded segments with empty, `.` and `..` segments resolved.
fn normalized_segments(raw_path: &str) -> Vec<String> {
    let decoded = percent_decode_str(raw_path).decode_utf8_lossy();
    let mut out: Vec<String> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s.to_string()),
        }
    }
    out
}

/// A path for logs and error messages, with control characters removed and length bounded.
pub fn for_log(path: &str) -> String {
    let mut s: String = path.chars().filter(|c| !c.is_control()).take(512).collect();
    if path.len() > 512 {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_paths_are_forwarded() {
        let extra = vec!["/_continuwuity/".to_string()];
        assert_eq!(classify("/_matrix/client/versions", &extra), Route::Forward);
        assert_eq!(
            classify("/_matrix/federation/v1/send/x", &extra),
            Route::Forward
        );
        assert_eq!(
            classify("/_synapse/client/pick_idp", &extra),
            Route::Forward
        );
        assert_eq!(
            classify("/_continuwuity/local_user_count", &extra),
            Route::Forward
        );
        assert_eq!(classify("/_matrix", &extra), Route::NotServed);
        assert_eq!(classify("/", &extra), Route::NotServed);
        assert_eq!(classify("/index.html", &extra), Route::NotServed);
        assert_eq!(classify("/_synapse/metrics", &extra), Route::NotServed);
        assert_eq!(classify("/_continuwuity/x", &[]), Route::NotServed);
    }

    #[test]
    fn admin_is_recognised_however_it_is_spelled() {
        for p in [
            "/_synapse/admin/v1/server_version",
            "/_synapse/admin",
            "/_synapse/%61dmin/v1/x",
            "/_synapse//admin/v1/x",
            "/_synapse/./admin/v1/x",
            "/_matrix/../_synapse/admin/v1/x",
            "/_matrix/%2e%2e/_synapse/admin/v1/x",
            "/%5fsynapse/admin/v1/x",
        ] {
            assert_eq!(classify(p, &[]), Route::Admin, "{p}");
        }
        assert_eq!(classify("/_synapse/administrator", &[]), Route::NotServed);
        assert_eq!(classify("/_synapse/client/admin", &[]), Route::Forward);
    }

    #[test]
    fn log_paths_are_bounded() {
        assert_eq!(for_log("/a\r\nb"), "/ab");
        assert_eq!(for_log(&"x".repeat(600)).chars().count(), 513);
    }
}
