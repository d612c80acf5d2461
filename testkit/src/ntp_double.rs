//! TEST DOUBLE of the Amazon Time Sync Service (169.254.169.123:123, which
//! cannot be had off EC2): an SNTP server (RFC 4330, the server's side) on
//! a UDP socket the caller binds (the QEMU harness binds the service's
//! address in its network namespace). It answers every client request with
//! this host's clock as a stratum-1 server, and records which addresses
//! asked, so a test can tell that a node's time client talks to it.

use std::net::{IpAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds from NTP's epoch (1900) to Unix's (1970).
const NTP_TO_UNIX: u64 = 2_208_988_800;
const PACKET: usize = 48;
const MODE_CLIENT: u8 = 3;
const MODE_SERVER: u8 = 4;

/// The server; stops when dropped.
pub struct NtpDouble {
    asked: Arc<Mutex<Vec<IpAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NtpDouble {
    /// Serves on `socket` (already bound) from a thread of its own.
    pub fn serve(socket: UdpSocket) -> std::io::Result<NtpDouble> {
        // Wakes up to see whether it was dropped.
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let asked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (asked.clone(), stop.clone());
        let thread = std::thread::Builder::new().name("ntp-double".into()).spawn(move || {
            let mut buf = [0u8; 512];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                if let Some(answer) = reply(&buf[..n], SystemTime::now()) {
                    a.lock().unwrap_or_else(|e| e.into_inner()).push(from.ip());
                    let _ = socket.send_to(&answer, from);
                }
            }
        })?;
        Ok(NtpDouble { asked, stop, thread: Some(thread) })
    }

    /// The source address of every request answered, in order.
    pub fn asked(&self) -> Vec<IpAddr> {
        self.asked.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for NtpDouble {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `t` as an NTP timestamp (seconds since 1900, 32-bit fraction).
fn timestamp(t: SystemTime) -> [u8; 8] {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = (d.as_secs() + NTP_TO_UNIX) as u32;
    let frac = ((u64::from(d.subsec_nanos()) << 32) / 1_000_000_000) as u32;
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&secs.to_be_bytes());
    out[4..].copy_from_slice(&frac.to_be_bytes());
    out
}

/// The answer to `request` at time `now`: `None` for anything but a
/// client request.
fn reply(request: &[u8], now: SystemTime) -> Option<[u8; PACKET]> {
    if request.len() < PACKET || request[0] & 0x07 != MODE_CLIENT {
        return None;
    }
    let version = (request[0] >> 3) & 0x07;
    let mut r = [0u8; PACKET];
    r[0] = (version << 3) | MODE_SERVER; // leap indicator 0: synchronised
    r[1] = 1; // stratum: a primary reference
    r[2] = request[2]; // poll
    r[3] = (-20i8) as u8; // precision: about a microsecond
    r[8..12].copy_from_slice(&16u32.to_be_bytes()); // root dispersion: 1/4096 s
    r[12..16].copy_from_slice(b"TEST"); // reference id
    let now = timestamp(now);
    r[16..24].copy_from_slice(&now); // reference
    r[24..32].copy_from_slice(&request[40..48]); // originate: the client's transmit
    r[32..40].copy_from_slice(&now); // receive
    r[40..48].copy_from_slice(&now); // transmit
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_request_is_answered_with_this_hosts_clock() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let server = NtpDouble::serve(socket).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut request = [0u8; PACKET];
        request[0] = (4 << 3) | MODE_CLIENT;
        request[40..48].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        client.send_to(&request, addr).unwrap();
        let mut answer = [0u8; 512];
        let (n, _) = client.recv_from(&mut answer).unwrap();
        assert_eq!(n, PACKET);
        assert_eq!(answer[0], (4 << 3) | MODE_SERVER);
        assert_eq!(answer[1], 1);
        assert_eq!(&answer[24..32], &[1, 2, 3, 4, 5, 6, 7, 8], "originate echoes the transmit");
        let secs = u64::from(u32::from_be_bytes(answer[40..44].try_into().unwrap()));
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(secs.abs_diff(unix + NTP_TO_UNIX) <= 2, "transmit {secs} is not now");
        assert_eq!(server.asked(), vec![client.local_addr().unwrap().ip()]);
    }

    #[test]
    fn only_client_requests_are_answered() {
        let mut server_mode = [0u8; PACKET];
        server_mode[0] = (4 << 3) | MODE_SERVER;
        assert!(reply(&server_mode, SystemTime::now()).is_none());
        assert!(reply(&[0x23; 20], SystemTime::now()).is_none());
    }
}
