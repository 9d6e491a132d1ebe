//! One plain-HTTP exchange from inside a namespace (health and metrics endpoints, etcd's
//! JSON gateway): HTTP/1.0, so the answer is never chunked and ends when the server closes.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context, Result};

use crate::Netns;

/// A server's answer: its status code and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// Sends `request` (the whole request, headers and blank line included) to `addr` from inside
/// `ns` and reads the answer to the end.
pub fn exchange(ns: &Netns, addr: SocketAddr, request: String) -> Result<Response> {
    let text = ns
        .run(move || -> std::io::Result<String> {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.write_all(request.as_bytes())?;
            let mut text = String::new();
            stream.read_to_string(&mut text)?;
            Ok(text)
        })?
        .with_context(|| format!("HTTP to {addr}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{addr} sent no HTTP response: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{addr} sent no HTTP status: {head:?}"))?;
    Ok(Response {
        status,
        body: body.to_owned(),
    })
}

/// `GET path` on `addr` from inside `ns`.
pub fn get(ns: &Netns, addr: SocketAddr, path: &str) -> Result<Response> {
    exchange(
        ns,
        addr,
        format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n"),
    )
}
