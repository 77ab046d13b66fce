//! A TCP fault proxy for tests: forwards a free loopback port to a target, and on command
//! black-holes the link (bytes are swallowed, connections hang open), as a network cut does
//! to an established connection. Latency and one-way cuts are left for when a test needs
//! them. Why our own: no netem on these machines, and a proxy between two parts cuts only
//! that pair without network namespaces.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A running fault proxy; stops accepting when dropped (open connections end with their
/// peers).
pub struct FaultProxy {
    port: u16,
    blackhole: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    /// Forwards a new loopback port to `target` (`host:port`).
    pub fn start(target: &str) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let blackhole = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (target, bh, st) = (target.to_owned(), blackhole.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let (target, bh, st) = (target.clone(), bh.clone(), st.clone());
                        std::thread::spawn(move || connect_pair(client, &target, bh, st));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(FaultProxy { port, blackhole, stop })
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Cuts (true) or heals (false) the link.
    pub fn set_blackhole(&self, on: bool) {
        self.blackhole.store(on, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.blackhole.store(false, Ordering::SeqCst);
    }
}

fn connect_pair(client: TcpStream, target: &str, blackhole: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
    // While cut, a new connection hangs like a SYN into the void would (until healed).
    while blackhole.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let Ok(server) = TcpStream::connect(target) else { return };
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { return };
    let bh = blackhole.clone();
    std::thread::spawn(move || pump(client, server, bh));
    pump(s2, c2, blackhole);
}

/// Copies `from` → `to`, swallowing what arrives while the link is cut.
fn pump(mut from: TcpStream, mut to: TcpStream, blackhole: Arc<AtomicBool>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if blackhole.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
