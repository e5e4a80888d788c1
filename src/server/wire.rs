//! The socket under each PostgreSQL connection: pgwire's message loop over a
//! corked stream, so that one statement's reply leaves in one `send`.
//!
//! pgwire flushes after nearly every message (`CommandComplete`, then
//! `ReadyForQuery`; `ParseComplete`, `BindComplete`, …). On a socket each
//! flush is a system call and, worse, wakes the client for a partial reply
//! it cannot act on. PostgreSQL instead buffers its output and sends it when
//! it has finished a reply (`ReadyForQuery`) or is about to wait for the
//! client. [`Corked`] does the same: writes collect in a buffer; a flush
//! does not send; the buffer goes out when [`serve`] ends a reply cycle, when
//! the connection next reads from the client, when it closes, or when the
//! buffer passes [`CORK_LIMIT`]. Because every wait for the client is a
//! read, nothing a client waits for is ever held back (a `Flush` message, an
//! authentication challenge and a `CopyInResponse` are all followed by a
//! read).
//!
//! pgwire's own `process_socket` takes a bare `TcpStream`, so the loop that
//! drives its handlers is here, over its public `process_message`.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pgwire::api::copy::CopyHandler as _;
use pgwire::api::ErrorHandler as _;
use pgwire::api::{ClientInfo, DefaultClient, PgWireConnectionState, PgWireServerHandlers};
use pgwire::error::ErrorInfo;
use pgwire::messages::response::{GssEncResponse, ReadyForQuery, SslResponse};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage, SslNegotiationMetaMessage};
use pgwire::tokio::server::{process_error, process_message, PgWireMessageServerCodec};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// Output held back beyond this goes out at once (a large result set
/// streams instead of collecting in memory).
pub const CORK_LIMIT: usize = 64 << 10;

/// How long a client may take to finish connecting and authenticating.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A stream whose writes wait in a buffer until the next read, a close, or
/// [`CORK_LIMIT`] bytes.
pub struct Corked<S> {
    io: S,
    out: Vec<u8>,
    /// How much of `out` the socket has taken.
    sent: usize,
}

impl<S: AsyncWrite + Unpin> Corked<S> {
    /// Wraps `io`.
    pub fn new(io: S) -> Self {
        Corked { io, out: Vec::new(), sent: 0 }
    }

    /// Sends everything held back.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.out.clear();
        self.sent = 0;
        Pin::new(&mut self.io).poll_flush(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Corked<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // About to wait for the client: it must have the whole reply first.
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Corked<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.out.len() >= CORK_LIMIT {
            ready!(this.poll_send(cx))?;
        }
        this.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Held until the next read: see the module's comment.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// Serves one client connection until it ends: TLS and GSS encryption
/// requests are refused (the client goes on in plain text, or gives up),
/// then every message goes to pgwire's handlers, and every error becomes an
/// `ErrorResponse` (closing the connection only when fatal).
pub async fn serve(socket: TcpStream, handlers: impl PgWireServerHandlers) -> io::Result<()> {
    let peer = socket.peer_addr()?;
    socket.set_nodelay(true)?;
    let codec = PgWireMessageServerCodec::new(DefaultClient::new(peer, false));
    let mut socket = Framed::new(Corked::new(socket), codec);
    let startup = handlers.startup_handler();
    let simple = handlers.simple_query_handler();
    let extended = handlers.extended_query_handler();
    let copy = handlers.copy_handler();
    let cancel = handlers.cancel_handler();
    let errors = handlers.error_handler();
    let deadline = tokio::time::sleep(STARTUP_TIMEOUT);
    tokio::pin!(deadline);
    loop {
        let starting = matches!(
            socket.state(),
            PgWireConnectionState::AwaitingSslRequest
                | PgWireConnectionState::AwaitingStartup
                | PgWireConnectionState::AuthenticationInProgress
        );
        let message = if starting {
            tokio::select! {
                () = &mut deadline => return Ok(()),
                message = socket.next() => message,
            }
        } else {
            socket.next().await
        };
        let message = match message {
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                // A frame that does not decode: the stream cannot be trusted
                // past it. Say why, then hang up (as PostgreSQL does).
                let info = ErrorInfo::new("FATAL".into(), "08P01".into(), format!("protocol violation: {error}"));
                socket.send(PgWireBackendMessage::ErrorResponse(info.into())).await?;
                return socket.close().await;
            }
            None => return Ok(()),
        };
        // A query, a `Sync` and the end of a `COPY` end with `ReadyForQuery`:
        // their reply goes out then, even if more input is already waiting
        // (a pipelining client may need it to go on), as in PostgreSQL.
        let ends_cycle = matches!(
            message,
            PgWireFrontendMessage::Query(_)
                | PgWireFrontendMessage::Sync(_)
                | PgWireFrontendMessage::CopyDone(_)
                | PgWireFrontendMessage::CopyFail(_)
        );
        match message {
            PgWireFrontendMessage::SslNegotiation(SslNegotiationMetaMessage::PostgresSsl(_)) => {
                socket.send(PgWireBackendMessage::SslResponse(SslResponse::Refuse)).await?;
            }
            PgWireFrontendMessage::SslNegotiation(SslNegotiationMetaMessage::PostgresGss(_)) => {
                socket.send(PgWireBackendMessage::GssEncResponse(GssEncResponse::Refuse)).await?;
            }
            PgWireFrontendMessage::SslNegotiation(SslNegotiationMetaMessage::None) => {
                // A startup or cancel packet: decoded again in the next state.
                socket.set_state(PgWireConnectionState::AwaitingStartup);
            }
            PgWireFrontendMessage::CopyDone(done)
                if matches!(socket.state(), PgWireConnectionState::CopyInProgress(false)) =>
            {
                // pgwire would answer `ReadyForQuery` "idle" even inside a
                // block; the copy handler sets the session's real status.
                let result = copy.on_copy_done(&mut socket, done).await;
                socket.set_state(PgWireConnectionState::ReadyForQuery);
                match result {
                    Ok(()) => {
                        let status = socket.transaction_status();
                        socket.send(PgWireBackendMessage::ReadyForQuery(ReadyForQuery::new(status))).await?;
                    }
                    Err(mut error) => {
                        errors.on_error(&socket, &mut error);
                        process_error(&mut socket, error, false).await?;
                    }
                }
            }
            message => {
                let extended_query = match socket.state() {
                    PgWireConnectionState::CopyInProgress(extended_query) => extended_query,
                    _ => message.is_extended_query(),
                };
                let result = process_message(
                    message,
                    &mut socket,
                    startup.clone(),
                    simple.clone(),
                    extended.clone(),
                    copy.clone(),
                    cancel.clone(),
                )
                .await;
                if let Err(mut error) = result {
                    errors.on_error(&socket, &mut error);
                    process_error(&mut socket, error, extended_query).await?;
                }
            }
        }
        if ends_cycle {
            socket.flush().await?;
            std::future::poll_fn(|cx| socket.get_mut().poll_send(cx)).await?;
        }
    }
}

/// How long a client turned away for want of a free session has to send its
/// startup packet before it is dropped without a word.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Turns away a client past `max_connections`, as PostgreSQL does, with
/// SQLSTATE 53300 (see [`refuse`]).
pub async fn refuse_too_many(socket: TcpStream, max_connections: u32) -> io::Result<()> {
    let message = format!("sorry, too many clients already (max_connections is {max_connections})");
    refuse(socket, ErrorInfo::new("FATAL".into(), "53300".into(), message)).await
}

/// Turns away a client as PostgreSQL does: TLS and GSS requests are
/// refused as in [`serve`], then the startup packet gets `error` (a
/// `FATAL`), which libpq shows as the reason (and, with several hosts,
/// tries the next), and the connection is closed. A cancel request, or
/// silence, is simply closed.
pub async fn refuse(socket: TcpStream, error: ErrorInfo) -> io::Result<()> {
    let peer = socket.peer_addr()?;
    let codec = PgWireMessageServerCodec::new(DefaultClient::<()>::new(peer, false));
    let mut socket = Framed::new(Corked::new(socket), codec);
    let deadline = tokio::time::sleep(REFUSAL_TIMEOUT);
    tokio::pin!(deadline);
    loop {
        let message = tokio::select! {
            () = &mut deadline => return Ok(()),
            message = socket.next() => message,
        };
        match message {
            Some(Ok(PgWireFrontendMessage::SslNegotiation(SslNegotiationMetaMessage::PostgresSsl(_)))) => {
                socket.send(PgWireBackendMessage::SslResponse(SslResponse::Refuse)).await?;
            }
            Some(Ok(PgWireFrontendMessage::SslNegotiation(SslNegotiationMetaMessage::PostgresGss(_)))) => {
                socket.send(PgWireBackendMessage::GssEncResponse(GssEncResponse::Refuse)).await?;
            }
            Some(Ok(PgWireFrontendMessage::SslNegotiation(SslNegotiationMetaMessage::None))) => {
                socket.set_state(PgWireConnectionState::AwaitingStartup);
            }
            Some(Ok(PgWireFrontendMessage::Startup(_))) => {
                socket.send(PgWireBackendMessage::ErrorResponse(error.into())).await?;
                return socket.close().await;
            }
            _ => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A reply written in pieces, with flushes between, reaches the peer in
    /// one piece when the server turns to read; nothing is lost or reordered.
    #[tokio::test]
    async fn writes_wait_for_the_next_read_and_arrive_whole() {
        let (server, mut client) = tokio::io::duplex(1 << 20);
        let mut corked = Corked::new(server);
        corked.write_all(b"Command").await.unwrap();
        corked.flush().await.unwrap();
        corked.write_all(b"Complete;Ready").await.unwrap();
        corked.flush().await.unwrap();
        let mut got = [0u8; 1];
        let peek = tokio::time::timeout(Duration::from_millis(50), client.read(&mut got)).await;
        assert!(peek.is_err(), "nothing is sent before the server reads");
        client.write_all(b"next").await.unwrap();
        let mut request = [0u8; 4];
        corked.read_exact(&mut request).await.unwrap();
        assert_eq!(&request, b"next");
        let mut reply = [0u8; 21];
        client.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"CommandComplete;Ready");
    }

    /// Past the limit, output streams instead of piling up; a shutdown sends
    /// what is left.
    #[tokio::test]
    async fn a_large_reply_streams_and_a_close_sends_the_rest() {
        let (server, mut client) = tokio::io::duplex(1 << 20);
        let mut corked = Corked::new(server);
        let chunk = vec![7u8; 1024];
        for _ in 0..(CORK_LIMIT / 1024 + 1) {
            corked.write_all(&chunk).await.unwrap();
        }
        corked.write_all(b"tail").await.unwrap();
        let mut first = vec![0u8; CORK_LIMIT];
        client.read_exact(&mut first).await.unwrap();
        assert!(first.iter().all(|b| *b == 7));
        corked.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest.len(), 1024 + 4);
        assert!(rest.ends_with(b"tail"));
    }
}
