//! Per-tenant concurrency: each tenant may have `api.tenant_concurrency`
//! requests in progress, so one tenant's flood waits in its own queue
//! instead of holding every metastore connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{InboundError, Result};

/// The slots of every tenant.
pub struct TenantSlots {
    per_tenant: usize,
    wait: Duration,
    tenants: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// One request's slot in its tenant; freed on drop.
#[derive(Debug, Clone)]
pub struct TenantSlot(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

impl TenantSlots {
    /// `per_tenant` requests at once per tenant; a request waits at most
    /// `wait` for a slot.
    pub fn new(per_tenant: usize, wait: Duration) -> Self {
        Self {
            per_tenant: per_tenant.max(1),
            wait,
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// A slot of `tenant` if one is free now, without waiting.
    pub fn try_enter(&self, tenant: &str) -> Option<TenantSlot> {
        self.semaphore(tenant)
            .try_acquire_owned()
            .ok()
            .map(|p| TenantSlot(Arc::new(p)))
    }

    fn semaphore(&self, tenant: &str) -> Arc<Semaphore> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        tenants
            .entry(tenant.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_tenant)))
            .clone()
    }

    /// A slot of `tenant`, or 429 `tenant_busy` when none frees up in time.
    /// Only called once the caller has proved a right to the tenant, so
    /// nobody can fill another tenant's slots.
    pub async fn enter(&self, tenant: &str) -> Result<TenantSlot> {
        let semaphore = self.semaphore(tenant);
        match tokio::time::timeout(self.wait, semaphore.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(TenantSlot(Arc::new(permit))),
            _ => {
                metrics::counter!("lily_inbound_tenant_busy_total").increment(1);
                Err(InboundError::TenantBusy {
                    tenant: tenant.to_owned(),
                    limit: self.per_tenant,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_busy_tenant_waits_alone() {
        let slots = TenantSlots::new(2, Duration::from_millis(50));
        let a1 = slots.enter("a").await.unwrap();
        let _a2 = slots.enter("a").await.unwrap();
        let refused = slots.enter("a").await.unwrap_err();
        assert_eq!(refused.code(), "tenant_busy");
        // Another tenant is not affected.
        let _b = slots.enter("b").await.unwrap();
        drop(a1);
        slots.enter("a").await.unwrap();
    }
}
