use super::*;

fn full() -> WellKnownSettings {
    let mut extra = Map::new();
    extra.insert(
        "org.matrix.msc3575.proxy".into(),
        json!({"url": "https://sliding.example.com"}),
    );
    WellKnownSettings {
        server: Some("matrix.example.com:443".into()),
        client_base_url: Some("https://matrix.example.com".into()),
        identity_server: Some("https://id.example.com".into()),
        client_extra: extra,
        support: Some(SupportSettings {
            support_page: Some("https://example.com/help".into()),
            contacts: vec![ContactSettings {
                role: "m.role.admin".into(),
                matrix_id: Some("@admin:example.com".into()),
                email_address: Some("admin@example.com".into()),
            }],
        }),
        cache_max_age: Duration::from_secs(3600),
    }
}

fn body(r: Response<Bytes>) -> Value {
    serde_json::from_slice(r.body()).unwrap()
}

#[test]
fn serves_three_documents_with_cors_and_cache_control() {
    let wk = WellKnown::new(&full()).unwrap();
    let r = wk.respond(&Method::GET, SERVER_PATH).unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    assert_eq!(r.headers()["cache-control"], "max-age=3600");
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(body(r), json!({"m.server": "matrix.example.com:443"}));

    let c = body(wk.respond(&Method::GET, CLIENT_PATH).unwrap());
    assert_eq!(c["m.homeserver"]["base_url"], "https://matrix.example.com");
    assert_eq!(c["m.identity_server"]["base_url"], "https://id.example.com");
    assert_eq!(
        c["org.matrix.msc3575.proxy"]["url"],
        "https://sliding.example.com"
    );

    let s = body(wk.respond(&Method::GET, SUPPORT_PATH).unwrap());
    assert_eq!(s["contacts"][0]["matrix_id"], "@admin:example.com");
    assert_eq!(s["support_page"], "https://example.com/help");
}

#[test]
fn options_preflight_and_other_methods() {
    let wk = WellKnown::new(&full()).unwrap();
    let r = wk.respond(&Method::OPTIONS, CLIENT_PATH).unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["access-control-allow-headers"],
        "X-Requested-With, Content-Type, Authorization"
    );
    assert_eq!(
        r.headers()["access-control-allow-methods"],
        "GET, POST, PUT, DELETE, OPTIONS"
    );
    let r = wk.respond(&Method::POST, CLIENT_PATH).unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD, OPTIONS");
    assert!(
        wk.respond(&Method::GET, "/.well-known/matrix/other")
            .is_none()
    );
    assert!(
        wk.respond(&Method::GET, "/_matrix/client/versions")
            .is_none()
    );
}

#[test]
fn absent_documents_are_404_with_cors() {
    let wk = WellKnown::new(&WellKnownSettings::default()).unwrap();
    for p in [SERVER_PATH, CLIENT_PATH, SUPPORT_PATH] {
        let r = wk.respond(&Method::GET, p).unwrap();
        assert_eq!(r.status(), 404, "{p}");
        assert_eq!(r.headers()["access-control-allow-origin"], "*");
        assert_eq!(body(r)["errcode"], "M_NOT_FOUND");
    }
}

#[test]
fn every_invalid_setting_is_reported_with_its_field() {
    let mut s = full();
    s.server = Some("https://matrix.example.com".into());
    s.client_base_url = Some("http://matrix.example.com".into());
    s.identity_server = Some("not a url".into());
    s.client_extra.insert("proxy".into(), json!(1));
    s.client_extra.insert("m.homeserver".into(), json!({}));
    s.support = Some(SupportSettings {
        support_page: None,
        contacts: vec![
            ContactSettings {
                role: "admin".into(),
                matrix_id: Some("admin@example.com".into()),
                email_address: None,
            },
            ContactSettings {
                role: "m.role.security".into(),
                matrix_id: None,
                email_address: None,
            },
        ],
    });
    let errs = WellKnown::new(&s).unwrap_err();
    let fields: Vec<&Field> = errs.iter().map(|e| e.field()).collect();
    for f in [
        Field::Server,
        Field::ClientBaseUrl,
        Field::IdentityServer,
        Field::ClientExtra,
        Field::ContactRole(0),
        Field::ContactMatrixId(0),
        Field::Contact(1),
    ] {
        assert!(fields.contains(&&f), "no error for {f:?}: {errs:#?}");
    }
    assert_eq!(
        errs.iter()
            .filter(|e| *e.field() == Field::ClientExtra)
            .count(),
        2
    );
}

#[test]
fn empty_support_is_refused() {
    let mut s = full();
    s.support = Some(SupportSettings::default());
    let errs = WellKnown::new(&s).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].field(), &Field::Support);
}

#[test]
fn client_keys_need_a_base_url() {
    let s = WellKnownSettings {
        identity_server: Some("https://id.example.com".into()),
        ..Default::default()
    };
    let errs = WellKnown::new(&s).unwrap_err();
    assert_eq!(errs[0].field(), &Field::ClientBaseUrl);
}
