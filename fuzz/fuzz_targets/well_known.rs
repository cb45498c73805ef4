//! The well-known validation: server names and user IDs are parsed without panicking, what
//! parses is written back to a form that parses to the same thing, and documents built from
//! any settings are valid JSON that say what was configured.

#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use http::Method;
use libfuzzer_sys::fuzz_target;
use myelin_well_known::{
    CLIENT_PATH, ContactSettings, SERVER_PATH, SUPPORT_PATH, ServerName, SupportSettings,
    WellKnown, WellKnownSettings, check_user_id,
};

#[derive(Arbitrary, Debug)]
struct Input {
    name: String,
    user: String,
    server: Option<String>,
    client_base_url: Option<String>,
    identity_server: Option<String>,
    extra: Vec<(String, String)>,
    support_page: Option<String>,
    contacts: Vec<(String, Option<String>, Option<String>)>,
    max_age: u32,
}

fuzz_target!(|input: Input| {
    if let Ok(sn) = ServerName::parse(&input.name) {
        let written = sn.to_written();
        let again = ServerName::parse(&written).expect("a written server name parses");
        assert_eq!(again, sn, "{written}");
    }
    let _ = check_user_id(&input.user);

    let settings = WellKnownSettings {
        server: input.server.clone(),
        client_base_url: input.client_base_url.clone(),
        identity_server: input.identity_server,
        client_extra: input
            .extra
            .into_iter()
            .take(8)
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect(),
        support: (input.support_page.is_some() || !input.contacts.is_empty()).then(|| {
            SupportSettings {
                support_page: input.support_page,
                contacts: input
                    .contacts
                    .into_iter()
                    .take(4)
                    .map(|(role, matrix_id, email_address)| ContactSettings {
                        role,
                        matrix_id,
                        email_address,
                    })
                    .collect(),
            }
        }),
        cache_max_age: Duration::from_secs(u64::from(input.max_age)),
    };
    let Ok(wk) = WellKnown::new(&settings) else {
        return;
    };
    for path in [SERVER_PATH, CLIENT_PATH, SUPPORT_PATH] {
        let resp = wk
            .respond(&Method::GET, path)
            .expect("a well-known path is answered");
        let body: serde_json::Value =
            serde_json::from_slice(resp.body()).expect("every answer is JSON");
        if resp.status() == 200 {
            match path {
                SERVER_PATH => {
                    let m_server = body["m.server"].as_str().expect("m.server");
                    ServerName::parse(m_server).expect("m.server is a valid server name");
                }
                CLIENT_PATH => {
                    assert!(body["m.homeserver"]["base_url"].is_string(), "{body}");
                }
                _ => {}
            }
        } else {
            assert!(body["errcode"].is_string(), "{body}");
        }
        assert!(wk.respond(&Method::OPTIONS, path).is_some());
    }
});
