//! A second handle on a ring connection's TCP socket, kept by the pool beside the framed
//! stream, for one decision: a call that timed out while some of its bytes were never taken
//! by the peer's kernel (a cut network, a peer whose receive window is shut) resets the
//! connection instead of leaving those bytes to be retransmitted. Left to TCP, they could
//! reach the peer after the network heals, long after the caller gave the call up and
//! retried it elsewhere, and a write applied that late would undo what was acknowledged in
//! between (docs/CONSISTENCY.md).

#[cfg(target_os = "linux")]
mod imp {
    use std::os::fd::{AsFd, AsRawFd, OwnedFd};

    pub struct Socket(OwnedFd);

    impl Socket {
        pub fn of(stream: &impl AsFd) -> Option<Socket> {
            stream.as_fd().try_clone_to_owned().ok().map(Socket)
        }

        /// Bytes written but not yet acknowledged by the peer (sent or still queued).
        pub fn unacknowledged(&self) -> usize {
            let mut n: libc::c_int = 0;
            // SAFETY: TIOCOUTQ (SIOCOUTQ for TCP) writes one int through the pointer we pass,
            // on a descriptor we own.
            let rc = unsafe { libc::ioctl(self.0.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
            if rc == 0 {
                usize::try_from(n).unwrap_or(0)
            } else {
                0
            }
        }

        /// Make the socket's close abortive (SO_LINGER with a zero timeout): when its last
        /// descriptor closes, the kernel drops what is queued and sends RST.
        pub fn abort_on_close(&self) {
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: setsockopt reads `size_of::<linger>()` bytes from the pointer we pass,
            // on a descriptor we own.
            unsafe {
                libc::setsockopt(
                    self.0.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    /// Elsewhere the pool does not look at the socket: a timed-out call's bytes are left to
    /// TCP (the documented gap).
    pub struct Socket;

    impl Socket {
        pub fn of<T>(_: &T) -> Option<Socket> {
            None
        }
        pub fn unacknowledged(&self) -> usize {
            0
        }
        pub fn abort_on_close(&self) {}
    }
}

pub use imp::Socket;
