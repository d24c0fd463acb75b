//! Tickets and issues a target opened, remembered by subject, so that the
//! updates of an incident become comments on its JIRA issue or notes on its
//! Freshdesk ticket. Kept in `lily.notification_refs`.

use deadpool_postgres::Pool;

use super::event::Notification;
use super::target::DeliveryError;

/// The store of references (`lily.notification_refs`).
#[derive(Clone)]
pub struct SubjectRefs {
    pool: Pool,
}

fn db_error(e: impl std::fmt::Display) -> DeliveryError {
    DeliveryError::Retry {
        message: format!("metastore: {e}"),
        after: None,
    }
}

impl SubjectRefs {
    /// References kept in the metastore behind `pool`.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// The reference `target` recorded for `subject` of `tenant`.
    pub async fn get(
        &self,
        target: &str,
        tenant: &str,
        subject: &str,
    ) -> Result<Option<String>, DeliveryError> {
        let conn = self.pool.get().await.map_err(db_error)?;
        let row = conn
            .query_opt(
                "SELECT reference FROM lily.notification_refs
                  WHERE target = $1 AND tenant_id = $2 AND subject = $3",
                &[&target, &tenant, &subject],
            )
            .await
            .map_err(db_error)?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Records `reference` (an issue key, a ticket id) for `subject`.
    pub async fn put(
        &self,
        target: &str,
        tenant: &str,
        subject: &str,
        reference: &str,
    ) -> Result<(), DeliveryError> {
        let conn = self.pool.get().await.map_err(db_error)?;
        conn.execute(
            "INSERT INTO lily.notification_refs (target, tenant_id, subject, reference)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (target, tenant_id, subject) DO UPDATE SET reference = EXCLUDED.reference",
            &[&target, &tenant, &subject, &reference],
        )
        .await
        .map_err(db_error)?;
        Ok(())
    }

    /// Records the ticket `target` opened for `n`, and links it to the
    /// incident `n` is about, if it is about one.
    pub async fn remember(
        &self,
        target: &str,
        system: &str,
        n: &Notification,
        reference: &str,
    ) -> Result<(), DeliveryError> {
        self.put(target, &n.tenant_id, &n.subject, reference)
            .await?;
        match &n.incident_id {
            Some(incident) => {
                self.link_incident(&n.tenant_id, incident, system, reference)
                    .await
            }
            None => Ok(()),
        }
    }

    /// Links a ticket to an incident (`metastore.incident_tickets`), so that
    /// closing the ticket resolves the incident. An incident that is gone is
    /// not an error.
    pub async fn link_incident(
        &self,
        tenant: &str,
        incident_id: &str,
        system: &str,
        ticket_key: &str,
    ) -> Result<(), DeliveryError> {
        let Ok(incident) = uuid::Uuid::parse_str(incident_id) else {
            return Ok(());
        };
        let conn = self.pool.get().await.map_err(db_error)?;
        conn.execute(
            "INSERT INTO metastore.incident_tickets (tenant_id, incident_id, system, ticket_key)
             SELECT tenant_id, incident_id, $3, $4 FROM metastore.incidents
              WHERE tenant_id = $1 AND incident_id = $2
             ON CONFLICT DO NOTHING",
            &[&tenant, &incident, &system, &ticket_key],
        )
        .await
        .map_err(db_error)?;
        Ok(())
    }
}
