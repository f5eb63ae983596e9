//! Local control: a Unix socket in the user's runtime dir, mode 0600 in a
//! 0700 directory, and a peer-credential check on every connection, so only
//! the same user can see or steer the agent (on Windows: a named pipe, whose
//! default security lets only its creator, SYSTEM and administrators in, and
//! which refuses remote clients). One JSON request per line, one JSON answer
//! per line.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use idlemesh_control::{ErrorCode, Refusal, Request};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

pub use transport::Listener;

pub const SOCKET_ENV: &str = "IDLEMESH_CONTROL_SOCKET";
/// Longest request line accepted.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// Where the agent listens: `$IDLEMESH_CONTROL_SOCKET`, else
/// `$XDG_RUNTIME_DIR/idlemesh/agent.sock`, else a per-user dir under /tmp
/// (Windows: the pipe `\\.\pipe\idlemesh-<user>`).
pub fn socket_path() -> PathBuf {
    if let Some(p) = std::env::var_os(SOCKET_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    transport::default_path()
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no agent is running (nothing answers at {path}): start one with `idlemesh agent`")]
    NotRunning { path: String },
    #[error("another agent is already running and listening at {path}")]
    AlreadyRunning { path: String },
    #[error(
        "the control socket's folder {path} belongs to another user (uid {owner}): whoever owns it could \
         impersonate this agent or read what it says, so it is not used"
    )]
    NotPrivate { path: String, owner: u32 },
    #[error("control socket {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent said: {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("the agent's answer was not understood: {0}")]
    BadAnswer(String),
}

/// Answers requests; the daemon implements it.
pub trait Handler: Send + Sync + 'static {
    /// The answer is one of the control API's answer types, as JSON.
    fn handle(&self, request: Request) -> Result<Value, Refusal>;
}

/// Binds the socket (replacing a stale one, refusing if an agent answers there).
pub async fn bind(path: &Path) -> Result<Listener, ControlError> {
    transport::bind(path).await
}

/// Serves connections until the listener is dropped.
pub async fn serve(mut listener: Listener, handler: std::sync::Arc<dyn Handler>) {
    loop {
        let Ok(stream) = listener.accept().await else { continue };
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, handler).await {
                tracing::debug!(error = %e, "control connection ended");
            }
        });
    }
}

async fn connection(stream: transport::Stream, handler: std::sync::Arc<dyn Handler>) -> std::io::Result<()> {
    let same_user = transport::same_user(&stream)?;
    let (read, mut write) = tokio::io::split(stream);
    if !same_user {
        tracing::warn!("refused a control connection from another user");
        let answer = refusal(Refusal::new(ErrorCode::Forbidden, "only the user running the agent may control it"));
        write.write_all(format!("{answer}\n").as_bytes()).await?;
        return Ok(());
    }
    let mut lines = BufReader::new(read.take(MAX_REQUEST_BYTES)).lines();
    while let Some(line) = lines.next_line().await? {
        let answer = match serde_json::from_str::<Request>(&line) {
            Ok(request) => {
                let handler = handler.clone();
                match tokio::task::spawn_blocking(move || handler.handle(request)).await {
                    Ok(Ok(v)) => json!({"ok": true, "result": v}),
                    Ok(Err(refused)) => refusal(refused),
                    Err(_) => refusal(Refusal::new(ErrorCode::Internal, "the request handler failed")),
                }
            }
            Err(e) => refusal(Refusal::new(
                ErrorCode::BadRequest,
                format!("not a request the agent knows ({e}); expected one of {}", Request::COMMANDS.join(", ")),
            )),
        };
        write.write_all(format!("{answer}\n").as_bytes()).await?;
    }
    Ok(())
}

fn refusal(refused: Refusal) -> Value {
    json!({"ok": false, "error": refused})
}

/// Sends one request to the running agent and returns its answer, typed.
pub async fn ask<T: DeserializeOwned>(path: &Path, request: &Request) -> Result<T, ControlError> {
    let answer = call(path, request).await?;
    serde_json::from_value(answer).map_err(|e| ControlError::BadAnswer(format!("to {request:?}: {e}")))
}

/// The running agent's status.
pub async fn status(path: &Path) -> Result<idlemesh_control::AgentStatus, ControlError> {
    ask(path, &Request::Status).await
}

/// Sends one request to the running agent and returns its result as JSON
/// (what `--json` prints, and what the tests check the wire shape with).
pub async fn call(path: &Path, request: &Request) -> Result<Value, ControlError> {
    let io = |source| ControlError::Io { path: path.display().to_string(), source };
    transport::check_private(path)?;
    let stream = match transport::connect(path).await {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Err(ControlError::NotRunning { path: path.display().to_string() });
        }
        Err(e) => return Err(io(e)),
    };
    let (read, mut write) = tokio::io::split(stream);
    let line = serde_json::to_string(request).expect("requests serialise");
    write.write_all(format!("{line}\n").as_bytes()).await.map_err(io)?;
    let mut lines = BufReader::new(read).lines();
    let answer = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .map_err(|_| ControlError::BadAnswer("no answer within 10 s".into()))?
        .map_err(io)?
        .ok_or_else(|| ControlError::BadAnswer("the agent closed the connection".into()))?;
    let answer: Value = serde_json::from_str(&answer).map_err(|e| ControlError::BadAnswer(e.to_string()))?;
    if answer["ok"] == json!(true) {
        Ok(answer["result"].clone())
    } else {
        let refused = serde_json::from_value::<Refusal>(answer["error"].clone())
            .unwrap_or_else(|_| Refusal::new(ErrorCode::Unknown, "no reason given"));
        Err(ControlError::Refused { code: refused.code, message: refused.message })
    }
}

#[cfg(unix)]
mod transport {
    use std::path::{Path, PathBuf};

    use tokio::net::{UnixListener, UnixStream};

    use super::ControlError;

    pub type Stream = UnixStream;

    pub struct Listener(UnixListener);

    impl Listener {
        pub async fn accept(&mut self) -> std::io::Result<Stream> {
            Ok(self.0.accept().await?.0)
        }
    }

    pub fn default_path() -> PathBuf {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .filter(|d| !d.is_empty())
            .map(|d| PathBuf::from(d).join("idlemesh"))
            .unwrap_or_else(|| std::env::temp_dir().join(format!("idlemesh-{}", current_uid())));
        base.join("agent.sock")
    }

    fn current_uid() -> u32 {
        // SAFETY: geteuid cannot fail.
        unsafe { libc::geteuid() }
    }

    pub async fn bind(path: &Path) -> Result<Listener, ControlError> {
        use std::os::unix::fs::PermissionsExt as _;
        let io = |source| ControlError::Io { path: path.display().to_string(), source };
        let dir = path.parent().unwrap_or(Path::new("/"));
        // A folder made beforehand by someone else (in /tmp, say) is theirs
        // to watch and replace: it is not ours to make private.
        if let Ok(meta) = std::fs::metadata(dir) {
            let owner = std::os::unix::fs::MetadataExt::uid(&meta);
            if owner != current_uid() {
                return Err(ControlError::NotPrivate { path: dir.display().to_string(), owner });
            }
        }
        idlemesh_runtime::private_dir(dir).map_err(io)?;
        if path.exists() {
            if UnixStream::connect(path).await.is_ok() {
                return Err(ControlError::AlreadyRunning { path: path.display().to_string() });
            }
            std::fs::remove_file(path).map_err(io)?;
        }
        let listener = UnixListener::bind(path).map_err(io)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        Ok(Listener(listener))
    }

    pub async fn connect(path: &Path) -> std::io::Result<Stream> {
        UnixStream::connect(path).await
    }

    /// A client trusts no socket in a folder someone else owns: they could
    /// answer as the agent, and be told the user's pause and pool choices.
    pub fn check_private(path: &Path) -> Result<(), ControlError> {
        use std::os::unix::fs::MetadataExt as _;
        let dir = path.parent().unwrap_or(Path::new("/"));
        match std::fs::metadata(dir) {
            Ok(meta) if meta.uid() != current_uid() => {
                Err(ControlError::NotPrivate { path: dir.display().to_string(), owner: meta.uid() })
            }
            // A missing folder: nothing listens there (`call` says so).
            _ => Ok(()),
        }
    }

    pub fn same_user(stream: &Stream) -> std::io::Result<bool> {
        Ok(stream.peer_cred()?.uid() == current_uid())
    }
}

#[cfg(windows)]
mod transport {
    use std::path::{Path, PathBuf};

    use tokio::net::windows::named_pipe::{ClientOptions, NamedPipeClient, NamedPipeServer, ServerOptions};

    use super::ControlError;

    /// Either end of the pipe: the server's side after `accept`, the client's after `connect`.
    pub enum Stream {
        Server(NamedPipeServer),
        Client(NamedPipeClient),
    }

    macro_rules! either {
        ($self:ident, $s:ident => $e:expr) => {
            match $self.get_mut() {
                Stream::Server($s) => $e,
                Stream::Client($s) => $e,
            }
        };
    }

    impl tokio::io::AsyncRead for Stream {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            either!(self, s => std::pin::Pin::new(s).poll_read(cx, buf))
        }
    }

    impl tokio::io::AsyncWrite for Stream {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            either!(self, s => std::pin::Pin::new(s).poll_write(cx, buf))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            either!(self, s => std::pin::Pin::new(s).poll_flush(cx))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            either!(self, s => std::pin::Pin::new(s).poll_shutdown(cx))
        }
    }

    /// The next pipe instance waits for a client while the last one is served.
    pub struct Listener {
        name: String,
        next: NamedPipeServer,
        security: UserOnly,
    }

    impl Listener {
        pub async fn accept(&mut self) -> std::io::Result<Stream> {
            let connected = self.next.connect().await;
            // A failed instance (a client that left before being served) is
            // not tried again: every accept leaves a fresh one waiting.
            let fresh = self.security.create(ServerOptions::new().reject_remote_clients(true), &self.name)?;
            let served = std::mem::replace(&mut self.next, fresh);
            if let Err(e) = connected {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                return Err(e);
            }
            Ok(Stream::Server(served))
        }
    }

    pub fn default_path() -> PathBuf {
        let user = std::env::var("USERNAME").unwrap_or_else(|_| "user".into());
        PathBuf::from(format!(r"\\.\pipe\idlemesh-{user}"))
    }

    pub async fn bind(path: &Path) -> Result<Listener, ControlError> {
        let name = path.display().to_string();
        let security = UserOnly::new().map_err(|source| ControlError::Io { path: name.clone(), source })?;
        // The first instance fails if another agent owns the name already.
        let mut options = ServerOptions::new();
        options.first_pipe_instance(true).reject_remote_clients(true);
        let next = security.create(&options, &name).map_err(|source| match source.kind() {
            std::io::ErrorKind::PermissionDenied => ControlError::AlreadyRunning { path: name.clone() },
            _ => ControlError::Io { path: name.clone(), source },
        })?;
        Ok(Listener { name, next, security })
    }

    /// A security descriptor that lets only this user (and the system) open
    /// the pipe. A pipe's default one also grants everyone read access.
    struct UserOnly(windows_sys::Win32::Security::PSECURITY_DESCRIPTOR);

    // SAFETY: the descriptor is immutable memory owned by this value alone.
    unsafe impl Send for UserOnly {}
    unsafe impl Sync for UserOnly {}

    impl UserOnly {
        fn new() -> std::io::Result<Self> {
            use windows_sys::Win32::Foundation::{CloseHandle, HANDLE, LocalFree};
            use windows_sys::Win32::Security::Authorization::{
                ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
            };
            use windows_sys::Win32::Security::{GetTokenInformation, TOKEN_QUERY, TOKEN_USER, TokenUser};
            use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

            let last_error = |what: &str| {
                let e = std::io::Error::last_os_error();
                std::io::Error::new(e.kind(), format!("{what}: {e}"))
            };
            // SAFETY: every handle and buffer is checked, sized as the API
            // reports, and released before returning (but the descriptor,
            // which this value owns and frees on drop).
            unsafe {
                let mut token: HANDLE = std::ptr::null_mut();
                if OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) == 0 {
                    return Err(last_error("OpenProcessToken"));
                }
                let mut needed = 0u32;
                GetTokenInformation(token, TokenUser, std::ptr::null_mut(), 0, &mut needed);
                // u64s keep the buffer aligned for TOKEN_USER.
                let mut buffer = vec![0u64; (needed as usize).div_ceil(8)];
                let read = GetTokenInformation(token, TokenUser, buffer.as_mut_ptr().cast(), needed, &mut needed);
                CloseHandle(token);
                if read == 0 {
                    return Err(last_error("GetTokenInformation"));
                }
                let user = &*(buffer.as_ptr().cast::<TOKEN_USER>());
                let mut sid_text = std::ptr::null_mut();
                if ConvertSidToStringSidW(user.User.Sid, &mut sid_text) == 0 {
                    return Err(last_error("ConvertSidToStringSidW"));
                }
                let sid = String::from_utf16_lossy(std::slice::from_raw_parts(
                    sid_text,
                    (0..).take_while(|&i| *sid_text.add(i) != 0).count(),
                ));
                LocalFree(sid_text.cast());
                // Protected DACL: generic all for this user and LocalSystem, nothing inherited.
                let sddl: Vec<u16> = format!("D:P(A;;GA;;;{sid})(A;;GA;;;SY)").encode_utf16().chain([0]).collect();
                let mut descriptor = std::ptr::null_mut();
                if ConvertStringSecurityDescriptorToSecurityDescriptorW(
                    sddl.as_ptr(),
                    SDDL_REVISION_1,
                    &mut descriptor,
                    std::ptr::null_mut(),
                ) == 0
                {
                    return Err(last_error("ConvertStringSecurityDescriptorToSecurityDescriptorW"));
                }
                Ok(Self(descriptor))
            }
        }

        fn create(&self, options: &ServerOptions, name: &str) -> std::io::Result<NamedPipeServer> {
            use windows_sys::Win32::Security::SECURITY_ATTRIBUTES;
            let mut attributes = SECURITY_ATTRIBUTES {
                nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
                lpSecurityDescriptor: self.0,
                bInheritHandle: 0,
            };
            // SAFETY: the attributes and the descriptor they point to outlive the call.
            unsafe { options.create_with_security_attributes_raw(name, (&raw mut attributes).cast()) }
        }
    }

    impl Drop for UserOnly {
        fn drop(&mut self) {
            // SAFETY: allocated by ConvertStringSecurityDescriptorToSecurityDescriptorW, freed once.
            unsafe { windows_sys::Win32::Foundation::LocalFree(self.0) };
        }
    }

    pub async fn connect(path: &Path) -> std::io::Result<Stream> {
        ClientOptions::new().open(path.as_os_str()).map(Stream::Client)
    }

    /// The pipe's own DACL keeps other users out; there is no folder.
    pub fn check_private(_path: &Path) -> Result<(), ControlError> {
        Ok(())
    }

    /// The pipe admits only its creator and the system ([`UserOnly`]), so a
    /// connected client is the same user.
    pub fn same_user(_stream: &Stream) -> std::io::Result<bool> {
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_strict() {
        let ok: Request = serde_json::from_str(r#"{"command":"pause","duration":"15m"}"#).unwrap();
        assert_eq!(ok, Request::Pause { duration: Some("15m".into()), only: idlemesh_control::Scope::All });
        assert!(serde_json::from_str::<Request>(r#"{"command":"shutdown"}"#).is_err());
        let join: Request = serde_json::from_str(r#"{"command":"pool_join","url":"http://p"}"#).unwrap();
        assert_eq!(join, Request::PoolJoin { url: "http://p".into(), token: None, temporary: false });
        assert!(serde_json::from_str::<Request>(r#"{"command":"pause","duration":"1h","extra":1}"#).is_err());
        let demo: Request = serde_json::from_str(r#"{"command":"demo_start"}"#).unwrap();
        assert_eq!(demo, Request::DemoStart);
    }

    /// Someone else's socket folder: whoever owns it could answer as the
    /// agent. The client refuses it, and (the same socket in a folder of
    /// our own) would otherwise have believed the impostor.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_client_trusts_no_socket_in_another_users_folder() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("not root: making a folder another user owns needs chown; skipped");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("idlemesh");
        std::fs::create_dir(&folder).unwrap();
        let path = folder.join("agent.sock");
        let impostor = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = impostor.accept().await {
                let (read, mut write) = tokio::io::split(stream);
                let _ = BufReader::new(read).lines().next_line().await;
                let _ = write.write_all(b"{\"ok\":true,\"result\":{\"state\":\"working\"}}\n").await;
            }
        });
        std::os::unix::fs::chown(&folder, Some(65534), Some(65534)).unwrap();
        match call(&path, &Request::Status).await {
            Err(ControlError::NotPrivate { owner, .. }) => assert_eq!(owner, 65534),
            other => panic!("an impostor's folder was trusted: {other:?}"),
        }
        // The same socket in our own folder is believed: the check is what refused it.
        std::os::unix::fs::chown(&folder, Some(0), Some(0)).unwrap();
        assert_eq!(call(&path, &Request::Status).await.unwrap()["state"], "working");
    }
}
