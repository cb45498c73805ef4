//! The Matrix grammars a well-known document must follow: server names and user IDs
//! (spec appendices "Server Name" and "User Identifiers").

use std::net::{Ipv4Addr, Ipv6Addr};

/// A syntactically valid Matrix server name: `host[:port]`, host a DNS name, IPv4 or `[IPv6]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerName {
    /// Host as written (IPv6 without brackets), lower-cased.
    pub host: String,
    pub port: Option<u16>,
    pub kind: HostKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKind {
    Dns,
    Ipv4,
    Ipv6,
}

impl ServerName {
    /// Parses `s` against the spec's server-name grammar; the error says what is wrong.
    pub fn parse(s: &str) -> Result<ServerName, String> {
        if s.is_empty() {
            return Err("a server name must not be empty".into());
        }
        if s.len() > 255 {
            return Err("a server name must be at most 255 characters".into());
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (v6, after) = rest
                .split_once(']')
                .ok_or("an IPv6 literal must be closed with \"]\"")?;
            v6.parse::<Ipv6Addr>()
                .map_err(|_| format!("\"{v6}\" is not an IPv6 address"))?;
            (v6, after)
        } else {
            match s.find(':') {
                Some(i) => (&s[..i], &s[i..]),
                None => (s, ""),
            }
        };
        let port = match port {
            "" => None,
            p => {
                let digits = p
                    .strip_prefix(':')
                    .ok_or("unexpected characters after the host")?;
                if digits.is_empty()
                    || digits.len() > 5
                    || !digits.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(format!("\"{digits}\" is not a port number"));
                }
                match digits.parse::<u16>() {
                    Ok(p) if p > 0 => Some(p),
                    _ => return Err(format!("\"{digits}\" is not a port number from 1 to 65535")),
                }
            }
        };
        if s.starts_with('[') {
            return Ok(ServerName {
                host: host.to_ascii_lowercase(),
                port,
                kind: HostKind::Ipv6,
            });
        }
        if host.is_empty() {
            return Err("the host part is empty".into());
        }
        if host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && host.bytes().filter(|b| *b == b'.').count() == 3
        {
            host.parse::<Ipv4Addr>()
                .map_err(|_| format!("\"{host}\" is not a valid IPv4 address"))?;
            return Ok(ServerName {
                host: host.into(),
                port,
                kind: HostKind::Ipv4,
            });
        }
        if let Some(bad) = host
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
        {
            return Err(format!(
                "\"{bad}\" is not allowed in a host name (letters, digits, \"-\" and \".\" only; IPv6 goes in brackets)"
            ));
        }
        if host.starts_with('.') || host.contains("..") {
            return Err("a host name must not contain an empty label".into());
        }
        Ok(ServerName {
            host: host.to_ascii_lowercase(),
            port,
            kind: HostKind::Dns,
        })
    }

    /// `host` or `host:port` (IPv6 bracketed), as it would be written.
    pub fn to_written(&self) -> String {
        let host = match self.kind {
            HostKind::Ipv6 => format!("[{}]", self.host),
            _ => self.host.clone(),
        };
        match self.port {
            Some(p) => format!("{host}:{p}"),
            None => host,
        }
    }
}

/// Checks a user ID `@localpart:server_name` (historical localparts allowed, as the spec requires
/// clients and servers to accept them).
pub fn check_user_id(s: &str) -> Result<(), String> {
    let rest = s
        .strip_prefix('@')
        .ok_or("a Matrix user ID starts with \"@\", e.g. \"@admin:example.com\"")?;
    let (local, server) = rest
        .split_once(':')
        .ok_or("a Matrix user ID has the form \"@localpart:server.name\"")?;
    if local.is_empty() {
        return Err("the localpart of the user ID is empty".into());
    }
    if let Some(c) = local
        .chars()
        .find(|c| !('\u{21}'..='\u{7e}').contains(c) || *c == ':')
    {
        return Err(format!("\"{c}\" is not allowed in a user ID's localpart"));
    }
    if s.len() > 255 {
        return Err("a user ID must be at most 255 bytes".into());
    }
    ServerName::parse(server).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        for ok in [
            "example.com",
            "matrix.example.com:443",
            "1.2.3.4",
            "1.2.3.4:8448",
            "[::1]",
            "[1234:5678::abcd]:8448",
            "localhost",
            "xn--bcher-kva.example",
            "a-b.c",
        ] {
            assert!(ServerName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "exa mple.com",
            "example.com:",
            "example.com:0",
            "example.com:65536",
            "example.com:80a",
            "::1",
            "[::1",
            "[not:v6]",
            "[::1]x",
            "1.2.3.999",
            "under_score.com",
            "https://example.com",
            "example..com",
            ".example.com",
        ] {
            assert!(ServerName::parse(bad).is_err(), "{bad}");
        }
        let s = ServerName::parse("Matrix.Example.com:8448").unwrap();
        assert_eq!(s.host, "matrix.example.com");
        assert_eq!(s.port, Some(8448));
        assert_eq!(s.to_written(), "matrix.example.com:8448");
        assert_eq!(
            ServerName::parse("[::1]:8448").unwrap().to_written(),
            "[::1]:8448"
        );
    }

    #[test]
    fn user_ids() {
        assert!(check_user_id("@admin:example.com").is_ok());
        assert!(check_user_id("@a.b=c_d/e+f:example.com:8448").is_ok());
        assert!(check_user_id("admin:example.com").is_err());
        assert!(check_user_id("@admin").is_err());
        assert!(check_user_id("@:example.com").is_err());
        assert!(check_user_id("@ad min:example.com").is_err());
        assert!(check_user_id("@admin:exa mple").is_err());
    }
}
