//! A small real HTTP(S) server on 127.0.0.1 for IMS-shaped answers, and a recording proxy
//! in front of the S3 server. Both stop when dropped, and by themselves after a while.

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// No server outlives this, whatever the test does.
const LIFETIME: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    /// The S3 server's answer, for a request the proxy forwarded (`None`: not forwarded,
    /// no answer, or not a proxied request).
    pub upstream_status: Option<u16>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    pub delay: Duration,
}

impl Reply {
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

pub struct HttpServer {
    addr: SocketAddr,
    scheme: &'static str,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    pub fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> HttpServer {
        HttpServer::spawn(Arc::new(handler), None)
    }

    /// HTTPS with the given server certificate chain and key.
    pub fn start_tls(
        identity: &ServerIdentity,
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> HttpServer {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .unwrap();
        HttpServer::spawn(Arc::new(handler), Some(Arc::new(config)))
    }

    fn spawn(handler: Handler, tls: Option<Arc<rustls::ServerConfig>>) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let thread = {
            let (requests, stop) = (requests.clone(), stop.clone());
            std::thread::spawn(move || {
                accept_loop(listener, &stop, |stream| {
                    let (handler, requests, tls) = (handler.clone(), requests.clone(), tls.clone());
                    std::thread::spawn(move || match tls {
                        Some(config) => {
                            let Ok(connection) = rustls::ServerConnection::new(config) else {
                                return;
                            };
                            let mut stream = rustls::StreamOwned::new(connection, stream);
                            serve(&mut stream, &handler, &requests);
                        }
                        None => {
                            let mut stream = stream;
                            serve(&mut stream, &handler, &requests);
                        }
                    });
                })
            })
        };
        HttpServer {
            addr,
            scheme,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: TcpListener, stop: &AtomicBool, mut on_stream: impl FnMut(TcpStream)) {
    let started = Instant::now();
    while !stop.load(Ordering::SeqCst) && started.elapsed() < LIFETIME {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                on_stream(stream);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Reads one request head; `None` on a broken or closed connection.
fn read_head(stream: &mut impl Read) -> Option<(Request, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut byte = [0u8; 4096];
    let end = loop {
        let n = stream.read(&mut byte).ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&byte[..n]);
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buffer.len() > 1 << 20 {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Some((
        Request {
            method,
            target,
            headers,
            upstream_status: None,
        },
        buffer,
    ))
}

fn serve(stream: &mut (impl Read + Write), handler: &Handler, requests: &Mutex<Vec<Request>>) {
    let Some((request, _)) = read_head(stream) else {
        return;
    };
    requests.lock().unwrap().push(request.clone());
    let reply = handler(&request);
    std::thread::sleep(reply.delay);
    let head = format!(
        "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reply.status,
        reply.body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&reply.body);
    let _ = stream.flush();
}

/// A server certificate for 127.0.0.1 and localhost, signed by a fresh test CA.
pub struct ServerIdentity {
    pub ca_pem: String,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl ServerIdentity {
    pub fn new() -> ServerIdentity {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sbps-reconcile test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        ServerIdentity {
            ca_pem: ca.pem(),
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }
}

/// A TCP proxy that records each request head and forwards it to `upstream`, one request
/// per connection (it asks both sides to close after the response).
pub struct RecordingProxy {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    /// Requests whose target contains one of these are answered 500 by the proxy itself.
    failing: Arc<Mutex<Vec<String>>>,
    /// Faults on PUTs (see [`PutFaults`]).
    puts: Arc<PutFaults>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RecordingProxy {
    pub fn start(upstream: SocketAddr) -> RecordingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let failing = Arc::new(Mutex::new(Vec::new()));
        let puts = Arc::new(PutFaults::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, failing, puts, stop) = (
                requests.clone(),
                failing.clone(),
                puts.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                accept_loop(listener, &stop, |client| {
                    let (requests, failing, puts) =
                        (requests.clone(), failing.clone(), puts.clone());
                    std::thread::spawn(move || {
                        forward(client, upstream, &requests, &failing, &puts)
                    });
                })
            })
        };
        RecordingProxy {
            addr,
            requests,
            failing,
            puts,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.requests.lock().unwrap().clear();
    }

    /// From now on, answers every request whose target contains `part` with a 500 (an S3
    /// InternalError) instead of forwarding it.
    pub fn fail_requests_to(&self, part: &str) {
        self.failing.lock().unwrap().push(part.to_string());
    }

    /// From now on, a PUT whose target contains `part` reaches the server, and its client
    /// gets a 500 instead of the server's answer (the write happened; the answer was lost).
    pub fn lose_put_answers_to(&self, part: &str) {
        self.puts
            .lose_answers
            .lock()
            .unwrap()
            .push(part.to_string());
    }

    /// From now on, a PUT whose target contains `part` is answered 500 by the proxy and
    /// never reaches the server (nothing written; the client cannot tell).
    pub fn fail_puts_to(&self, part: &str) {
        self.puts.fail.lock().unwrap().push(part.to_string());
    }

    /// From now on, PUTs whose target contains `part` are held until `count` of them have
    /// arrived (or 20 s have passed), then all sent on at once: runs that read before either
    /// writes, racing.
    pub fn hold_puts_to(&self, part: &str, count: usize) {
        *self.puts.hold.lock().unwrap() = Some(Hold {
            part: part.to_string(),
            count,
            arrived: 0,
            round: 0,
        });
    }

    /// Stops holding and losing PUTs.
    pub fn clear_put_faults(&self) {
        self.puts.lose_answers.lock().unwrap().clear();
        self.puts.fail.lock().unwrap().clear();
        *self.puts.hold.lock().unwrap() = None;
        self.puts.released.notify_all();
    }
}

/// Faults the proxy puts on PUTs.
#[derive(Default)]
struct PutFaults {
    lose_answers: Mutex<Vec<String>>,
    fail: Mutex<Vec<String>>,
    hold: Mutex<Option<Hold>>,
    released: std::sync::Condvar,
}

/// PUTs held until a round of `count` has arrived.
struct Hold {
    part: String,
    count: usize,
    arrived: usize,
    /// Rounds completed so far.
    round: u64,
}

impl PutFaults {
    /// Holds a PUT to `target` until its round is complete (or 20 s have passed).
    fn hold(&self, target: &str) {
        let mut hold = self.hold.lock().unwrap();
        let Some(h) = hold.as_mut().filter(|h| target.contains(h.part.as_str())) else {
            return;
        };
        h.arrived += 1;
        if h.arrived >= h.count {
            h.arrived = 0;
            h.round += 1;
            self.released.notify_all();
            return;
        }
        let mine = h.round;
        let deadline = Instant::now() + Duration::from_secs(20);
        while hold.as_ref().is_some_and(|h| h.round == mine) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            hold = self.released.wait_timeout(hold, left).unwrap().0;
        }
    }

    fn loses_answer(&self, target: &str) -> bool {
        self.lose_answers
            .lock()
            .unwrap()
            .iter()
            .any(|part| target.contains(part.as_str()))
    }

    fn fails(&self, target: &str) -> bool {
        self.fail
            .lock()
            .unwrap()
            .iter()
            .any(|part| target.contains(part.as_str()))
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    requests: &Mutex<Vec<Request>>,
    failing: &Mutex<Vec<String>>,
    puts: &PutFaults,
) {
    let Some((request, buffer)) = read_head(&mut client) else {
        return;
    };
    let head_end = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(0)
        + 4;
    let length: usize = request
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buffer[head_end..].to_vec();
    while body.len() < length {
        let mut chunk = vec![0u8; 65536];
        match client.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let recorded = {
        let mut requests = requests.lock().unwrap();
        requests.push(request.clone());
        requests.len() - 1
    };
    let is_put = request.method == "PUT";
    let fail = failing
        .lock()
        .unwrap()
        .iter()
        .any(|part| request.target.contains(part.as_str()))
        || (is_put && puts.fails(&request.target));
    if fail {
        internal_error(&mut client);
        return;
    }
    if is_put {
        puts.hold(&request.target);
    }
    let Ok(mut server) = TcpStream::connect(upstream) else {
        return;
    };
    let _ = server.set_read_timeout(Some(Duration::from_secs(30)));
    let mut head = format!("{} {} HTTP/1.1\r\n", request.method, request.target);
    for (name, value) in &request.headers {
        if !name.eq_ignore_ascii_case("connection") {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("Connection: close\r\n\r\n");
    if server.write_all(head.as_bytes()).is_err() || server.write_all(&body).is_err() {
        return;
    }
    let mut response = Vec::new();
    let _ = server.read_to_end(&mut response);
    let status = String::from_utf8_lossy(&response[..response.len().min(16)])
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok());
    if let Some(r) = requests.lock().unwrap().get_mut(recorded) {
        if r.target == request.target {
            r.upstream_status = status;
        }
    }
    if is_put && puts.loses_answer(&request.target) {
        internal_error(&mut client);
        return;
    }
    // Tell the client this connection ends here, so it never reuses it.
    if let Some(at) = response.windows(2).position(|w| w == b"\r\n") {
        let status_line_end = at + 2;
        let mut patched = response[..status_line_end].to_vec();
        patched.extend_from_slice(b"Connection: close\r\n");
        let rest = &response[status_line_end..];
        let rest = strip_header(rest, "connection");
        patched.extend_from_slice(&rest);
        response = patched;
    }
    let _ = client.write_all(&response);
}

/// An S3 InternalError, as RGW answers a writer that lost a race inside it.
fn internal_error(client: &mut TcpStream) {
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InternalError</Code>\
                <Message>We encountered an internal error.</Message></Error>";
    let _ = client.write_all(
        format!(
            "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
}

/// Removes one header (case-insensitive) from the header block at the start of `bytes`.
fn strip_header(bytes: &[u8], name: &str) -> Vec<u8> {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(bytes.len(), |e| e + 2);
    let (headers, rest) = bytes.split_at(end);
    let mut out = Vec::new();
    for line in headers.split_inclusive(|b| *b == b'\n') {
        let text = String::from_utf8_lossy(line);
        let is_it = text
            .split_once(':')
            .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name));
        if !is_it {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(rest);
    out
}
