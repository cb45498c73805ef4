//! How a pool picks a server: in turn, or sticky by a key taken from the request (the user, the
//! room, the federation origin, the client address), with rendezvous hashing so that a server
//! leaving the pool moves only the keys it had.

use std::borrow::Cow;
use std::net::IpAddr;

use http::header::{self, HeaderMap};
use http::request::Parts;
use percent_encoding::percent_decode_str;

use crate::ClientContext;

/// How a pool picks a server for a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Balance {
    /// In turn.
    #[default]
    RoundRobin,
    /// Sticky by access token; all tokens of one Synapse user (`syt_<user>_…`) count as one.
    User,
    /// Sticky by the room ID in the path segment after `/rooms/`.
    Room,
    /// Sticky by the `origin` of a federation request's `X-Matrix` authorization.
    Origin,
    /// Sticky by the client's address.
    Ip,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::User => "user",
            Balance::Room => "room",
            Balance::Origin => "origin",
            Balance::Ip => "ip",
        }
    }
}

/// The request's balancing key, or `None` when the request has none (it then goes round robin).
pub(crate) fn key<'a>(
    balance: Balance,
    parts: &'a Parts,
    client: &ClientContext,
) -> Option<Cow<'a, [u8]>> {
    match balance {
        Balance::RoundRobin => None,
        Balance::User => user_key(&parts.headers, parts.uri.query()),
        Balance::Room => room_key(parts.uri.path()),
        Balance::Origin => origin_key(&parts.headers).map(|o| Cow::Borrowed(o.as_bytes())),
        Balance::Ip => Some(Cow::Owned(match client.ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        })),
    }
}

/// Rendezvous (highest random weight) hashing: the score of a server for a key. The server with
/// the highest score gets the key; removing a server changes nothing for keys it did not have.
pub(crate) fn score(server_seed: u64, key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key, server_seed)
}

/// A server's identity for [`score`]: derived from its address, so it is the same after a
/// reload or a restart, and whatever the order of the pool's list.
pub(crate) fn seed(label: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(label.as_bytes())
}

/// The access token (`Authorization: Bearer`, else the `access_token` query parameter), reduced
/// to its user for Synapse's `syt_<base64 localpart>_<random>_<crc>` tokens.
fn user_key<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<Cow<'a, [u8]>> {
    let bearer = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| rest.trim())
                .filter(|t| !t.is_empty())
        });
    let token: Cow<'a, str> = match bearer {
        Some(t) => Cow::Borrowed(t),
        None => {
            let raw = query?
                .split('&')
                .find_map(|kv| kv.strip_prefix("access_token="))
                .filter(|t| !t.is_empty())?;
            percent_decode_str(raw).decode_utf8_lossy()
        }
    };
    Some(match synapse_user(&token) {
        Some(user) => Cow::Owned(user.as_bytes().to_vec()),
        None => match token {
            Cow::Borrowed(t) => Cow::Borrowed(t.as_bytes()),
            Cow::Owned(t) => Cow::Owned(t.into_bytes()),
        },
    })
}

/// `syt_YWxpY2U_abcdefghijklmnopqrst_1a2b3c` → `syt_YWxpY2U` (the base64 of the localpart may
/// itself contain `_`, so the two random parts are cut from the right).
fn synapse_user(token: &str) -> Option<&str> {
    if !token.starts_with("syt_") {
        return None;
    }
    let mut parts = token.rsplitn(3, '_');
    let _crc = parts.next()?;
    let _random = parts.next()?;
    parts.next().filter(|user| user.len() > "syt_".len())
}

/// The room ID after `/rooms/`, percent-decoded so `!a:b` and `%21a%3Ab` are one room.
fn room_key(raw_path: &str) -> Option<Cow<'_, [u8]>> {
    let mut segments = raw_path.split('/');
    segments.find(|s| *s == "rooms")?;
    let room = segments.next().filter(|s| !s.is_empty())?;
    Some(percent_decode_str(room).into())
}

/// The `origin` parameter of an `Authorization: X-Matrix …` header (quotes removed).
fn origin_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let (scheme, params) = v.trim().split_once(' ')?;
            if !scheme.eq_ignore_ascii_case("x-matrix") {
                return None;
            }
            params.split(',').find_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim().eq_ignore_ascii_case("origin").then(|| {
                    let v = v.trim();
                    v.strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or(v)
                })
            })
        })
        .filter(|o| !o.is_empty())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn parts(req: http::Request<()>) -> Parts {
        req.into_parts().0
    }

    fn ctx() -> ClientContext {
        ClientContext {
            ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            https: true,
            h2: false,
        }
    }

    fn key_of(balance: Balance, req: http::Request<()>) -> Option<Vec<u8>> {
        let p = parts(req);
        key(balance, &p, &ctx()).map(|k| k.into_owned())
    }

    #[test]
    fn user_keys_come_from_the_token_and_name_the_user() {
        let get = |auth: Option<&str>, uri: &str| {
            let mut b = http::Request::get(uri);
            if let Some(a) = auth {
                b = b.header("authorization", a);
            }
            key_of(Balance::User, b.body(()).unwrap())
        };
        let alice1 = get(
            Some("Bearer syt_YWxpY2U_aaaaaaaaaaaaaaaaaaaa_1a2b3c"),
            "/sync",
        );
        let alice2 = get(
            None,
            "/sync?since=s1&access_token=syt_YWxpY2U_bbbbbbbbbbbbbbbbbbbb_4d5e6f",
        );
        assert_eq!(alice1.as_deref(), Some(&b"syt_YWxpY2U"[..]));
        assert_eq!(alice1, alice2, "two devices of one user are one key");
        // base64url of the localpart may contain "_"
        assert_eq!(
            get(Some("bearer syt_a_b_c_xxxxxxxxxxxxxxxxxxxx_123456"), "/x").as_deref(),
            Some(&b"syt_a_b_c"[..])
        );
        // other homeservers' tokens: the whole token
        assert_eq!(
            get(Some("Bearer opaque-token"), "/x").as_deref(),
            Some(&b"opaque-token"[..])
        );
        assert_eq!(
            get(None, "/x?access_token=a%2Fb").as_deref(),
            Some(&b"a/b"[..])
        );
        assert_eq!(get(None, "/x"), None);
        assert_eq!(get(Some("X-Matrix origin=a"), "/x"), None);
    }

    #[test]
    fn room_keys_are_decoded_room_ids() {
        let room = |path: &str| key_of(Balance::Room, http::Request::get(path).body(()).unwrap());
        let a = room("/_matrix/client/v3/rooms/!abc:example.test/messages?dir=b");
        let b = room("/_matrix/client/v3/rooms/%21abc%3Aexample.test/messages");
        assert_eq!(a.as_deref(), Some(&b"!abc:example.test"[..]));
        assert_eq!(a, b);
        assert_eq!(
            room("/_matrix/client/v3/rooms/!x:y/send/m.room.message/1").as_deref(),
            Some(&b"!x:y"[..])
        );
        assert_eq!(room("/_matrix/client/v3/rooms/"), None);
        assert_eq!(room("/_matrix/client/v3/sync"), None);
    }

    #[test]
    fn origin_keys_come_from_x_matrix() {
        let origin = |auth: &str| {
            key_of(
                Balance::Origin,
                http::Request::put("/_matrix/federation/v1/send/1")
                    .header("authorization", auth)
                    .body(())
                    .unwrap(),
            )
        };
        assert_eq!(
            origin(r#"X-Matrix origin="remote.test",destination="example.test",key="ed25519:a",sig="s""#).as_deref(),
            Some(&b"remote.test"[..])
        );
        assert_eq!(
            origin("X-Matrix key=\"k\", origin=other.test:8448,sig=\"s\"").as_deref(),
            Some(&b"other.test:8448"[..])
        );
        assert_eq!(origin("Bearer x"), None);
    }

    #[test]
    fn ip_keys_and_round_robin() {
        let req = || http::Request::get("/").body(()).unwrap();
        assert_eq!(
            key_of(Balance::Ip, req()).as_deref(),
            Some(&[192, 0, 2, 1][..])
        );
        assert_eq!(key_of(Balance::RoundRobin, req()), None);
    }

    #[test]
    fn removing_a_server_moves_only_its_keys() {
        let servers: Vec<u64> = (0..5)
            .map(|i| seed(&format!("http://10.0.0.{i}:8083")))
            .collect();
        let owner = |seeds: &[u64], key: &[u8]| {
            seeds
                .iter()
                .copied()
                .max_by_key(|s| score(*s, key))
                .unwrap()
        };
        let keys: Vec<Vec<u8>> = (0..2000)
            .map(|i| format!("@user{i}:example.test").into_bytes())
            .collect();
        let before: Vec<u64> = keys.iter().map(|k| owner(&servers, k)).collect();
        // every server gets a fair share
        for s in &servers {
            let n = before.iter().filter(|o| *o == s).count();
            assert!(
                (300..=500).contains(&n),
                "{n} keys of 2000 on one of 5 servers"
            );
        }
        let gone = servers[2];
        let rest: Vec<u64> = servers.iter().copied().filter(|s| *s != gone).collect();
        for (k, b) in keys.iter().zip(&before) {
            let after = owner(&rest, k);
            if *b != gone {
                assert_eq!(after, *b, "a key moved that was not on the removed server");
            }
        }
    }
}
