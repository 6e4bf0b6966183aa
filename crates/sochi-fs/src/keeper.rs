//! The FUSE connection keeper: a small process that holds the `/dev/fuse`
//! descriptor of every kept layer mount, so that the daemon serving them can
//! die or restart while the mounts (and the containers on them) stay. A
//! FUSE connection ends when its last descriptor closes; while the keeper
//! holds one, the kernel queues requests until a new daemon takes the
//! descriptor back ([`crate::Layer::mount_kept`]) and answers them. The
//! reference loses every running container's layers on a restart (soci
//! #1648).
//!
//! The keeper listens on a unix `SOCK_SEQPACKET` socket; each request and
//! reply is one packet, descriptors travel as `SCM_RIGHTS`:
//!
//! - `PUT\0key\0init` with a descriptor: hold it (and the INIT request the
//!   kernel sent for it) under `key`; reply `OK`.
//! - `GET\0key`: reply `OK\0init` with a copy of the descriptor, or `NONE`.
//! - `DROP\0key`: close it; reply `OK`.
//!
//! A descriptor whose connection ended (the layer was unmounted and nothing
//! uses it) is closed by the keeper itself. It exits when it holds nothing
//! and nobody is connected, so it never outlives what it keeps.

use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustix::event::{poll, PollFd, PollFlags};
use rustix::net::{
    accept_with, bind, connect, listen, recvmsg, sendmsg, socket_with, AddressFamily,
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

/// The largest packet: a key and an INIT request are far smaller.
const MAX_PACKET: usize = 64 * 1024;

/// How long a keeper nobody connected to waits before it exits.
const FIRST_CLIENT_WAIT: Duration = Duration::from_secs(10);

/// A FUSE connection as the kernel set it up: its `/dev/fuse` descriptor
/// and the INIT request the kernel sent on it (a daemon that takes the
/// connection over answers its own copy of it: see
/// [`crate::Layer::mount_kept`]).
#[derive(Debug)]
pub struct FuseConnection {
    /// The `/dev/fuse` descriptor.
    pub device: OwnedFd,
    /// The kernel's INIT request, as read from `device`.
    pub init: Vec<u8>,
}

fn send(socket: BorrowedFd<'_>, packet: &[u8], fd: Option<BorrowedFd<'_>>) -> std::io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd];
        control.push(SendAncillaryMessage::ScmRights(&fds));
    }
    sendmsg(
        socket,
        &[IoSlice::new(packet)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

/// One packet and the descriptor it carried; an empty packet is the peer
/// hanging up.
fn receive(socket: BorrowedFd<'_>) -> std::io::Result<(Vec<u8>, Option<OwnedFd>)> {
    let mut packet = vec![0; MAX_PACKET];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = recvmsg(
        socket,
        &mut [IoSliceMut::new(&mut packet)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fd = None;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            for received in fds {
                fd.get_or_insert(received);
            }
        }
    }
    packet.truncate(got.bytes);
    Ok((packet, fd))
}

fn fields(packet: &[u8]) -> Vec<&[u8]> {
    packet.splitn(3, |&b| b == 0).collect()
}

/// A connection to the keeper.
#[derive(Debug)]
pub struct Keeper {
    socket: Mutex<OwnedFd>,
}

impl Keeper {
    /// Connects to the keeper listening on `path`.
    pub fn connect(path: &Path) -> std::io::Result<Keeper> {
        let socket = socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        connect(&socket, &SocketAddrUnix::new(path)?)?;
        Ok(Keeper {
            socket: Mutex::new(socket),
        })
    }

    /// Connects to the keeper on `path`, first starting `program args…` (a
    /// process group of its own, stderr to `log`) if none listens.
    pub fn connect_or_start(
        path: &Path,
        program: &Path,
        args: &[&std::ffi::OsStr],
        log: &Path,
    ) -> std::io::Result<Keeper> {
        if let Ok(keeper) = Keeper::connect(path) {
            return Ok(keeper);
        }
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            // Not in the daemon's process group: a signal to the daemon's
            // group (a terminal's ^C, a service stop) must not reach it.
            .process_group(0)
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Keeper::connect(path) {
                Ok(keeper) => {
                    // Reap it whenever it exits.
                    std::thread::spawn(move || child.wait());
                    return Ok(keeper);
                }
                Err(error) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(error);
                }
                Err(_) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(std::io::Error::other(format!(
                            "the FUSE keeper exited: {status} (log: {})",
                            log.display()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    fn request(
        &self,
        packet: &[u8],
        fd: Option<BorrowedFd<'_>>,
    ) -> std::io::Result<(Vec<u8>, Option<OwnedFd>)> {
        let socket = self.socket.lock();
        send(socket.as_fd(), packet, fd)?;
        let reply = receive(socket.as_fd())?;
        if reply.0.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the FUSE keeper hung up",
            ));
        }
        Ok(reply)
    }

    /// Hands `connection` to the keeper under `key`.
    pub fn put(&self, key: &str, connection: &FuseConnection) -> std::io::Result<()> {
        let mut packet = b"PUT\0".to_vec();
        packet.extend_from_slice(key.as_bytes());
        packet.push(0);
        packet.extend_from_slice(&connection.init);
        match self.request(&packet, Some(connection.device.as_fd()))? {
            (reply, _) if reply == b"OK" => Ok(()),
            (reply, _) => Err(unexpected(&reply)),
        }
    }

    /// A copy of the connection kept under `key`, if any.
    pub fn get(&self, key: &str) -> std::io::Result<Option<FuseConnection>> {
        let mut packet = b"GET\0".to_vec();
        packet.extend_from_slice(key.as_bytes());
        let (reply, fd) = self.request(&packet, None)?;
        if reply == b"NONE" {
            return Ok(None);
        }
        match (reply.strip_prefix(b"OK\0"), fd) {
            (Some(init), Some(device)) => Ok(Some(FuseConnection {
                device,
                init: init.to_vec(),
            })),
            _ => Err(unexpected(&reply)),
        }
    }

    /// Closes the keeper's copy of the connection under `key`.
    pub fn forget(&self, key: &str) -> std::io::Result<()> {
        let mut packet = b"DROP\0".to_vec();
        packet.extend_from_slice(key.as_bytes());
        match self.request(&packet, None)? {
            (reply, _) if reply == b"OK" => Ok(()),
            (reply, _) => Err(unexpected(&reply)),
        }
    }
}

fn unexpected(reply: &[u8]) -> std::io::Error {
    std::io::Error::other(format!(
        "unexpected reply from the FUSE keeper: {:?}",
        String::from_utf8_lossy(reply)
    ))
}

/// The file holding the pid of the keeper listening on `socket`.
fn pid_file(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_os_string();
    name.push(".pid");
    PathBuf::from(name)
}

/// Runs the keeper on `path` until it holds nothing and nobody is
/// connected (or nobody connected within 10 s of the start).
pub fn serve_keeper(path: &Path) -> std::io::Result<()> {
    let listener = socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    // A socket file left by a keeper that is gone refuses connections.
    if path.exists() && Keeper::connect(path).is_err() {
        std::fs::remove_file(path)?;
    }
    bind(&listener, &SocketAddrUnix::new(path)?)?;
    listen(&listener, 16)?;
    // Who to signal, for whoever must stop it by pid (tests, operators).
    let pid_file = pid_file(path);
    std::fs::write(&pid_file, format!("{}\n", std::process::id()))?;
    tracing::info!(socket = %path.display(), "FUSE keeper listening");
    let started = Instant::now();
    let mut ever_connected = false;
    let mut clients: Vec<OwnedFd> = Vec::new();
    let mut held: BTreeMap<Vec<u8>, FuseConnection> = BTreeMap::new();
    loop {
        if clients.is_empty()
            && held.is_empty()
            && (ever_connected || started.elapsed() > FIRST_CLIENT_WAIT)
        {
            break;
        }
        let keys: Vec<Vec<u8>> = held.keys().cloned().collect();
        let (listener_ready, ready_clients, ended) = {
            let mut fds = Vec::with_capacity(1 + clients.len() + held.len());
            fds.push(PollFd::new(&listener, PollFlags::IN));
            fds.extend(clients.iter().map(|c| PollFd::new(c, PollFlags::IN)));
            // No IN for FUSE devices: requests wait there while no daemon
            // runs; only an ended connection (ERR) matters here.
            fds.extend(
                held.values()
                    .map(|c| PollFd::new(&c.device, PollFlags::empty())),
            );
            let timeout = rustix::event::Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            };
            match poll(&mut fds, Some(&timeout)) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(error) => return Err(error.into()),
            }
            let listener_ready = !fds[0].revents().is_empty();
            let ready_clients: Vec<usize> = (0..clients.len())
                .filter(|&i| !fds[1 + i].revents().is_empty())
                .collect();
            let ended: Vec<Vec<u8>> = keys
                .iter()
                .enumerate()
                .filter(|&(i, _)| !fds[1 + clients.len() + i].revents().is_empty())
                .map(|(_, key)| key.clone())
                .collect();
            (listener_ready, ready_clients, ended)
        };
        for key in ended {
            tracing::info!(key = %String::from_utf8_lossy(&key), "FUSE connection ended; closing it");
            held.remove(&key);
        }
        answer_clients(&mut clients, &mut held, &ready_clients);
        if listener_ready {
            match accept_with(&listener, SocketFlags::CLOEXEC) {
                Ok(client) => {
                    ever_connected = true;
                    clients.push(client);
                }
                Err(error) => tracing::warn!(%error, "accepting a keeper client"),
            }
        }
    }
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(&pid_file);
    tracing::info!("FUSE keeper: nothing left to keep; exiting");
    Ok(())
}

/// Answers each client with a request waiting, and drops those that hung
/// up or could not be answered.
fn answer_clients(
    clients: &mut Vec<OwnedFd>,
    held: &mut BTreeMap<Vec<u8>, FuseConnection>,
    ready: &[usize],
) {
    let mut gone = Vec::new();
    for &i in ready {
        let Some(client) = clients.get(i) else {
            continue;
        };
        let reply = match receive(client.as_fd()) {
            Ok((packet, _)) if packet.is_empty() => None,
            Ok((packet, fd)) => Some(handle(held, &packet, fd)),
            Err(error) => {
                tracing::warn!(%error, "reading from a keeper client");
                None
            }
        };
        let sent = match reply {
            Some((reply, fd)) => send(client.as_fd(), &reply, fd.map(|c| c.device.as_fd())),
            None => Err(std::io::ErrorKind::UnexpectedEof.into()),
        };
        if sent.is_err() {
            gone.push(i);
        }
    }
    for i in gone.into_iter().rev() {
        clients.remove(i);
    }
}

/// Answers one request; the reply may carry a connection (borrowed from
/// `held` for the send).
fn handle<'a>(
    held: &'a mut BTreeMap<Vec<u8>, FuseConnection>,
    packet: &[u8],
    fd: Option<OwnedFd>,
) -> (Vec<u8>, Option<&'a FuseConnection>) {
    let parts = fields(packet);
    match (parts.first().copied(), parts.get(1).copied(), fd) {
        (Some(b"PUT"), Some(key), Some(device)) => {
            let init = parts.get(2).copied().unwrap_or_default().to_vec();
            tracing::info!(key = %String::from_utf8_lossy(key), "keeping a FUSE connection");
            held.insert(key.to_vec(), FuseConnection { device, init });
            (b"OK".to_vec(), None)
        }
        (Some(b"GET"), Some(key), None) => match held.get(key) {
            Some(connection) => {
                let mut reply = b"OK\0".to_vec();
                reply.extend_from_slice(&connection.init);
                (reply, Some(connection))
            }
            None => (b"NONE".to_vec(), None),
        },
        (Some(b"DROP"), Some(key), None) => {
            held.remove(key);
            (b"OK".to_vec(), None)
        }
        _ => (b"ERR bad request".to_vec(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_hands_back_and_forgets_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keeper.sock");
        let server = {
            let path = path.clone();
            std::thread::spawn(move || serve_keeper(&path))
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let keeper = loop {
            match Keeper::connect(&path) {
                Ok(keeper) => break keeper,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(error) => panic!("connecting: {error}"),
            }
        };
        assert!(keeper.get("1").unwrap().is_none());
        // Any descriptor will do: a pipe's read end, and we write to the
        // other end to tell the copies apart.
        let (reader, writer) = rustix::pipe::pipe().unwrap();
        keeper
            .put(
                "1",
                &FuseConnection {
                    device: reader,
                    init: b"init\0bytes".to_vec(),
                },
            )
            .unwrap();
        let copy = keeper.get("1").unwrap().unwrap();
        assert_eq!(copy.init, b"init\0bytes");
        rustix::io::write(&writer, b"x").unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(rustix::io::read(&copy.device, &mut byte).unwrap(), 1);
        assert_eq!(&byte, b"x");
        keeper.forget("1").unwrap();
        assert!(keeper.get("1").unwrap().is_none());
        // Nothing held, client gone: the keeper exits.
        drop(keeper);
        server.join().unwrap().unwrap();
        assert!(!path.exists());
        assert!(!pid_file(&path).exists());
    }
}
