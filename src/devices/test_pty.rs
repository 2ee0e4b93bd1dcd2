//! Pseudo-terminals for the unit tests of the device tasks (test builds only).

use std::os::fd::AsRawFd;

use tokio_serial::SerialStream;

/// A pseudo-terminal: (master, slave), both closed on exec.
///
/// posix_openpt does not set close-on-exec: without it a process another test starts meanwhile
/// (`cargo test` runs tests as threads of one process) would inherit both ends and keep the pty
/// open after the test dropped it.
pub(crate) fn pty_pair() -> (SerialStream, SerialStream) {
    let (master, slave) = SerialStream::pair().expect("create pty pair");
    for fd in [master.as_raw_fd(), slave.as_raw_fd()] {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .expect("set close-on-exec");
    }
    (master, slave)
}
