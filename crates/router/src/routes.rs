//! The ordered route table: regular expressions on the raw request path (what the client sent,
//! not decoded), optionally limited to some methods. The first rule that matches picks the pool;
//! a path no rule matches goes to the homeserver's main `upstream`.

use http::Method;
use regex::RegexSet;

/// One `[[homeserver.route]]`.
#[derive(Clone, Debug)]
pub struct RouteSettings {
    /// A regular expression matched against the raw path (no query).
    pub path: String,
    /// Empty: any method.
    pub methods: Vec<Method>,
    /// A pool name, or [`crate::MAIN_POOL`].
    pub upstream: String,
}

/// The compiled table: all expressions are matched in one pass, the first hit in order wins.
/// Public for the fuzz target (`fuzz/fuzz_targets/routes.rs`); the router builds its own.
pub struct RouteTable {
    set: RegexSet,
    rules: Vec<Rule>,
}

struct Rule {
    methods: Vec<Method>,
    pool: usize,
}

impl RouteTable {
    /// `pools[i]` is the index of the pool route `i` sends to.
    pub fn new(routes: &[RouteSettings], pools: Vec<usize>) -> Result<RouteTable, regex::Error> {
        let set = RegexSet::new(routes.iter().map(|r| r.path.as_str()))?;
        let rules = routes
            .iter()
            .zip(pools)
            .map(|(r, pool)| Rule {
                methods: r.methods.clone(),
                pool,
            })
            .collect();
        Ok(RouteTable { set, rules })
    }

    /// The pool for a request, `None` when no rule matches.
    pub fn pool_for(&self, method: &Method, raw_path: &str) -> Option<usize> {
        if self.rules.is_empty() {
            return None;
        }
        self.set
            .matches(raw_path)
            .iter()
            .map(|i| &self.rules[i])
            .find(|r| r.methods.is_empty() || r.methods.contains(method))
            .map(|r| r.pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str, methods: &[&str], upstream: &str) -> RouteSettings {
        RouteSettings {
            path: path.into(),
            methods: methods.iter().map(|m| m.parse().unwrap()).collect(),
            upstream: upstream.into(),
        }
    }

    #[test]
    fn first_match_wins_and_methods_narrow() {
        let t = RouteTable::new(
            &[
                route(r"^/_matrix/client/v3/rooms/[^/]+/messages$", &["GET"], "a"),
                route(r"^/_matrix/client/v3/rooms/", &[], "b"),
                route(r"^/_matrix/client/v3/rooms/[^/]+/state$", &[], "c"),
                route(r"^/_matrix/media/v3/download/%21", &[], "c"),
            ],
            vec![1, 2, 3, 3],
        )
        .unwrap();
        let get = Method::GET;
        assert_eq!(
            t.pool_for(&get, "/_matrix/client/v3/rooms/!r:x/messages"),
            Some(1)
        );
        assert_eq!(
            t.pool_for(&Method::POST, "/_matrix/client/v3/rooms/!r:x/messages"),
            Some(2)
        );
        // a later, more specific rule never wins over an earlier one
        assert_eq!(
            t.pool_for(&get, "/_matrix/client/v3/rooms/!r:x/state"),
            Some(2)
        );
        assert_eq!(t.pool_for(&get, "/_matrix/client/versions"), None);
        // the raw path: an encoded "!" is not a "!"
        assert_eq!(t.pool_for(&get, "/_matrix/media/v3/download/%21x"), Some(3));
        assert_eq!(t.pool_for(&get, "/_matrix/media/v3/download/!x"), None);
    }

    #[test]
    fn an_empty_table_matches_nothing() {
        let t = RouteTable::new(&[], vec![]).unwrap();
        assert_eq!(t.pool_for(&Method::GET, "/_matrix/client/versions"), None);
    }
}
