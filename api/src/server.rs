//! The API socket and its thread: a Unix stream socket at the `--api-sock` path, served by one
//! thread with `poll(2)` over the listening socket, the connections and a shutdown eventfd,
//! under its own seccomp list ([`crate::seccomp`]). Each whole request is routed
//! ([`crate::routes`]) and handed to the VMM thread's controller, whose answer is written back
//! in order; pipelined requests, `Expect: 100-continue` and persistent connections work as in
//! RFC 9112 ([`crate::http`]).
//!
//! A client cannot stall the API: sockets are non-blocking, a client that sends nothing just
//! holds its connection (at most [`MAX_CONNECTIONS`] are kept; a new one evicts the least
//! recently active), one that disconnects mid-request is dropped, one that does not read its
//! responses stops being read once [`MAX_PENDING_OUTPUT`] bytes wait for it.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Sender};
use std::thread::JoinHandle;
use std::time::Instant;

use vmm::seccomp::SeccompMode;

use crate::controller::Event;
use crate::http::{Next, RequestReader, Response, CONTINUE};
use crate::routes::route;

/// Connections kept at once.
pub const MAX_CONNECTIONS: usize = 32;
/// Response bytes waiting for a client before its requests are no longer read.
pub const MAX_PENDING_OUTPUT: usize = 1 << 20;

/// Errors setting up the API socket.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The socket cannot be created at the path (it exists: Firecracker says "Address in use").
    #[error("Failed to bind the API socket {path}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The shutdown eventfd.
    #[error("Cannot create the API server's shutdown event")]
    EventFd(#[source] std::io::Error),
    /// The thread.
    #[error("Cannot start the API thread")]
    Thread(#[source] std::io::Error),
    /// The seccomp filter.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
}

/// The bound, listening API socket.
#[derive(Debug)]
pub struct ApiSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ApiSocket {
    /// Creates the socket at `path` and listens; fails if anything exists there.
    pub fn bind(path: &Path) -> Result<Self, ServerError> {
        let bind_err = |source| ServerError::Bind {
            path: path.to_path_buf(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        let sock = Self {
            listener,
            path: path.to_path_buf(),
        };
        sock.listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(sock)
    }

    /// Serves the socket on a new thread, handing requests to the controller on `events`.
    pub fn spawn(
        self,
        events: Sender<Event>,
        seccomp: SeccompMode,
    ) -> Result<ApiServer, ServerError> {
        let program = if seccomp.filters() {
            Some(crate::seccomp::program(seccomp)?)
        } else {
            None
        };
        // SAFETY: eventfd creates a new descriptor, owned here on success.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(ServerError::EventFd(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let kill = unsafe { OwnedFd::from_raw_fd(fd) };
        let kill_for_thread = kill.try_clone().map_err(ServerError::EventFd)?;
        let path = self.path.clone();
        let listener = self.listener;
        let thread = std::thread::Builder::new()
            .name("ember-api".into())
            .spawn(move || {
                if let Some(p) = program {
                    if let Err(e) = crate::seccomp::apply(&p) {
                        log::error!("api: {e}; the API socket is not served");
                        return;
                    }
                }
                serve(&listener, &kill_for_thread, &events);
            })
            .map_err(ServerError::Thread)?;
        Ok(ApiServer {
            kill,
            thread: Some(thread),
            path,
        })
    }
}

/// The running API thread. [`ApiServer::shutdown`] (or dropping it) stops the thread and
/// removes the socket file.
#[derive(Debug)]
pub struct ApiServer {
    kill: OwnedFd,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl ApiServer {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops the thread, then removes the socket file.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a valid buffer to our eventfd.
        unsafe { libc::write(self.kill.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Conn {
    stream: UnixStream,
    reader: RequestReader,
    out: Vec<u8>,
    /// Answered a request that closes the connection (or a framing error): no more reads.
    closing: bool,
    dead: bool,
    last_active: Instant,
}

impl Conn {
    fn wants_read(&self) -> bool {
        !self.closing && !self.dead && self.out.len() < MAX_PENDING_OUTPUT
    }

    /// Writes what it can without blocking.
    fn flush(&mut self) {
        while !self.out.is_empty() && !self.dead {
            match (&self.stream).write(&self.out) {
                Ok(0) => self.dead = true,
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => self.dead = true,
            }
        }
    }

    /// Reads what is there and answers every whole request in it.
    fn read_and_serve(&mut self, events: &Sender<Event>) {
        let mut buf = [0u8; 16 << 10];
        loop {
            match (&self.stream).read(&mut buf) {
                Ok(0) => {
                    // The client is gone (mid-request or not): nothing to answer.
                    self.dead = true;
                    return;
                }
                Ok(n) => {
                    self.reader.feed(&buf[..n]);
                    self.last_active = Instant::now();
                    // Never more than one whole request's worth ahead: a client that writes
                    // without pause is read again after its requests were answered.
                    if n < buf.len()
                        || self.reader.buffered()
                            > crate::http::MAX_HEADER_BYTES + crate::http::MAX_BODY_BYTES
                    {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.dead = true;
                    return;
                }
            }
        }
        self.serve_buffered(events);
    }

    /// Answers the whole requests already read; answers pile up no further than the output
    /// limit (pipelined requests wait for the client to take them).
    fn serve_buffered(&mut self, events: &Sender<Event>) {
        while !self.closing {
            if self.out.len() >= MAX_PENDING_OUTPUT {
                self.flush();
                if self.out.len() >= MAX_PENDING_OUTPUT || self.dead {
                    break; // POLLOUT brings this back
                }
            }
            match self.reader.next_request() {
                Ok(Next::Request(req)) => {
                    let response = dispatch(events, &req);
                    self.out.extend(response.to_bytes(req.keep_alive));
                    self.closing = !req.keep_alive;
                }
                Ok(Next::Partial { send_continue }) => {
                    if send_continue {
                        self.out.extend_from_slice(CONTINUE);
                    }
                    break;
                }
                Err(e) => {
                    self.out
                        .extend(Response::fault(e.status, &e.message).to_bytes(false));
                    self.closing = true;
                }
            }
        }
        self.flush();
    }
}

/// Routes a request and has the controller carry it out.
fn dispatch(events: &Sender<Event>, req: &crate::http::Request) -> Response {
    let action = match route(req) {
        Ok(a) => a,
        Err(message) => return Response::fault(400, &message),
    };
    let (tx, rx) = channel();
    if events.send(Event::Request(Box::new(action), tx)).is_err() {
        return Response::fault(503, "The VMM is shutting down.");
    }
    rx.recv()
        .unwrap_or_else(|_| Response::fault(503, "The VMM is shutting down."))
}

fn accept(listener: &UnixListener) -> Option<UnixStream> {
    // SAFETY: accept4 on our listening socket, no peer address wanted.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a new connected socket owned by nothing else.
    Some(unsafe { UnixStream::from_raw_fd(fd) })
}

fn serve(listener: &UnixListener, kill: &OwnedFd, events: &Sender<Event>) {
    let mut conns: Vec<Conn> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    loop {
        fds.clear();
        for fd in [kill.as_raw_fd(), listener.as_raw_fd()] {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        for c in &conns {
            let mut ev = 0;
            if c.wants_read() {
                ev |= libc::POLLIN;
            }
            if !c.out.is_empty() {
                ev |= libc::POLLOUT;
            }
            fds.push(libc::pollfd {
                fd: c.stream.as_raw_fd(),
                events: ev,
                revents: 0,
            });
        }
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structures.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("api: poll failed: {e}; the API socket is no longer served");
            return;
        }
        if fds[0].revents != 0 {
            return;
        }
        for (c, p) in conns.iter_mut().zip(&fds[2..]) {
            if p.revents & libc::POLLOUT != 0 {
                c.flush();
                // Requests read earlier that waited for room.
                if c.wants_read() && c.reader.has_partial() {
                    c.serve_buffered(events);
                }
            }
            if p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                if c.wants_read() {
                    c.read_and_serve(events);
                } else if p.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                    c.dead = true;
                }
            }
        }
        conns.retain(|c| !(c.dead || c.closing && c.out.is_empty()));
        if fds[1].revents != 0 {
            while let Some(stream) = accept(listener) {
                if conns.len() >= MAX_CONNECTIONS {
                    // Make room: the least recently active connection goes.
                    if let Some(i) = conns
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, c)| c.last_active)
                        .map(|(i, _)| i)
                    {
                        conns.swap_remove(i);
                    }
                }
                conns.push(Conn {
                    stream,
                    reader: RequestReader::default(),
                    out: Vec::new(),
                    closing: false,
                    dead: false,
                    last_active: Instant::now(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A server whose controller answers every request with 204 (or 200 for GETs).
    fn server(name: &str) -> (ApiServer, PathBuf, std::thread::JoinHandle<()>) {
        let path =
            std::env::temp_dir().join(format!("ember-api-srv-{}-{name}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let (tx, rx) = channel::<Event>();
        let sock = ApiSocket::bind(&path).expect("bind");
        let srv = sock.spawn(tx, SeccompMode::Off).expect("spawn");
        let ctl = std::thread::spawn(move || {
            while let Ok(ev) = rx.recv() {
                if let Event::Request(a, reply) = ev {
                    let _ = reply.send(match *a {
                        crate::routes::Action::GetVersion => {
                            Response::json(&serde_json::json!({"v": 1}))
                        }
                        _ => Response::no_content(),
                    });
                }
            }
        });
        (srv, path, ctl)
    }

    fn exchange(s: &mut UnixStream, req: &[u8]) -> String {
        s.write_all(req).expect("send");
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).expect("read");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn a_second_bind_fails_and_shutdown_removes_the_socket() {
        let (srv, path, ctl) = server("bind");
        assert!(matches!(
            ApiSocket::bind(&path),
            Err(ServerError::Bind { .. })
        ));
        assert!(path.exists());
        srv.shutdown();
        assert!(!path.exists(), "the socket file is removed");
        let _ = ctl.join();
    }

    #[test]
    fn idle_and_vanishing_clients_do_not_stop_the_others() {
        let (srv, path, ctl) = server("idle");
        let _silent = UnixStream::connect(&path).expect("connect");
        let mut half = UnixStream::connect(&path).expect("connect");
        half.write_all(b"PUT /actions HTTP/1.1\r\nContent-Length: 40\r\n\r\n{\"act")
            .expect("half a request");
        drop(half);
        let mut s = UnixStream::connect(&path).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let r = exchange(&mut s, b"GET /version HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.ends_with("{\"v\":1}"), "{r}");
        // Pipelined, on the same connection.
        s.write_all(b"PATCH /vm HTTP/1.1\r\nContent-Length: 18\r\n\r\n{\"state\":\"Paused\"}PATCH /vm HTTP/1.1\r\nContent-Length: 19\r\n\r\n{\"state\":\"Resumed\"}")
            .expect("send");
        let mut got = String::new();
        let mut buf = [0u8; 4096];
        while got.matches("204 No Content").count() < 2 {
            let n = s.read(&mut buf).expect("read");
            assert!(n > 0);
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        // More clients than connections kept: the newest still gets answers.
        let extra: Vec<UnixStream> = (0..MAX_CONNECTIONS + 4)
            .map(|_| UnixStream::connect(&path).expect("connect"))
            .collect();
        let mut last = UnixStream::connect(&path).expect("connect");
        last.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        assert!(exchange(&mut last, b"GET /version HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
        drop(extra);
        srv.shutdown();
        let _ = ctl.join();
    }

    #[test]
    fn framing_errors_close_the_connection_with_a_fault() {
        let (srv, path, ctl) = server("framing");
        let mut s = UnixStream::connect(&path).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let r = exchange(
            &mut s,
            b"PUT /drives/x HTTP/1.1\r\nContent-Length: 999999\r\n\r\n",
        );
        assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{r}");
        assert!(r.contains("Connection: close"), "{r}");
        assert!(r.contains("larger than the limit"), "{r}");
        let mut rest = Vec::new();
        assert_eq!(s.read_to_end(&mut rest).expect("eof"), 0, "closed");
        let mut s = UnixStream::connect(&path).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let r = exchange(
            &mut s,
            b"PUT /actions HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 32\r\n\r\n",
        );
        assert_eq!(r, "HTTP/1.1 100 Continue\r\n\r\n");
        let r = exchange(&mut s, b"{\"action_type\": \"InstanceStart\"}");
        assert!(r.starts_with("HTTP/1.1 204"), "{r}");
        let r = exchange(
            &mut s,
            b"PUT /actions HTTP/1.1\r\nContent-Length: 9\r\n\r\n{\"a\": 1}}",
        );
        assert!(
            r.starts_with("HTTP/1.1 400") && r.contains("unknown field `a`"),
            "{r}"
        );
        srv.shutdown();
        let _ = ctl.join();
    }
}
