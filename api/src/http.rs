//! HTTP/1.1 message framing for the API socket (RFC 9112): request parsing (the request line
//! and header section by `httparse`, the body by `Content-Length`), `Expect: 100-continue`,
//! persistent connections and pipelined requests, and response writing.
//!
//! Limits, as a control socket needs: the header section at most [`MAX_HEADER_BYTES`] in at
//! most [`MAX_HEADERS`] fields; the body at most [`MAX_BODY_BYTES`] (Firecracker's default
//! `--http-api-max-payload-size`), refused when its `Content-Length` is read, before the body
//! arrives. Not supported: `Transfer-Encoding` (chunked bodies; clients of a JSON API send
//! `Content-Length`), which is refused with 501 as RFC 9112 section 6.1 prescribes for a
//! coding a server does not implement. Every framing error ends the connection after its
//! response, since the stream cannot be resynchronised.

/// Largest request line plus header section.
pub const MAX_HEADER_BYTES: usize = 8 << 10;
/// Most header fields in a request.
pub const MAX_HEADERS: usize = 32;
/// Largest request body: Firecracker's default API payload limit.
pub const MAX_BODY_BYTES: usize = 51_200;

/// A request as the router sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `PUT`, `PATCH`, ...
    pub method: String,
    /// The path, without scheme, authority or query (`/drives/rootfs`).
    pub path: String,
    /// The body, `None` when the request has none (no or zero `Content-Length`).
    pub body: Option<Vec<u8>>,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
}

/// A framing error: the response's status and message; the connection then closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FramingError {
    /// 400, or 501 for a transfer coding.
    pub status: u16,
    /// For the fault message.
    pub message: String,
}

fn bad(message: impl Into<String>) -> FramingError {
    FramingError {
        status: 400,
        message: message.into(),
    }
}

/// One connection's input: bytes in, whole requests out.
#[derive(Debug, Default)]
pub struct RequestReader {
    buf: Vec<u8>,
    /// `100 Continue` already sent for the request being read.
    continued: bool,
}

/// What the reader has.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A whole request.
    Request(Request),
    /// Not yet: more bytes are needed. `send_continue`: write `100 Continue` now (the client
    /// waits for it before it sends the body).
    Partial {
        /// Answer `Expect: 100-continue`.
        send_continue: bool,
    },
}

impl RequestReader {
    /// Adds bytes read from the connection.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes read and not yet taken as requests.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Whether part of a request has arrived.
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The next whole request, if its bytes are all in.
    pub fn next_request(&mut self) -> Result<Next, FramingError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(&self.buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if self.buf.len() > MAX_HEADER_BYTES {
                    return Err(bad(format!(
                        "The request line and headers are larger than {MAX_HEADER_BYTES} bytes."
                    )));
                }
                return Ok(Next::Partial {
                    send_continue: false,
                });
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(bad(format!(
                    "The request has more than {MAX_HEADERS} header fields."
                )))
            }
            Err(e) => return Err(bad(format!("Invalid HTTP request: {e}."))),
        };
        if head_len > MAX_HEADER_BYTES {
            return Err(bad(format!(
                "The request line and headers are larger than {MAX_HEADER_BYTES} bytes."
            )));
        }
        let method = req.method.unwrap_or("").to_string();
        let target = req.path.unwrap_or("");
        let version = req.version.unwrap_or(1);
        let mut content_length: Option<usize> = None;
        let mut expect_continue = false;
        let mut close = version == 0;
        for h in req.headers.iter() {
            let value = std::str::from_utf8(h.value)
                .map_err(|_| bad(format!("Header {} is not valid UTF-8.", h.name)))?
                .trim();
            if h.name.eq_ignore_ascii_case("content-length") {
                let n = value
                    .parse::<usize>()
                    .map_err(|_| bad(format!("Invalid Content-Length: {value}.")))?;
                if content_length.is_some_and(|c| c != n) {
                    return Err(bad("Conflicting Content-Length headers."));
                }
                content_length = Some(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(FramingError {
                    status: 501,
                    message: format!(
                        "Transfer-Encoding {value} is not supported: send the body with a Content-Length."
                    ),
                });
            } else if h.name.eq_ignore_ascii_case("expect") {
                if value.eq_ignore_ascii_case("100-continue") {
                    expect_continue = true;
                } else {
                    return Err(FramingError {
                        status: 417,
                        message: format!("Expect: {value} is not supported."),
                    });
                }
            } else if h.name.eq_ignore_ascii_case("connection") {
                for token in value.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case("keep-alive") && version == 0 {
                        close = false;
                    }
                }
            }
        }
        let path = request_path(target)?;
        let body_len = content_length.unwrap_or(0);
        if body_len > MAX_BODY_BYTES {
            return Err(bad(format!(
                "Request payload with size {body_len} is larger than the limit of {MAX_BODY_BYTES} allowed by server."
            )));
        }
        let total = head_len + body_len;
        if self.buf.len() < total {
            let send_continue = expect_continue && !self.continued;
            self.continued |= send_continue;
            return Ok(Next::Partial { send_continue });
        }
        let body = (body_len > 0).then(|| self.buf[head_len..total].to_vec());
        self.buf.drain(..total);
        self.continued = false;
        Ok(Next::Request(Request {
            method,
            path,
            body,
            keep_alive: !close,
        }))
    }
}

/// The path of a request target: origin form (`/a/b?q`) or absolute form
/// (`http://localhost/a/b`), without the query.
fn request_path(target: &str) -> Result<String, FramingError> {
    let rest = match target.split_once("://") {
        Some((_, after)) => match after.find('/') {
            Some(i) => &after[i..],
            None => "/",
        },
        None => target,
    };
    if !rest.starts_with('/') {
        return Err(bad(format!("Invalid URI: {target}.")));
    }
    let path = rest.split(['?', '#']).next().unwrap_or("/");
    Ok(path.to_string())
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// A JSON body.
    pub body: Option<String>,
}

impl Response {
    /// 204 No Content.
    pub fn no_content() -> Self {
        Self {
            status: 204,
            body: None,
        }
    }

    /// 200 with a JSON body.
    pub fn json(value: &serde_json::Value) -> Self {
        Self {
            status: 200,
            body: Some(value.to_string()),
        }
    }

    /// An error with Firecracker's `{"fault_message": ...}` body.
    pub fn fault(status: u16, message: &str) -> Self {
        Self {
            status,
            body: Some(serde_json::json!({ "fault_message": message }).to_string()),
        }
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self, keep_alive: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nServer: Ember API\r\nConnection: {}\r\n",
            self.status,
            reason(self.status),
            if keep_alive { "keep-alive" } else { "close" }
        );
        if let Some(b) = &self.body {
            out.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            ));
        } else if self.status == 204 {
            out.push_str("\r\n");
        } else {
            out.push_str("Content-Length: 0\r\n\r\n");
        }
        out.into_bytes()
    }
}

/// The interim response to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        417 => "Expectation Failed",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(bytes: &[u8]) -> Result<Next, FramingError> {
        let mut r = RequestReader::default();
        r.feed(bytes);
        r.next_request()
    }

    fn request(bytes: &[u8]) -> Request {
        match one(bytes) {
            Ok(Next::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn content_length_frames_the_body() {
        let r = request(b"PUT /actions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 31\r\n\r\n{\"action_type\": \"InstanceStart\"}");
        assert_eq!(r.method, "PUT");
        assert_eq!(r.path, "/actions");
        assert_eq!(
            r.body.as_deref(),
            Some(&b"{\"action_type\": \"InstanceStart\""[..])
        );
        assert!(r.keep_alive);
        // No Content-Length: no body, whatever follows is the next request.
        let r = request(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!((r.path.as_str(), r.body), ("/", None));
        let r = request(b"PUT /vm HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(r.body, None);
    }

    #[test]
    fn bytes_arrive_in_pieces() {
        let msg = b"PATCH /vm HTTP/1.1\r\nContent-Length: 18\r\n\r\n{\"state\":\"Paused\"}";
        let mut r = RequestReader::default();
        for (i, b) in msg.iter().enumerate() {
            r.feed(&[*b]);
            let n = r.next_request().expect("valid so far");
            if i + 1 < msg.len() {
                assert_eq!(
                    n,
                    Next::Partial {
                        send_continue: false
                    },
                    "at byte {i}"
                );
            } else {
                assert!(
                    matches!(n, Next::Request(ref q) if q.body.as_deref() == Some(&b"{\"state\":\"Paused\"}"[..]))
                );
            }
        }
        assert!(!r.has_partial());
    }

    #[test]
    fn pipelined_requests_come_out_in_order() {
        let mut r = RequestReader::default();
        r.feed(b"GET /version HTTP/1.1\r\n\r\nPUT /logger HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        let paths: Vec<(String, bool)> = (0..3)
            .map(|_| match r.next_request() {
                Ok(Next::Request(q)) => (q.path, q.keep_alive),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            paths,
            [
                ("/version".into(), true),
                ("/logger".into(), true),
                ("/".into(), false)
            ]
        );
        assert_eq!(
            r.next_request(),
            Ok(Next::Partial {
                send_continue: false
            })
        );
    }

    #[test]
    fn expect_continue_is_answered_once() {
        let mut r = RequestReader::default();
        r.feed(b"PUT /drives/a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(
            r.next_request(),
            Ok(Next::Partial {
                send_continue: true
            })
        );
        assert_eq!(
            r.next_request(),
            Ok(Next::Partial {
                send_continue: false
            })
        );
        r.feed(b"{}");
        assert!(matches!(r.next_request(), Ok(Next::Request(_))));
    }

    #[test]
    fn oversized_chunked_and_malformed_requests_are_refused() {
        let big = format!(
            "PUT /drives/a HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        let e = one(big.as_bytes()).expect_err("too big");
        assert_eq!(e.status, 400);
        assert!(e.message.contains("larger than the limit of 51200"), "{e}");
        let e = one(
            b"PUT /actions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
        .expect_err("chunked");
        assert_eq!(e.status, 501);
        assert_eq!(one(b"GARBAGE\r\n\r\n").expect_err("bad").status, 400);
        assert_eq!(
            one(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n")
                .expect_err("bad")
                .status,
            400
        );
        assert_eq!(
            one(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
                .expect_err("bad")
                .status,
            400
        );
        let huge_header = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEADER_BYTES)
        );
        assert!(one(huge_header.as_bytes())
            .expect_err("bad")
            .message
            .contains("8192"));
        let endless = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEADER_BYTES + 10));
        assert_eq!(one(endless.as_bytes()).expect_err("bad").status, 400);
        let many: String = (0..40).map(|i| format!("X-{i}: y\r\n")).collect();
        let e = one(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()).expect_err("many");
        assert!(e.message.contains("header fields"), "{e}");
        assert_eq!(
            one(b"GET foo HTTP/1.1\r\n\r\n").expect_err("uri").status,
            400
        );
    }

    #[test]
    fn targets_and_versions() {
        assert_eq!(
            request(b"GET http://localhost/machine-config HTTP/1.1\r\n\r\n").path,
            "/machine-config"
        );
        assert_eq!(
            request(b"GET /vm/config?x=1 HTTP/1.1\r\n\r\n").path,
            "/vm/config"
        );
        assert!(!request(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(request(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
    }

    #[test]
    fn responses() {
        let r = Response::no_content().to_bytes(true);
        assert_eq!(
            r,
            b"HTTP/1.1 204 No Content\r\nServer: Ember API\r\nConnection: keep-alive\r\n\r\n"
        );
        let r =
            String::from_utf8(Response::fault(400, "bad \"x\"").to_bytes(false)).expect("utf-8");
        assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(r.contains("Connection: close\r\n"));
        assert!(r.ends_with("\r\n\r\n{\"fault_message\":\"bad \\\"x\\\"\"}"));
        assert!(r.contains(&format!(
            "Content-Length: {}\r\n",
            "{\"fault_message\":\"bad \\\"x\\\"\"}".len()
        )));
    }
}
