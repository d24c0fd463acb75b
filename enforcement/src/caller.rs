//! Who runs a session's statements, and what each statement read: kept in
//! the session's DataFusion config, where every scan of a governed table
//! finds it.

use std::sync::Mutex;

/// One scan of a governed table by one statement.
#[derive(Debug, Clone, PartialEq)]
pub struct TableRead {
    /// The governed table.
    pub table: String,
    /// The columns read.
    pub columns: Vec<String>,
    /// Masked columns: (column, mask, policies).
    pub masks: Vec<(String, String, Vec<String>)>,
    /// The policy snapshot it was planned against.
    pub policy_version: u64,
}

/// The authenticated caller of a session.
#[derive(Debug)]
pub struct SessionCaller {
    /// The tenant the session is in.
    pub tenant: String,
    /// Token subject or API key id.
    pub subject: String,
    /// The user name the client gave.
    pub user: String,
    /// The caller's roles in the tenant (built-in and named).
    pub roles: Vec<String>,
    reads: Mutex<Vec<TableRead>>,
}

impl SessionCaller {
    /// A caller of `tenant`.
    pub fn new(tenant: String, subject: String, user: String, roles: Vec<String>) -> Self {
        Self {
            tenant,
            subject,
            user,
            roles,
            reads: Mutex::new(Vec::new()),
        }
    }

    /// Records a scan of the running statement.
    pub fn record(&self, read: TableRead) {
        match self.reads.lock() {
            Ok(mut r) => r.push(read),
            Err(p) => p.into_inner().push(read),
        }
    }

    /// The scans recorded since the last call (one statement's).
    pub fn take_reads(&self) -> Vec<TableRead> {
        match self.reads.lock() {
            Ok(mut r) => std::mem::take(&mut *r),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        }
    }
}
