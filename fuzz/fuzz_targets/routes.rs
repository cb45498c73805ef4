//! The route matcher: for any table of expressions and methods and any raw path, the pool it
//! picks is the one of the first rule (in order) whose expression matches the path and whose
//! methods allow the request, exactly as matching each rule on its own would decide.

#![no_main]

use arbitrary::Arbitrary;
use http::Method;
use libfuzzer_sys::fuzz_target;
use myelin_router::{RouteSettings, RouteTable};

const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::OPTIONS,
];

#[derive(Arbitrary, Debug)]
struct Input {
    rules: Vec<(String, u8)>,
    requests: Vec<(u8, String)>,
}

fuzz_target!(|input: Input| {
    let rules: Vec<(String, Vec<Method>)> = input
        .rules
        .into_iter()
        .take(16)
        .filter(|(p, _)| p.len() <= 80)
        .map(|(p, mask)| {
            let methods = METHODS
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, m)| m.clone())
                .collect();
            (p, methods)
        })
        .collect();
    let settings: Vec<RouteSettings> = rules
        .iter()
        .enumerate()
        .map(|(i, (path, methods))| RouteSettings {
            path: path.clone(),
            methods: methods.clone(),
            upstream: format!("pool{i}"),
        })
        .collect();
    let pools: Vec<usize> = (0..settings.len()).map(|i| i + 1).collect();
    let Ok(table) = RouteTable::new(&settings, pools) else {
        // a table that does not compile has a rule that does not compile on its own either
        assert!(rules.iter().any(|(p, _)| regex::Regex::new(p).is_err()) || rules.len() > 1);
        return;
    };
    let singles: Vec<regex::Regex> = rules
        .iter()
        .map(|(p, _)| regex::Regex::new(p).expect("compiles alone when it compiles in the set"))
        .collect();
    for (m, path) in input.requests.iter().take(16) {
        let method = &METHODS[usize::from(*m) % METHODS.len()];
        let expected = rules
            .iter()
            .zip(&singles)
            .position(|((_, methods), re)| {
                re.is_match(path) && (methods.is_empty() || methods.contains(method))
            })
            .map(|i| i + 1);
        assert_eq!(
            table.pool_for(method, path),
            expected,
            "{method} {path:?} with {rules:?}"
        );
    }
});
