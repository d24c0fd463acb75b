//! One client connection: its authenticated session (a DataFusion context
//! holding the tenant's governed tables and nothing else), and the query
//! handlers that run its statements through datafusion-postgres and audit
//! those that read governed data.

use std::fmt::Debug;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use async_trait::async_trait;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_postgres::DfSessionService;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use futures::{Stream, StreamExt};
use lily_lakehouse::QueryRecord;
use pgwire::api::portal::Portal;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::Response;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::data::DataRow;
use tokio::sync::mpsc;
use tracing::{Instrument, info_span, warn};

use super::Endpoint;
use super::auth::CredentialError;
use super::statements::{self, Kind};
use crate::caller::{SessionCaller, TableRead};
use crate::governed::GovernedSchema;
use crate::masks;

/// The authenticated part of a connection.
struct Session {
    service: Arc<DfSessionService>,
    caller: Arc<SessionCaller>,
    /// The password the session authenticated with (an API key or a JWT),
    /// checked again while the session lives.
    credential: String,
    /// When the credential was last found valid; a check that fails
    /// leaves it, so every later statement checks again.
    checked: Mutex<Instant>,
    /// The tenant's connection slot, held while the connection lives.
    _slot: tokio::sync::OwnedSemaphorePermit,
}

fn credential_ended(tenant: &str) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_owned(),
        "28000".to_owned(),
        format!(
            "the credential of this session is no longer valid (revoked, expired, or without a role that reads tenant \"{tenant}\"): reconnect with a valid one"
        ),
    )))
}

/// One client connection.
pub struct Connection {
    pub(super) endpoint: Arc<Endpoint>,
    refused: Option<(String, String)>,
    pid: i32,
    secret: i32,
    session: OnceLock<Session>,
}

/// The handlers of a connection before it authenticates: no tables.
fn unauthenticated() -> Arc<DfSessionService> {
    static EMPTY: OnceLock<Arc<DfSessionService>> = OnceLock::new();
    EMPTY
        .get_or_init(|| Arc::new(DfSessionService::new(Arc::new(SessionContext::new()))))
        .clone()
}

impl Connection {
    pub(super) fn new(endpoint: Arc<Endpoint>, refused: Option<(String, String)>) -> Self {
        let pid = endpoint.next_pid();
        Self {
            endpoint,
            refused,
            pid,
            secret: rand_secret(),
            session: OnceLock::new(),
        }
    }

    /// The error this connection is refused with before it authenticates
    /// (too many connections).
    pub(super) fn refused(&self) -> Option<PgWireError> {
        self.refused.as_ref().map(|(code, message)| {
            PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".to_owned(),
                code.clone(),
                message.clone(),
            )))
        })
    }

    pub(super) fn pid_and_secret(&self) -> (i32, i32) {
        (self.pid, self.secret)
    }

    /// Builds the session of an authenticated caller.
    pub(super) async fn open_session(
        &self,
        tenant: &str,
        subject: &str,
        user: &str,
        roles: Vec<String>,
        credential: String,
    ) -> crate::error::Result<()> {
        let slot = self.endpoint.tenant_slot(tenant).ok_or_else(|| {
            metrics::counter!("lily_sql_connections_refused_total").increment(1);
            crate::error::EnforcementError::TooManyConnections(tenant.to_owned())
        })?;
        let caller = Arc::new(SessionCaller::new(
            tenant.to_owned(),
            subject.to_owned(),
            user.to_owned(),
            roles,
        ));
        let mut config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema(tenant, "public")
            .with_create_default_catalog_and_schema(true);
        config = config.with_extension(caller.clone());
        let ctx = Arc::new(SessionContext::new_with_config_rt(
            config,
            self.endpoint.sources.runtime(),
        ));
        masks::register(&ctx);
        let catalog = ctx.catalog(tenant).ok_or_else(|| {
            crate::error::EnforcementError::Config(format!("no catalog {tenant}"))
        })?;
        catalog.register_schema(
            "public",
            Arc::new(GovernedSchema::new(
                tenant,
                self.endpoint.policies.clone(),
                self.endpoint.sources.clone(),
                self.endpoint.policy_wait,
            )),
        )?;
        setup_pg_catalog(&ctx, tenant, EmptyContextProvider).map_err(|e| *e)?;
        let session = Session {
            service: Arc::new(DfSessionService::new(ctx)),
            caller,
            credential,
            checked: Mutex::new(Instant::now()),
            _slot: slot,
        };
        let _ = self.session.set(session);
        Ok(())
    }

    fn session(&self) -> PgWireResult<&Session> {
        self.session.get().ok_or_else(|| {
            PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".to_owned(),
                "28000".to_owned(),
                "the session is not authenticated".to_owned(),
            )))
        })
    }

    /// The authenticated session, once its credential has been checked
    /// again if `credential_recheck` has passed since the last check: a
    /// revoked API key or an expired token ends what the session may do at
    /// its next statement. While the credential store cannot answer, the
    /// session goes on and is checked again at its next statement.
    async fn checked_session(&self) -> PgWireResult<&Session> {
        let session = self.session()?;
        let tenant = &session.caller.tenant;
        let due = session
            .checked
            .lock()
            .map(|at| at.elapsed() >= self.endpoint.credential_recheck)
            .unwrap_or(true);
        if !due {
            return Ok(session);
        }
        match self.endpoint.credentials.verify(&session.credential).await {
            Ok(identity) if identity.readable.contains(tenant) => {
                if let Ok(mut at) = session.checked.lock() {
                    *at = Instant::now();
                }
                Ok(session)
            }
            Ok(_) | Err(CredentialError::Invalid(_)) => {
                metrics::counter!("lily_sql_sessions_ended_total", "reason" => "credential")
                    .increment(1);
                warn!(tenant = %tenant, subject = %session.caller.subject, "SQL session ended: its credential is no longer valid");
                Err(credential_ended(tenant))
            }
            Err(CredentialError::Unavailable(why)) => {
                warn!(tenant = %tenant, error = %why, "the session's credential cannot be checked again now");
                Ok(session)
            }
        }
    }
}

fn rand_secret() -> i32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..4]);
    i32::from_be_bytes(b)
}

/// A statement in progress, audited when its last row has been sent.
struct Audit {
    record: Mutex<Option<QueryRecord>>,
    rows: AtomicI64,
    started: Instant,
    failed: Mutex<Option<(String, String)>>,
    sink: mpsc::UnboundedSender<QueryRecord>,
}

impl Drop for Audit {
    fn drop(&mut self) {
        let Some(mut record) = self.record.lock().ok().and_then(|mut r| r.take()) else {
            return;
        };
        record.rows = self.rows.load(Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        record.duration_ms = elapsed.as_millis() as i64;
        if let Some((code, message)) = self.failed.lock().ok().and_then(|mut f| f.take()) {
            record.status = code;
            record.error = Some(message);
        }
        metrics::histogram!("lily_sql_statement_ms", "governed" => "true")
            .record(elapsed.as_secs_f64() * 1000.0);
        metrics::counter!("lily_sql_rows_total").increment(record.rows as u64);
        let _ = self.sink.send(record);
    }
}

fn error_code(e: &PgWireError) -> (String, String) {
    match e {
        PgWireError::UserError(info) => (info.code.clone(), info.message.clone()),
        other => ("XX000".to_owned(), other.to_string()),
    }
}

fn record(
    caller: &SessionCaller,
    sql: &str,
    started_micros: i64,
    reads: &[TableRead],
) -> QueryRecord {
    let mut tables: Vec<String> = reads.iter().map(|r| r.table.clone()).collect();
    tables.sort();
    tables.dedup();
    QueryRecord {
        started_micros,
        tenant_id: caller.tenant.clone(),
        user_name: caller.user.clone(),
        subject: caller.subject.clone(),
        roles: caller.roles.clone(),
        sql: sql.to_owned(),
        tables,
        columns: reads
            .iter()
            .flat_map(|r| r.columns.iter().map(move |c| format!("{}.{c}", r.table)))
            .collect(),
        masks: reads
            .iter()
            .flat_map(|r| {
                r.masks
                    .iter()
                    .map(move |(c, m, p)| format!("{}.{c}={m}({})", r.table, p.join(",")))
            })
            .collect(),
        policy_version: reads.iter().map(|r| r.policy_version as i64).max(),
        rows: 0,
        duration_ms: 0,
        status: "ok".to_owned(),
        error: None,
    }
}

/// A result's rows, counted for the audit and cut off at the statement timeout.
struct Audited<S> {
    rows: S,
    audit: Option<Arc<Audit>>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
}

impl<S: Stream<Item = PgWireResult<DataRow>> + Unpin> Stream for Audited<S> {
    type Item = PgWireResult<DataRow>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(d) = self.deadline.as_mut()
            && d.as_mut().poll(cx).is_ready()
        {
            self.done = true;
            let e = PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".to_owned(),
                "57014".to_owned(),
                "canceling statement due to statement timeout".to_owned(),
            )));
            if let Some(a) = &self.audit
                && let Ok(mut f) = a.failed.lock()
            {
                *f = Some(error_code(&e));
            }
            return Poll::Ready(Some(Err(e)));
        }
        let next = self.rows.poll_next_unpin(cx);
        match &next {
            Poll::Ready(Some(Ok(_))) => {
                if let Some(a) = &self.audit {
                    a.rows.fetch_add(1, Ordering::Relaxed);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(a) = &self.audit
                    && let Ok(mut f) = a.failed.lock()
                {
                    *f = Some(error_code(e));
                }
            }
            Poll::Ready(None) => {
                self.done = true;
                // The audit is written as soon as the last row is out.
                self.audit = None;
            }
            Poll::Pending => {}
        }
        next
    }
}

/// The query handlers of a connection.
pub struct Queries {
    pub(super) conn: Arc<Connection>,
}

impl Queries {
    fn service(&self) -> Arc<DfSessionService> {
        self.conn
            .session
            .get()
            .map(|s| s.service.clone())
            .unwrap_or_else(unauthenticated)
    }

    /// Wraps `responses` so the statement is audited once its rows are
    /// sent, if it read governed data.
    fn audited(
        &self,
        session: &Session,
        sql: &str,
        (started, started_micros): (Instant, i64),
        result: PgWireResult<Vec<Response>>,
    ) -> PgWireResult<Vec<Response>> {
        let reads = session.caller.take_reads();
        let endpoint = &self.conn.endpoint;
        let status = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!("lily_sql_statements_total", "status" => status, "governed" => if reads.is_empty() { "false" } else { "true" }).increment(1);
        // Statements on governed data are audited; every statement has the timeout.
        let audit = (!reads.is_empty()).then(|| {
            Arc::new(Audit {
                record: Mutex::new(Some(record(&session.caller, sql, started_micros, &reads))),
                rows: AtomicI64::new(0),
                started,
                failed: Mutex::new(None),
                sink: endpoint.audit.clone(),
            })
        });
        if audit.is_none() {
            metrics::histogram!("lily_sql_statement_ms", "governed" => "false")
                .record(started.elapsed().as_secs_f64() * 1000.0);
        }
        let responses = match result {
            Ok(r) => r,
            Err(e) => {
                if let Some(a) = &audit
                    && let Ok(mut f) = a.failed.lock()
                {
                    *f = Some(error_code(&e));
                }
                return Err(e);
            }
        };
        let deadline = endpoint
            .statement_timeout
            .map(|t| tokio::time::Instant::from_std(started) + t);
        Ok(responses
            .into_iter()
            .map(|r| match r {
                Response::Query(mut q) => {
                    let rows =
                        std::mem::replace(&mut q.data_rows, Box::pin(futures::stream::empty()));
                    q.data_rows = Box::pin(Audited {
                        rows,
                        audit: audit.clone(),
                        deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
                        done: false,
                    });
                    Response::Query(q)
                }
                other => other,
            })
            .collect())
    }
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo
            + ClientPortalStore
            + futures::Sink<PgWireBackendMessage>
            + Unpin
            + Send
            + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as futures::Sink<PgWireBackendMessage>>::Error>,
    {
        let session = self.conn.checked_session().await?;
        let span = info_span!("sql_statement", tenant = %session.caller.tenant, user = %session.caller.user, protocol = "simple");
        let started = (Instant::now(), chrono::Utc::now().timestamp_micros());
        let _ = session.caller.take_reads();
        let parsed = PostgresCompatibilityParser::new()
            .parse(query)
            .map_err(|e| statements::error("42601", e.to_string()))?;
        let mut copy = None;
        for statement in &parsed {
            match statements::classify(statement) {
                Kind::Allowed => {}
                Kind::Refused(why) => {
                    metrics::counter!("lily_sql_statements_total", "status" => "refused", "governed" => "false").increment(1);
                    return Err(statements::error("25006", why));
                }
                Kind::CopyOut(_, _) if parsed.len() > 1 => {
                    return Err(statements::error(
                        "0A000",
                        "COPY ... TO STDOUT must be sent on its own".into(),
                    ));
                }
                Kind::CopyOut(inner, format) => copy = Some((inner, format)),
            }
        }
        let run = copy.as_ref().map_or(query, |(inner, _)| inner.as_str());
        let result = SimpleQueryHandler::do_query(session.service.as_ref(), client, run)
            .instrument(span)
            .await;
        let responses = self.audited(session, query, started, result)?;
        let Some((_, format)) = copy else {
            return Ok(responses);
        };
        Ok(responses
            .into_iter()
            .map(|r| match r {
                Response::Query(q) => Response::CopyOut(format.clone().copy_out(q)),
                other => other,
            })
            .collect())
    }
}

#[async_trait]
impl ExtendedQueryHandler for Queries {
    type Statement = <DfSessionService as ExtendedQueryHandler>::Statement;
    type QueryParser = <DfSessionService as ExtendedQueryHandler>::QueryParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.service().query_parser()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo
            + ClientPortalStore
            + futures::Sink<PgWireBackendMessage>
            + Unpin
            + Send
            + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as futures::Sink<PgWireBackendMessage>>::Error>,
    {
        let session = self.conn.checked_session().await?;
        let span = info_span!("sql_statement", tenant = %session.caller.tenant, user = %session.caller.user, protocol = "extended");
        let started = (Instant::now(), chrono::Utc::now().timestamp_micros());
        let _ = session.caller.take_reads();
        let sql = portal.statement.statement.0.clone();
        if let Some((statement, _)) = &portal.statement.statement.1 {
            match statements::classify(statement) {
                Kind::Allowed => {}
                Kind::Refused(why) => return Err(statements::error("25006", why)),
                Kind::CopyOut(_, _) => {
                    return Err(statements::error(
                        "0A000",
                        "COPY ... TO STDOUT is served on the simple query protocol".into(),
                    ));
                }
            }
        }
        let result =
            ExtendedQueryHandler::do_query(session.service.as_ref(), client, portal, max_rows)
                .instrument(span)
                .await
                .map(|r| vec![r]);
        let mut out = self.audited(session, &sql, started, result)?;
        Ok(out.pop().unwrap_or(Response::EmptyQuery))
    }
}
