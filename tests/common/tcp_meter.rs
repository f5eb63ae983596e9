//! A TCP relay on loopback that counts the bytes crossing it each way: put
//! between the agent and a pool, it sees every byte on the wire, to check
//! what the agent says it sent and received, and that it sent nothing.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct TcpMeter {
    /// `http://127.0.0.1:PORT`: the pool's URL through the relay.
    pub url: String,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
}

impl TcpMeter {
    /// Relays to `pool_url` (`http://host:port`).
    pub fn start(pool_url: &str) -> Self {
        let upstream = pool_url.trim_start_matches("http://").trim_end_matches('/').to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (u, d) = (up.clone(), down.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                let pipe = |mut from: TcpStream, mut to: TcpStream, count: Arc<AtomicU64>| {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            count.fetch_add(n as u64, Ordering::SeqCst);
                        }
                        let _ = to.shutdown(Shutdown::Write);
                    });
                };
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap(), u.clone());
                pipe(server, client, d.clone());
            }
        });
        Self { url, up, down }
    }

    /// Bytes (sent to the pool, received from it) so far.
    pub fn bytes(&self) -> (u64, u64) {
        (self.up.load(Ordering::SeqCst), self.down.load(Ordering::SeqCst))
    }
}
