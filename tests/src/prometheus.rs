//! Reading what Myelin's `/metrics` endpoint says: a scrape over plain HTTP/1.1 and a parser for
//! the Prometheus text format (just enough of it: samples with labels, comments skipped).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::client::{IO_TIMEOUT, RawResponse, read_response};

/// One sample line: `name{label="value",...} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition.
#[derive(Clone, Debug)]
pub struct Scrape {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|l| parse_line(l).unwrap_or_else(|| panic!("not a sample line: {l:?}")))
            .collect();
        Scrape {
            text: text.to_string(),
            samples,
        }
    }

    /// The value of the one sample named `name` whose labels include all of `labels`; 0 when
    /// none matches (a counter not yet incremented). Panics when several match.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let hits = self.matching(name, labels);
        assert!(
            hits.len() <= 1,
            "several samples match {name} {labels:?}: {hits:?}"
        );
        hits.first().map_or(0.0, |s| s.value)
    }

    /// The sum over every sample named `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).iter().map(|s| s.value).sum()
    }

    pub fn matching(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            })
            .collect()
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = BTreeMap::new();
    let rest = if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            inner = inner.trim_start_matches(',');
            if let Some(after) = inner.strip_prefix('}') {
                break after;
            }
            let (key, after) = inner.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break i,
                    c => value.push(c),
                }
            };
            labels.insert(key.to_string(), value);
            inner = &after[end + 1..];
        }
    } else {
        rest
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `GET <path>` over plain HTTP/1.1 (the metrics endpoint speaks no TLS).
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<RawResponse> {
    let mut tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    read_response(&mut BufReader::new(tcp)).await
}

/// Scrapes `http://addr/metrics`; panics unless it answers 200 in the text format.
pub async fn scrape(addr: SocketAddr) -> Scrape {
    let resp = http_get(addr, "/metrics")
        .await
        .unwrap_or_else(|e| panic!("scrape of http://{addr}/metrics failed: {e}"));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    Scrape::parse(&resp.text())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_with_and_without_labels() {
        let s = Scrape::parse(
            "# HELP a_total x\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"u\\\\o\"} 3\nb 1.5\nh_bucket{le=\"+Inf\"} 2\n",
        );
        assert_eq!(s.samples.len(), 3);
        assert_eq!(s.value("a_total", &[("x", "1")]), 3.0);
        assert_eq!(s.samples[0].labels["y"], "q\"u\\o");
        assert_eq!(s.value("b", &[]), 1.5);
        assert_eq!(s.value("h_bucket", &[("le", "+Inf")]), 2.0);
        assert_eq!(s.value("missing", &[]), 0.0);
    }
}
