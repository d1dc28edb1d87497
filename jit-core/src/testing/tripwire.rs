//! An endpoint that fails the test if anything contacts it.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// A TCP endpoint that counts connections and answers none.
///
/// Point a client at [`url`](Self::url) where a test must prove that no
/// remote call is made (a limit refused before any call, a record that is
/// not ours left alone). Every connection is counted and closed at once, so
/// a client that does call sees an error, and the tripwire fails the test:
/// [`assert_untouched`](Self::assert_untouched) on demand, and on drop
/// unless [`expect_contacts`](Self::expect_contacts) said calls are the
/// point (a test that a valid request does reach the endpoint).
///
/// ```
/// use jit_core::testing::tripwire::Tripwire;
///
/// let tripwire = Tripwire::new();
/// // ... a client configured with `tripwire.url()` refuses a bad request ...
/// tripwire.assert_untouched();
/// ```
#[derive(Debug)]
pub struct Tripwire {
    url: String,
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
    expected: AtomicBool,
}

impl Tripwire {
    /// Binds `127.0.0.1` on a free port and starts counting.
    ///
    /// # Panics
    /// When no port can be bound: the test cannot run.
    pub fn new() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("tripwire: cannot bind 127.0.0.1");
        let addr = listener
            .local_addr()
            .expect("tripwire: listener has no address");
        let hits = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicBool::new(false));
        let (h, c) = (hits.clone(), closed.clone());
        std::thread::Builder::new()
            .name("tripwire".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    // The wake-up connection from `drop` is not a contact.
                    if c.load(Ordering::SeqCst) {
                        return;
                    }
                    match stream {
                        Ok(s) => {
                            h.fetch_add(1, Ordering::SeqCst);
                            drop(s);
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => {}
                    }
                }
            })
            .expect("tripwire: cannot start its thread");
        Self {
            url: format!("http://{addr}"),
            addr,
            hits,
            closed,
            expected: AtomicBool::new(false),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Connections made so far.
    pub fn contacts(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Fails the test if anything connected.
    ///
    /// # Panics
    /// When [`contacts`](Self::contacts) is not 0.
    #[track_caller]
    pub fn assert_untouched(&self) {
        let n = self.contacts();
        assert!(
            n == 0,
            "the tripwire at {} must not be contacted, but was {n} time(s)",
            self.url
        );
    }

    /// Says the test expects contacts: dropping the tripwire then checks
    /// nothing (the test asserts on [`contacts`](Self::contacts) itself).
    pub fn expect_contacts(&self) {
        self.expected.store(true, Ordering::SeqCst);
    }
}

impl Default for Tripwire {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Tripwire {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
        // Wake the accept loop so its thread ends and the port is closed.
        let _ = TcpStream::connect(self.addr);
        let n = self.hits.load(Ordering::SeqCst);
        // A second panic while unwinding would abort the whole test binary.
        if n > 0 && !self.expected.load(Ordering::SeqCst) && !std::thread::panicking() {
            panic!(
                "the tripwire at {} must not be contacted, but was {n} time(s)",
                self.url
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_untouched_tripwire_passes() {
        let t = Tripwire::new();
        t.assert_untouched();
        assert_eq!(t.contacts(), 0);
    }

    #[test]
    fn a_contact_is_counted_and_fails_the_assertion() {
        let t = Tripwire::new();
        let addr = t.url().trim_start_matches("http://").to_string();
        drop(TcpStream::connect(&addr).unwrap());
        // The accept loop counts on its own thread: wait for it (bounded).
        for _ in 0..500 {
            if t.contacts() > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert_eq!(t.contacts(), 1);
        let caught =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| t.assert_untouched()));
        let msg = caught.unwrap_err();
        let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("must not be contacted"), "{msg}");
        // Dropping a contacted tripwire fails the test too...
        let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(t)));
        assert!(
            dropped.is_err(),
            "dropping a contacted tripwire did not fail"
        );
    }

    #[test]
    fn expected_contacts_do_not_fail_on_drop() {
        let t = Tripwire::new();
        t.expect_contacts();
        let addr = t.url().trim_start_matches("http://").to_string();
        drop(TcpStream::connect(&addr).unwrap());
        for _ in 0..500 {
            if t.contacts() > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert_eq!(t.contacts(), 1);
        drop(t);
    }

    #[test]
    fn dropping_closes_the_port() {
        let t = Tripwire::new();
        let addr = t.addr;
        drop(t);
        // The accept thread ends on the wake-up connection and drops the
        // listener; wait for it (bounded), then nothing listens there.
        let mut refused = false;
        for _ in 0..500 {
            if TcpStream::connect(addr).is_err() {
                refused = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert!(refused, "the tripwire's port still accepts connections");
    }
}
