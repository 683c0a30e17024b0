//! The connection layer of `braid serve`: accepting TCP connections and
//! driving HTTP/1.1 on each with hyper (as `axum::serve` does, but owning
//! what it leaves out). Owns, below the routes:
//! - the connection cap: above [`ConnConfig::max_connections`] a new
//!   connection gets a fast JSON 503 and is closed (or, when even the
//!   rejecters are busy, is closed at once); it never waits;
//! - the header-read timeout (a request's head must arrive within it; covers
//!   silent sockets and slowloris) and the idle keep-alive timeout, which
//!   keep-alive answers advertise (`Keep-Alive: timeout=N`) so clients that
//!   read it retire a pooled connection before the server closes it;
//! - half-closed clients (`shutdown(SHUT_WR)` after a full request, as
//!   `nc -N` does): answered; and yet a client that closed its socket
//!   altogether while its request runs is noticed, so its texts are dropped
//!   from the queue (cancelled, never computed). Both send a FIN; they differ
//!   only in whether their socket still takes data. So when the read side
//!   ends while an HTTP/1.1 request runs, the watchdog sends an interim
//!   `100 Continue` (which RFC 9110 requires every HTTP/1.1 client to accept
//!   before the final answer): a half-closed client reads it, a closed one
//!   answers with a TCP reset, and the connection is then dropped, which
//!   drops the request's handler and with it its batcher handles;
//! - the Host check: on a loopback-bound server without an API key, a Host
//!   header that is not a loopback name gets 403 (DNS rebinding);
//! - JSON bodies for every error, including hyper's own automatic answers
//!   to unparseable requests (400, 414, 431) and axum's empty 405;
//! - graceful shutdown bounded by [`ConnConfig::shutdown_timeout`]: stop
//!   accepting, let each connection finish its request in flight, close the
//!   rest when the timeout passes;
//! - closing a connection whose request body was not read (an answer given
//!   before the body was needed: 401, 403, 404, 413...) the way keep-alive
//!   clients handle (issue 16's broken pipes): the answer says
//!   `Connection: close`, and the socket is closed by a lingering close
//!   (FIN, then what the client still sends is read and dropped, bounded by
//!   [`LINGER_TIME`] and [`LINGER_BYTES`]). Without it hyper closed such a
//!   connection silently after a keep-alive answer, with unread bytes in the
//!   socket, so the kernel sent a reset: the client's next request on its
//!   pooled connection failed with a broken pipe, or the reset destroyed the
//!   answer before the client read it.

use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue, Request, Response, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt;

/// Connection settings (every one bounded by `braid serve` at start-up).
#[derive(Clone, Debug)]
pub struct ConnConfig {
    /// A request's head (request line and headers) must arrive within this
    /// long from its first byte, and a new connection must send its first
    /// request's head within this long.
    pub header_read_timeout: Duration,
    /// A keep-alive connection idle this long between requests is closed.
    pub keep_alive_timeout: Duration,
    /// Open connections, at most; above it a connection gets a fast 503.
    pub max_connections: usize,
    /// After the shutdown signal, connections still open this long are
    /// closed (the requests in them are abandoned).
    pub shutdown_timeout: Duration,
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig { header_read_timeout: Duration::from_secs(10), keep_alive_timeout: Duration::from_secs(30), max_connections: default_max_connections(), shutdown_timeout: Duration::from_secs(30) }
    }
}

/// Descriptors kept back from the connection cap for the model files, the
/// listener, the rejecters and the process's own use.
pub const FD_RESERVE: usize = 128;

/// A lingering close (see the module docs) reads and drops what the client
/// still sends for at most this long...
pub const LINGER_TIME: Duration = Duration::from_secs(2);
/// ...and at most this many bytes.
pub const LINGER_BYTES: usize = 16 << 20;

/// Connections being answered with a 503 at once, at most; beyond it an
/// excess connection is closed without an answer (refused).
const MAX_REJECTING: usize = 64;

/// The open-file limit of this process (`RLIMIT_NOFILE`, soft), if known.
pub fn fd_limit() -> Option<usize> {
    #[cfg(unix)]
    {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes only into the rlimit struct we own and
        // pass by valid pointer.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
        if rc == 0 {
            return Some(usize::try_from(r.rlim_cur).unwrap_or(usize::MAX));
        }
    }
    None
}

/// The default cap: 1024, or what the open-file limit leaves after
/// [`FD_RESERVE`] and the rejecters (at least 16).
pub fn default_max_connections() -> usize {
    match fd_limit() {
        Some(n) => n.saturating_sub(FD_RESERVE + MAX_REJECTING).clamp(16, 1024),
        None => 1024,
    }
}

/// What the watchdog of one connection sees. Every field is written by the
/// connection's own task (its IO and its service run inside the hyper
/// connection future) and read by the same task's watchdog branch, so
/// Relaxed suffices everywhere: there is no other thread to order against;
/// atomics only make the struct `Sync` for the `Arc`.
struct Activity {
    start: Instant,
    /// Requests whose handler is running.
    active: AtomicUsize,
    /// Milliseconds since `start` when the connection last became idle (the
    /// last response handed to hyper; 0 = the connection's start).
    idle_since_ms: AtomicU64,
    /// Milliseconds since `start` of the first byte read while idle (a
    /// request head being received); `u64::MAX` = none.
    head_started_ms: AtomicU64,
    /// Whether a request has been handled on this connection.
    served: AtomicBool,
    /// Responses handed to hyper whose head has not been written yet.
    responses_pending: AtomicUsize,
    /// The client's read side has ended (FIN: it half-closed or closed).
    read_eof: AtomicBool,
    /// The running request is HTTP/1.1 (a 1xx may be sent to it).
    http11: AtomicBool,
    /// The interim `100 Continue` probe was sent for the running request.
    probed: AtomicBool,
    /// A request body was left unread (or hyper answered an unparseable
    /// request): close this connection with a lingering close.
    linger: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            active: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(u64::MAX),
            served: AtomicBool::new(false),
            responses_pending: AtomicUsize::new(0),
            read_eof: AtomicBool::new(false),
            http11: AtomicBool::new(false),
            probed: AtomicBool::new(false),
            linger: AtomicBool::new(false),
        }
    }
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
    /// The moment this connection has outlived its timeouts, if it is not
    /// running a request: `Some(deadline)` to check again then.
    fn deadline(&self, c: &ConnConfig) -> Option<Duration> {
        // Relaxed: see the struct's comment.
        if self.active.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let ms = |d: Duration| d.as_millis() as u64;
        let head = self.head_started_ms.load(Ordering::Relaxed);
        let at = if head != u64::MAX {
            head + ms(c.header_read_timeout)
        } else if !self.served.load(Ordering::Relaxed) {
            ms(c.header_read_timeout)
        } else {
            self.idle_since_ms.load(Ordering::Relaxed) + ms(c.keep_alive_timeout)
        };
        Some(Duration::from_millis(at))
    }
}

/// The connection's socket as hyper sees it: reads mark activity for the
/// watchdog; a response head that hyper writes on its own (an unparseable
/// request: 400, 414, 431) is replaced by the same status with a JSON body.
struct WatchedIo {
    inner: TcpStream,
    act: Arc<Activity>,
    /// A replacement response still to be written.
    pending: Vec<u8>,
    /// After a replacement, hyper's own bytes are dropped (it closes next).
    swallow: bool,
    /// The lingering close under way: its deadline and the bytes dropped.
    lingering: Option<(Pin<Box<tokio::time::Sleep>>, usize)>,
}

impl WatchedIo {
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for WatchedIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let room = buf.remaining() > 0;
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && room && buf.filled().len() == before {
            // Relaxed: see Activity.
            self.act.read_eof.store(true, Ordering::Relaxed);
        }
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let a = &self.act;
            // Relaxed: see Activity.
            if a.active.load(Ordering::Relaxed) == 0 && a.head_started_ms.load(Ordering::Relaxed) == u64::MAX {
                a.head_started_ms.store(a.now_ms(), Ordering::Relaxed);
            }
        }
        r
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        std::task::ready!(self.drain(cx))?;
        if self.swallow {
            return Poll::Ready(Ok(buf.len()));
        }
        if buf.starts_with(b"HTTP/1.") && buf.len() >= 12 {
            let status = std::str::from_utf8(&buf[9..12]).ok().and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
            // Relaxed: see Activity.
            let ours = self.act.responses_pending.load(Ordering::Relaxed);
            if (100..200).contains(&status) {
                // 100 Continue: hyper's, before our handler's answer.
            } else if ours > 0 {
                self.act.responses_pending.store(ours - 1, Ordering::Relaxed);
            } else {
                // No handler answered: hyper's automatic answer to a request
                // it could not parse. Same status, JSON body, then close.
                let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
                self.pending = raw_json_response(code, &parse_error_message(code));
                self.swallow = true;
                // What follows the unparseable head is never read.
                self.act.linger.store(true, Ordering::Relaxed);
                std::task::ready!(self.drain(cx))?;
                return Poll::Ready(Ok(buf.len()));
            }
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    /// hyper closes a connection through this (after its last answer). A
    /// connection with unread request bytes gets a lingering close: FIN,
    /// then read and drop until the client closes too (or the bounds pass),
    /// so the kernel never answers those bytes with a reset.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.drain(cx))?;
        if self.lingering.is_none() {
            std::task::ready!(Pin::new(&mut self.inner).poll_shutdown(cx))?;
            // Relaxed: see Activity.
            if !self.act.linger.load(Ordering::Relaxed) {
                return Poll::Ready(Ok(()));
            }
            self.lingering = Some((Box::pin(tokio::time::sleep(LINGER_TIME)), 0));
        }
        let this = &mut *self;
        let Some((deadline, dropped)) = this.lingering.as_mut() else { return Poll::Ready(Ok(())) };
        if deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        let mut sink = [0u8; 16 << 10];
        loop {
            let mut buf = ReadBuf::new(&mut sink);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    *dropped += buf.filled().len();
                    if *dropped > LINGER_BYTES {
                        return Poll::Ready(Ok(()));
                    }
                }
                // The client closed too (or its socket failed): done.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

fn parse_error_message(code: StatusCode) -> String {
    match code {
        StatusCode::URI_TOO_LONG => "request URI too long".into(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "request headers too large (too many, or too many bytes)".into(),
        _ => "malformed HTTP request: the request line or headers could not be parsed".into(),
    }
}

/// The `error_type` for a status.
pub(crate) fn error_type(code: StatusCode) -> &'static str {
    match code.as_u16() {
        401 | 403 => "auth",
        408 | 504 => "timeout",
        503 => "overloaded",
        400..=499 => "validation",
        _ => "backend",
    }
}

fn json_body(code: StatusCode, message: &str) -> String {
    json!({ "error": message, "error_type": error_type(code) }).to_string()
}

/// A whole `Connection: close` response with a JSON error body, as bytes
/// (for answers written below hyper).
fn raw_json_response(code: StatusCode, message: &str) -> Vec<u8> {
    let body = json_body(code, message);
    format!("HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", code.as_u16(), code.canonical_reason().unwrap_or(""), body.len()).into_bytes()
}

fn json_response(code: StatusCode, message: &str) -> Response<Body> {
    let mut r = Response::new(Body::from(json_body(code, message)));
    *r.status_mut() = code;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Whether `host` (a Host header's value) names the loopback interface:
/// `localhost`, `*.localhost`, `127.0.0.0/8` or `::1`, with or without a
/// port.
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim();
    let name = if let Some(rest) = h.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, tail)) if tail.is_empty() || (tail.starts_with(':') && tail[1..].bytes().all(|b| b.is_ascii_digit())) => ip,
            _ => return false,
        }
    } else {
        match h.rsplit_once(':') {
            Some((n, port)) if !n.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => n,
            Some(_) => h,
            None => h,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// What every request goes through before and after the router.
#[derive(Clone)]
struct Front {
    router: Router,
    /// Refuse Host headers that are not loopback names.
    check_host: bool,
}

/// A request head (URI and headers) over this many bytes gets 431. hyper's
/// own limit (its read buffer, ~400 KiB) holds only when the head arrives
/// in pieces; this one always does.
pub const MAX_HEAD_BYTES: usize = 64 << 10;

/// A request body that records whether it was read to its end.
struct Tracked {
    inner: Incoming,
    ended: Arc<AtomicBool>,
}

impl axum::body::HttpBody for Tracked {
    type Data = axum::body::Bytes;
    type Error = hyper::Error;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None)) || self.inner.is_end_stream() {
            // Relaxed: read by the same connection task after the handler
            // returned (see Activity).
            self.ended.store(true, Ordering::Relaxed);
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Front {
    /// Answer `req`; the flag: whether its body was read to the end (if
    /// not, the connection must close after the answer: see the module
    /// docs).
    async fn handle_tracked(self, req: Request<Incoming>) -> (Response<Body>, bool) {
        let ended = Arc::new(AtomicBool::new(axum::body::HttpBody::is_end_stream(req.body())));
        let req = req.map(|inner| Tracked { inner, ended: ended.clone() });
        let resp = self.handle(req).await;
        // Relaxed: see Tracked.
        (resp, ended.load(Ordering::Relaxed))
    }

    async fn handle(self, req: Request<Tracked>) -> Response<Body> {
        let head: usize = req.uri().to_string().len() + req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum::<usize>();
        if head > MAX_HEAD_BYTES {
            let mut r = json_response(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, &format!("request head of {head} bytes; at most {MAX_HEAD_BYTES}"));
            r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
        if self.check_host {
            if let Some(h) = req.headers().get(header::HOST) {
                let ok = h.to_str().is_ok_and(is_loopback_host);
                if !ok {
                    let shown = String::from_utf8_lossy(h.as_bytes()).chars().take(100).collect::<String>();
                    eprintln!("serve: refused Host {shown:?} (loopback server without --api-key)");
                    return json_response(StatusCode::FORBIDDEN, "this server is bound to loopback without an API key and answers only requests whose Host is a loopback name (localhost, 127.0.0.1, [::1]); start it with --api-key to serve other names");
                }
            }
        }
        let method = req.method().clone();
        let path = req.uri().path().chars().take(200).collect::<String>();
        let resp = match self.router.oneshot(req.map(Body::new)).await {
            Ok(r) => r,
            Err(e) => match e {},
        };
        jsonify(resp, &method, &path)
    }
}

/// An error response without a JSON body gets one (axum's 405, for one);
/// headers such as `Allow` are kept.
fn jsonify(resp: Response<Body>, method: &axum::http::Method, path: &str) -> Response<Body> {
    let code = resp.status();
    let is_json = resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json"));
    if !(code.is_client_error() || code.is_server_error()) || is_json {
        return resp;
    }
    let (mut parts, _) = resp.into_parts();
    let msg = match code {
        StatusCode::METHOD_NOT_ALLOWED => {
            let allow = parts.headers.get(header::ALLOW).and_then(|v| v.to_str().ok()).unwrap_or("");
            format!("method {method} is not allowed on {path}; allowed: {allow}")
        }
        _ => format!("{} ({method} {path})", code.canonical_reason().unwrap_or("error")),
    };
    let body = json_body(code, &msg);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

/// Marks a request running for the watchdog; on drop (answered or
/// abandoned) the connection is idle again.
struct Running(Arc<Activity>);

impl Running {
    fn new(a: Arc<Activity>) -> Self {
        // Relaxed: see Activity.
        a.active.fetch_add(1, Ordering::Relaxed);
        a.served.store(true, Ordering::Relaxed);
        a.head_started_ms.store(u64::MAX, Ordering::Relaxed);
        Running(a)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Relaxed: see Activity.
        self.0.idle_since_ms.store(self.0.now_ms(), Ordering::Relaxed);
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Drive one connection until it closes, times out, or the shutdown
/// closes it.
async fn connection(stream: TcpStream, front: Front, config: Arc<ConnConfig>, mut stop: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    #[cfg(unix)]
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let act = Arc::new(Activity::new());
    let io = WatchedIo { inner: stream, act: act.clone(), pending: Vec::new(), swallow: false, lingering: None };
    let a = act.clone();
    // Advertised on keep-alive answers (`Keep-Alive: timeout=N`, whole
    // seconds, rounded down), so clients that read it (undici, aiohttp...)
    // drop a pooled connection before the server closes it, instead of
    // racing the close with a new request.
    let keep_alive = HeaderValue::from_str(&format!("timeout={}", config.keep_alive_timeout.as_secs())).ok().filter(|_| config.keep_alive_timeout.as_secs() > 0);
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let running = Running::new(a.clone());
        // Relaxed: see Activity.
        a.http11.store(req.version() == axum::http::Version::HTTP_11, Ordering::Relaxed);
        a.probed.store(false, Ordering::Relaxed);
        let front = front.clone();
        let keep_alive = keep_alive.clone();
        async move {
            let (mut resp, body_read) = front.handle_tracked(req).await;
            if !body_read {
                // hyper will not keep a connection with an unread body: say
                // so, and close it without a reset (see the module docs).
                resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                // Relaxed: see Activity.
                running.0.linger.store(true, Ordering::Relaxed);
            } else if let Some(k) = keep_alive {
                if !resp.headers().contains_key(header::CONNECTION) {
                    resp.headers_mut().insert(HeaderName::from_static("keep-alive"), k);
                }
            }
            // Relaxed: see Activity. Counted before hyper writes the head.
            running.0.responses_pending.fetch_add(1, Ordering::Relaxed);
            drop(running);
            Ok::<_, Infallible>(resp)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Our watchdog owns every timeout (hyper's header timer would also fire
    // on idle keep-alive connections, merging the two settings).
    builder.half_close(true).keep_alive(true).header_read_timeout(None);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut stopping = *stop.borrow();
    if stopping {
        conn.as_mut().graceful_shutdown();
    }
    // The watchdog looks at least this often: the connection's state
    // changes inside the hyper future without waking this loop, so a
    // deadline computed earlier may have moved.
    let tick = (config.header_read_timeout.min(config.keep_alive_timeout) / 4).clamp(Duration::from_millis(10), Duration::from_millis(500));
    loop {
        // While a request runs, look every 25 ms whether its client left
        // (see `client_left`), so its queued texts are dropped before a
        // worker takes them.
        let tick = if act.active.load(Ordering::Relaxed) > 0 { tick.min(Duration::from_millis(25)) } else { tick };
        let wake = act.deadline(&config).map(|at| at.saturating_sub(act.start.elapsed())).unwrap_or(tick).min(tick);
        let sleep = tokio::time::sleep(wake);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = sleep => {
                #[cfg(unix)]
                if client_left(fd, &act) {
                    // Dropping the connection drops the running handler:
                    // its texts not yet started are cancelled.
                    return;
                }
                if let Some(at) = act.deadline(&config) {
                    if act.start.elapsed() >= at {
                        // Timed out while not running a request: close.
                        return;
                    }
                }
            }
            r = stop.changed(), if !stopping => {
                stopping = true;
                if r.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// While a request runs on a connection whose client sent a FIN: has the
/// client closed its socket (not merely half-closed it)? The first call
/// sends the `100 Continue` probe (see the module docs); later calls read
/// the socket's pending error, which the client's reset to the probe sets.
#[cfg(unix)]
fn client_left(fd: std::os::fd::RawFd, act: &Activity) -> bool {
    // Relaxed: see Activity.
    if act.active.load(Ordering::Relaxed) == 0 || !act.http11.load(Ordering::Relaxed) {
        return false;
    }
    if !act.read_eof.load(Ordering::Relaxed) {
        // hyper does not read while a half-closable request runs, so look
        // without taking anything: 0 from a peek is the FIN with nothing
        // left before it.
        let mut b = [0u8; 1];
        // SAFETY: `fd` as below; `b` is valid for 1 byte. MSG_PEEK leaves
        // any pipelined bytes for hyper; MSG_DONTWAIT never blocks.
        let n = unsafe { libc::recv(fd, b.as_mut_ptr().cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        if n != 0 {
            return false;
        }
        act.read_eof.store(true, Ordering::Relaxed);
    }
    if !act.probed.swap(true, Ordering::Relaxed) {
        const PROBE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
        // SAFETY: `fd` is the connection's socket, open for as long as the
        // connection future that owns it (this function is called from that
        // future's own loop); the buffer is valid for its length. While the
        // handler runs hyper writes nothing on this connection, so the 25
        // bytes cannot interleave with a response. MSG_DONTWAIT: never
        // blocks (a full socket buffer just means the probe is not sent and
        // the client is taken to be there); MSG_NOSIGNAL: no SIGPIPE.
        let _ = unsafe { libc::send(fd, PROBE.as_ptr().cast(), PROBE.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        return false;
    }
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: as above for `fd`; `err` and `len` are valid for writes of the
    // sizes given.
    let rc = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, (&mut err as *mut libc::c_int).cast(), &mut len) };
    rc == 0 && err != 0
}

/// Answer a connection above the cap: a 503 at once, then close.
async fn reject(mut stream: TcpStream, max: usize) {
    let bytes = raw_json_response(StatusCode::SERVICE_UNAVAILABLE, &format!("too many open connections (at most {max}); retry later"));
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await?;
        // Read what the client sent, briefly, so closing does not reset the
        // connection before the client has read the answer.
        let mut sink = [0u8; 4096];
        let mut total = 0usize;
        loop {
            let n = tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await?;
            total += n;
            if n == 0 || total > 64 << 10 {
                return Ok::<_, io::Error>(());
            }
        }
    })
    .await;
}

/// Accept connections on `listener` and serve `router` on each until
/// `shutdown` resolves; then stop accepting, let connections finish what
/// they are answering, and close those still open after
/// `config.shutdown_timeout`. `check_host`: refuse non-loopback Host
/// headers.
pub(crate) async fn run(listener: TcpListener, router: Router, config: ConnConfig, check_host: bool, shutdown: impl Future<Output = ()> + Send + 'static) -> io::Result<()> {
    let config = Arc::new(config);
    let front = Front { router, check_host };
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let rejecting = Arc::new(Semaphore::new(MAX_REJECTING));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut rejects = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            Some(_) = rejects.join_next(), if !rejects.is_empty() => {}
            r = listener.accept() => match r {
                Ok((stream, _)) => match slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let (f, c, s) = (front.clone(), config.clone(), stop_rx.clone());
                        conns.spawn(async move {
                            connection(stream, f, c, s).await;
                            drop(permit);
                        });
                    }
                    Err(_) => match rejecting.clone().try_acquire_owned() {
                        Ok(p) => {
                            let max = config.max_connections;
                            rejects.spawn(async move {
                                reject(stream, max).await;
                                drop(p);
                            });
                        }
                        // Even the rejecters are busy: refuse (close) at once.
                        Err(_) => drop(stream),
                    },
                },
                Err(e) => {
                    // Out of descriptors (EMFILE/ENFILE) or a connection
                    // aborted before accept: pause briefly rather than spin.
                    eprintln!("serve: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    rejects.abort_all();
    let drained = tokio::time::timeout(config.shutdown_timeout, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        eprintln!("serve: {} connection(s) still open after the shutdown timeout ({:?}); closing them", conns.len(), config.shutdown_timeout);
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
    Ok(())
}
