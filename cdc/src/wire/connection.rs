//! A PostgreSQL connection in replication mode: startup, authentication,
//! simple queries (IDENTIFY_SYSTEM, CREATE_REPLICATION_SLOT, ...) and the
//! CopyBoth stream of START_REPLICATION.
//!
//! tokio-postgres cannot open replication connections, so this speaks the
//! protocol itself; `postgres-protocol` provides the frontend encoding and
//! SCRAM, which keeps this module to the replication-specific parts.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::params::{ConnectParams, Endpoint};
use crate::error::{CdcError, Result, ServerError};
use crate::lsn::Lsn;

/// One message from the server: its type byte and body.
#[derive(Debug)]
struct BackendMessage {
    tag: u8,
    body: Bytes,
}

/// Rows of a simple query, every value as text.
#[derive(Debug, Default)]
pub struct QueryResult {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows; `None` is SQL NULL.
    pub rows: Vec<Vec<Option<String>>>,
}

impl QueryResult {
    /// The value of `column` in the first row.
    pub fn first(&self, column: &str) -> Option<&str> {
        let i = self.columns.iter().position(|c| c == column)?;
        self.rows.first()?.get(i)?.as_deref()
    }
}

/// What arrives on a started replication stream.
#[derive(Debug)]
pub enum StreamMessage {
    /// A chunk of decoded WAL (one pgoutput message).
    XLogData {
        /// WAL position of the data.
        wal_start: Lsn,
        /// Current end of WAL on the server.
        wal_end: Lsn,
        /// The pgoutput message.
        data: Bytes,
    },
    /// The server's keepalive; answer at once when `reply_requested`.
    Keepalive {
        /// Everything before this position has been sent.
        wal_end: Lsn,
        /// The server will time us out unless we answer.
        reply_requested: bool,
    },
    /// The server ended the stream.
    End,
}

/// Asks the server for TLS (SSLRequest, protocol section 55.2.10): `true`
/// when it answers `S`, `false` on `N`.
async fn ssl_request(stream: &mut tokio::net::TcpStream, host: &str, port: u16) -> Result<bool> {
    // Length 8, then the request code 1234 << 16 | 5679.
    stream
        .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .map_err(CdcError::io(format!("asking {host}:{port} for TLS")))?;
    let mut answer = [0u8; 1];
    stream
        .read_exact(&mut answer)
        .await
        .map_err(CdcError::io(format!("asking {host}:{port} for TLS")))?;
    match answer[0] {
        b'S' => Ok(true),
        b'N' => Ok(false),
        other => Err(CdcError::Protocol(format!(
            "{host}:{port} answered the TLS request with {other:#x}"
        ))),
    }
}

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// A replication-mode connection.
pub struct ReplicationConnection {
    reader: Box<dyn AsyncRead + Send + Unpin>,
    writer: Box<dyn AsyncWrite + Send + Unpin>,
    read_buf: BytesMut,
    write_buf: BytesMut,
    streaming: bool,
    /// Encrypted, or a unix socket: a password may be sent as it is.
    private: bool,
}

impl ReplicationConnection {
    /// Connects, authenticates and waits until the server is ready for queries.
    pub async fn connect(params: &ConnectParams) -> Result<Self> {
        let mut encrypted = false;
        let (reader, writer): (
            Box<dyn AsyncRead + Send + Unpin>,
            Box<dyn AsyncWrite + Send + Unpin>,
        ) = match &params.endpoint {
            Endpoint::Tcp(host, port) => {
                let mut stream = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(CdcError::io(format!("connecting to {host}:{port}")))?;
                stream.set_nodelay(true).ok();
                let config = params.tls.client_config();
                let accepted = match &config {
                    Some(_) => ssl_request(&mut stream, host, *port).await?,
                    None => false,
                };
                match config {
                    Some(config) if accepted => {
                        let name = super::tls::server_name(host)?;
                        let tls = tokio_rustls::TlsConnector::from(config)
                            .connect(name, stream)
                            .await
                            .map_err(CdcError::io(format!("TLS handshake with {host}:{port}")))?;
                        encrypted = true;
                        let (r, w) = tokio::io::split(tls);
                        (Box::new(r), Box::new(w))
                    }
                    _ if params.tls.mode().requires_tls() => {
                        return Err(CdcError::Auth(format!(
                            "{host}:{port} does not offer TLS, and sslmode requires it"
                        )));
                    }
                    _ => {
                        let (r, w) = stream.into_split();
                        (Box::new(r), Box::new(w))
                    }
                }
            }
            Endpoint::Unix(dir, port) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                let stream = tokio::net::UnixStream::connect(&path)
                    .await
                    .map_err(CdcError::io(format!("connecting to {}", path.display())))?;
                let (r, w) = stream.into_split();
                (Box::new(r), Box::new(w))
            }
        };
        let mut conn = ReplicationConnection {
            reader,
            writer,
            read_buf: BytesMut::with_capacity(1 << 20),
            write_buf: BytesMut::with_capacity(256),
            streaming: false,
            // A unix socket never leaves the machine.
            private: encrypted || matches!(params.endpoint, Endpoint::Unix(..)),
        };
        conn.startup(params).await?;
        Ok(conn)
    }

    async fn startup(&mut self, params: &ConnectParams) -> Result<()> {
        let startup = [
            ("user", params.user.as_str()),
            ("database", params.dbname.as_str()),
            ("replication", "database"),
            ("application_name", params.application_name.as_str()),
            ("client_encoding", "UTF8"),
        ];
        frontend::startup_message(startup.iter().copied(), &mut self.write_buf)
            .map_err(CdcError::io("encoding startup"))?;
        self.flush().await?;
        let mut scram: Option<ScramSha256> = None;
        loop {
            let msg = self.recv().await?;
            match msg.tag {
                b'R' => {
                    let mut body = msg.body;
                    let code = get_i32(&mut body)?;
                    match code {
                        0 => {}
                        3 => {
                            if !self.private {
                                return Err(CdcError::Auth(format!(
                                    "the server asks for role {:?}'s password in clear text over an \
                                     unencrypted connection; refused. Use TLS (sslmode=require or \
                                     verify-full) or scram-sha-256 in pg_hba.conf",
                                    params.user
                                )));
                            }
                            let pw = self.password(params)?;
                            frontend::password_message(&pw, &mut self.write_buf)
                                .map_err(CdcError::io("encoding password"))?;
                            self.flush().await?;
                        }
                        5 => {
                            if body.len() < 4 {
                                return Err(CdcError::Protocol("short md5 salt".into()));
                            }
                            let salt = [body[0], body[1], body[2], body[3]];
                            let pw = self.password(params)?;
                            let hash = postgres_protocol::authentication::md5_hash(
                                params.user.as_bytes(),
                                &pw,
                                salt,
                            );
                            frontend::password_message(hash.as_bytes(), &mut self.write_buf)
                                .map_err(CdcError::io("encoding password"))?;
                            self.flush().await?;
                        }
                        10 => {
                            let mechanisms = String::from_utf8_lossy(&body).to_string();
                            if !mechanisms.split('\0').any(|m| m == SCRAM_SHA_256) {
                                return Err(CdcError::Auth(format!(
                                    "server offers SASL mechanisms {mechanisms:?}, only {SCRAM_SHA_256} is supported"
                                )));
                            }
                            let pw = self.password(params)?;
                            let s = ScramSha256::new(&pw, ChannelBinding::unsupported());
                            frontend::sasl_initial_response(
                                SCRAM_SHA_256,
                                s.message(),
                                &mut self.write_buf,
                            )
                            .map_err(CdcError::io("encoding SASL"))?;
                            scram = Some(s);
                            self.flush().await?;
                        }
                        11 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                CdcError::Protocol("SASL continue before start".into())
                            })?;
                            s.update(&body).map_err(|e| CdcError::Auth(e.to_string()))?;
                            frontend::sasl_response(s.message(), &mut self.write_buf)
                                .map_err(CdcError::io("encoding SASL"))?;
                            self.flush().await?;
                        }
                        12 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                CdcError::Protocol("SASL final before start".into())
                            })?;
                            s.finish(&body).map_err(|e| CdcError::Auth(e.to_string()))?;
                        }
                        other => {
                            return Err(CdcError::Auth(format!(
                                "server asks for authentication method {other}, which is not supported"
                            )));
                        }
                    }
                }
                b'E' => return Err(parse_error(msg.body).into()),
                b'Z' => return Ok(()),
                // ParameterStatus, BackendKeyData, NoticeResponse.
                b'S' | b'K' | b'N' => {}
                other => {
                    return Err(CdcError::Protocol(format!(
                        "unexpected message {:?} during startup",
                        other as char
                    )));
                }
            }
        }
    }

    fn password(&self, params: &ConnectParams) -> Result<Vec<u8>> {
        params.password.clone().ok_or_else(|| {
            CdcError::Auth(format!(
                "the server wants a password for role {:?} and the connection string has none",
                params.user
            ))
        })
    }

    /// Runs one statement of the replication protocol (or plain SQL) and collects its rows.
    pub async fn simple_query(&mut self, sql: &str) -> Result<QueryResult> {
        if self.streaming {
            return Err(CdcError::Protocol("query on a streaming connection".into()));
        }
        frontend::query(sql, &mut self.write_buf).map_err(CdcError::io("encoding query"))?;
        self.flush().await?;
        let mut result = QueryResult::default();
        let mut error = None;
        loop {
            let msg = self.recv().await?;
            match msg.tag {
                b'T' => result.columns = parse_row_description(msg.body)?,
                b'D' => result.rows.push(parse_data_row(msg.body)?),
                b'E' => error = Some(parse_error(msg.body)),
                b'Z' => break,
                // CommandComplete, EmptyQuery, Notice, ParameterStatus.
                b'C' | b'I' | b'N' | b'S' => {}
                other => {
                    return Err(CdcError::Protocol(format!(
                        "unexpected message {:?} answering {sql:?}",
                        other as char
                    )));
                }
            }
        }
        match error {
            Some(e) => Err(e.into()),
            None => Ok(result),
        }
    }

    /// Sends START_REPLICATION and waits for the server to start streaming.
    pub async fn start_replication(
        &mut self,
        slot: &str,
        start: Lsn,
        options: &[(&str, &str)],
    ) -> Result<()> {
        let opts = options
            .iter()
            .map(|(k, v)| format!("\"{k}\" '{}'", v.replace('\'', "''")))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!("START_REPLICATION SLOT \"{slot}\" LOGICAL {start} ({opts})");
        frontend::query(&sql, &mut self.write_buf)
            .map_err(CdcError::io("encoding START_REPLICATION"))?;
        self.flush().await?;
        loop {
            let msg = self.recv().await?;
            match msg.tag {
                b'W' => {
                    self.streaming = true;
                    return Ok(());
                }
                b'E' => {
                    let err = parse_error(msg.body);
                    // Drain to ReadyForQuery so the connection stays usable.
                    while self.recv().await?.tag != b'Z' {}
                    return Err(err.into());
                }
                b'N' | b'S' => {}
                other => {
                    return Err(CdcError::Protocol(format!(
                        "unexpected message {:?} answering START_REPLICATION",
                        other as char
                    )));
                }
            }
        }
    }

    /// The next message of a started stream.
    pub async fn next_message(&mut self) -> Result<StreamMessage> {
        loop {
            let msg = self.recv().await?;
            match msg.tag {
                b'd' => {
                    let mut body = msg.body;
                    if body.is_empty() {
                        return Err(CdcError::Protocol("empty CopyData".into()));
                    }
                    let kind = body.get_u8();
                    match kind {
                        b'w' => {
                            if body.len() < 24 {
                                return Err(CdcError::Protocol("short XLogData header".into()));
                            }
                            let wal_start = Lsn(body.get_u64());
                            let wal_end = Lsn(body.get_u64());
                            let _send_time = body.get_i64();
                            return Ok(StreamMessage::XLogData {
                                wal_start,
                                wal_end,
                                data: body,
                            });
                        }
                        b'k' => {
                            if body.len() < 17 {
                                return Err(CdcError::Protocol("short keepalive".into()));
                            }
                            let wal_end = Lsn(body.get_u64());
                            let _send_time = body.get_i64();
                            let reply_requested = body.get_u8() == 1;
                            return Ok(StreamMessage::Keepalive {
                                wal_end,
                                reply_requested,
                            });
                        }
                        other => {
                            return Err(CdcError::Protocol(format!(
                                "unknown CopyData kind {:?}",
                                other as char
                            )));
                        }
                    }
                }
                b'c' | b'C' | b'Z' => {
                    self.streaming = false;
                    return Ok(StreamMessage::End);
                }
                b'E' => return Err(parse_error(msg.body).into()),
                b'N' | b'S' => {}
                other => {
                    return Err(CdcError::Protocol(format!(
                        "unexpected message {:?} in the replication stream",
                        other as char
                    )));
                }
            }
        }
    }

    /// True when a whole message is already buffered, i.e. reading will not wait.
    pub fn has_buffered_message(&self) -> bool {
        if self.read_buf.len() < 5 {
            return false;
        }
        let len = i32::from_be_bytes([
            self.read_buf[1],
            self.read_buf[2],
            self.read_buf[3],
            self.read_buf[4],
        ]);
        len >= 4 && self.read_buf.len() > len as usize
    }

    /// Tells the server how far we have durably processed: the slot's
    /// confirmed flush position becomes `flushed`.
    pub async fn send_status(&mut self, flushed: Lsn, reply_requested: bool) -> Result<()> {
        let now = now_pg_micros();
        let mut payload = BytesMut::with_capacity(34);
        payload.put_u8(b'r');
        payload.put_u64(flushed.0); // written
        payload.put_u64(flushed.0); // flushed
        payload.put_u64(flushed.0); // applied
        payload.put_i64(now);
        payload.put_u8(reply_requested as u8);
        let data =
            frontend::CopyData::new(payload.freeze()).map_err(CdcError::io("encoding status"))?;
        data.write(&mut self.write_buf);
        self.flush().await
    }

    /// Ends the stream politely (CopyDone then Terminate).
    pub async fn close(mut self) -> Result<()> {
        if self.streaming {
            frontend::copy_done(&mut self.write_buf);
        }
        frontend::terminate(&mut self.write_buf);
        self.flush().await
    }

    async fn flush(&mut self) -> Result<()> {
        self.writer
            .write_all(&self.write_buf)
            .await
            .map_err(CdcError::io("writing to the server"))?;
        self.writer
            .flush()
            .await
            .map_err(CdcError::io("writing to the server"))?;
        self.write_buf.clear();
        Ok(())
    }

    async fn recv(&mut self) -> Result<BackendMessage> {
        loop {
            if self.read_buf.len() >= 5 {
                let len = i32::from_be_bytes([
                    self.read_buf[1],
                    self.read_buf[2],
                    self.read_buf[3],
                    self.read_buf[4],
                ]);
                if len < 4 {
                    return Err(CdcError::Protocol(format!("message length {len}")));
                }
                let total = 1 + len as usize;
                if self.read_buf.len() >= total {
                    let mut frame = self.read_buf.split_to(total);
                    let tag = frame[0];
                    frame.advance(5);
                    return Ok(BackendMessage {
                        tag,
                        body: frame.freeze(),
                    });
                }
                self.read_buf.reserve(total - self.read_buf.len());
            }
            if self.read_buf.capacity() - self.read_buf.len() < 64 * 1024 {
                self.read_buf.reserve(1 << 20);
            }
            let n = self
                .reader
                .read_buf(&mut self.read_buf)
                .await
                .map_err(CdcError::io("reading from the server"))?;
            if n == 0 {
                return Err(CdcError::Io {
                    context: "reading from the server".into(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "server closed the connection",
                    ),
                });
            }
        }
    }
}

/// Now in microseconds since 2000-01-01, the clock of the replication protocol.
pub fn now_pg_micros() -> i64 {
    let since_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default();
    since_unix - PG_EPOCH_OFFSET_MICROS
}

fn get_i32(body: &mut Bytes) -> Result<i32> {
    if body.len() < 4 {
        return Err(CdcError::Protocol("short message".into()));
    }
    Ok(body.get_i32())
}

fn get_cstr(body: &mut Bytes) -> Result<String> {
    let end = body
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| CdcError::Protocol("unterminated string".into()))?;
    let s = String::from_utf8_lossy(&body[..end]).into_owned();
    body.advance(end + 1);
    Ok(s)
}

fn parse_error(mut body: Bytes) -> ServerError {
    let mut e = ServerError {
        severity: "ERROR".into(),
        code: String::new(),
        message: String::new(),
        detail: None,
        hint: None,
    };
    while !body.is_empty() {
        let field = body.get_u8();
        if field == 0 {
            break;
        }
        let Ok(value) = get_cstr(&mut body) else {
            break;
        };
        match field {
            b'S' => e.severity = value,
            b'C' => e.code = value,
            b'M' => e.message = value,
            b'D' => e.detail = Some(value),
            b'H' => e.hint = Some(value),
            _ => {}
        }
    }
    e
}

fn parse_row_description(mut body: Bytes) -> Result<Vec<String>> {
    if body.len() < 2 {
        return Err(CdcError::Protocol("short RowDescription".into()));
    }
    let n = body.get_i16();
    let mut cols = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        cols.push(get_cstr(&mut body)?);
        if body.len() < 18 {
            return Err(CdcError::Protocol("short RowDescription".into()));
        }
        body.advance(18);
    }
    Ok(cols)
}

fn parse_data_row(mut body: Bytes) -> Result<Vec<Option<String>>> {
    if body.len() < 2 {
        return Err(CdcError::Protocol("short DataRow".into()));
    }
    let n = body.get_i16();
    let mut row = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let len = get_i32(&mut body)?;
        if len < 0 {
            row.push(None);
        } else {
            let len = len as usize;
            if body.len() < len {
                return Err(CdcError::Protocol("short DataRow".into()));
            }
            row.push(Some(String::from_utf8_lossy(&body[..len]).into_owned()));
            body.advance(len);
        }
    }
    Ok(row)
}
