//! Checks that the server can feed Lily before anything is created.

use tokio_postgres::Client;

use crate::error::{Problem, SetupError};

/// Every problem that would stop logical replication, each with its fix.
/// `slot` is not counted against the slot limit when it already exists.
pub async fn preflight(client: &Client, slot: &str) -> Result<Vec<Problem>, SetupError> {
    let q = |sql: &'static str| async move {
        client
            .query_one(sql, &[])
            .await
            .map_err(SetupError::sql(format!("running check {sql:?}")))
    };
    let mut problems = Vec::new();

    let version: i32 = q("SELECT current_setting('server_version_num')::int")
        .await?
        .get(0);
    if version < 150_000 {
        problems.push(Problem {
            what: format!(
                "PostgreSQL {} is too old; Lily needs 15 or newer",
                version / 10_000
            ),
            fix: "upgrade the server to PostgreSQL 15+".into(),
        });
    }

    let wal_level: String = q("SHOW wal_level").await?.get(0);
    if wal_level != "logical" {
        problems.push(Problem {
            what: format!("wal_level is '{wal_level}'; logical replication needs 'logical'"),
            fix: "run ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL \
                  (on a managed service, enable logical replication in its parameter group)"
                .into(),
        });
    }

    let role = q("SELECT current_user::text, rolreplication, rolsuper FROM pg_roles WHERE rolname = current_user").await?;
    let (user, replication, superuser): (String, bool, bool) =
        (role.get(0), role.get(1), role.get(2));
    if !replication && !superuser {
        problems.push(Problem {
            what: format!("role {user} lacks the REPLICATION attribute"),
            fix: format!("run ALTER ROLE \"{user}\" WITH REPLICATION; as a superuser"),
        });
    }

    let create: bool =
        q("SELECT has_database_privilege(current_user, current_database(), 'CREATE')")
            .await?
            .get(0);
    if !create {
        problems.push(Problem {
            what: format!("role {user} cannot create schemas in this database"),
            fix: format!(
                "run GRANT CREATE ON DATABASE <db> TO \"{user}\"; or use the database owner"
            ),
        });
    }

    let slots = client
        .query_one(
            "SELECT current_setting('max_replication_slots')::int, \
                    (SELECT count(*)::int FROM pg_replication_slots), \
                    EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[&slot],
        )
        .await
        .map_err(SetupError::sql("counting replication slots"))?;
    let (max_slots, used, ours): (i32, i32, bool) = (slots.get(0), slots.get(1), slots.get(2));
    if !ours && used >= max_slots {
        problems.push(Problem {
            what: format!("all {max_slots} replication slots are in use (max_replication_slots)"),
            fix: "drop an unused slot with SELECT pg_drop_replication_slot('<name>'), or raise \
                  max_replication_slots and restart PostgreSQL"
                .into(),
        });
    }

    let foreign = client
        .query_opt(
            "SELECT database::text, plugin::text FROM pg_replication_slots \
             WHERE slot_name = $1 AND (database IS DISTINCT FROM current_database() OR plugin IS DISTINCT FROM 'pgoutput')",
            &[&slot],
        )
        .await
        .map_err(SetupError::sql("inspecting the replication slot"))?;
    if let Some(row) = foreign {
        let (db, plugin): (Option<String>, Option<String>) = (row.get(0), row.get(1));
        problems.push(Problem {
            what: format!(
                "replication slot {slot} already exists for database {} with plugin {} (slot names are cluster-wide)",
                db.unwrap_or_else(|| "(physical)".into()),
                plugin.unwrap_or_else(|| "(none)".into())
            ),
            fix: "choose another name with replication.slot (LILY_REPLICATION__SLOT), or drop that slot".into(),
        });
    }

    let senders = q("SELECT current_setting('max_wal_senders')::int, (SELECT count(*)::int FROM pg_stat_replication)").await?;
    let (max_senders, active): (i32, i32) = (senders.get(0), senders.get(1));
    if active >= max_senders {
        problems.push(Problem {
            what: format!("all {max_senders} WAL senders are busy (max_wal_senders)"),
            fix: "raise max_wal_senders and restart PostgreSQL".into(),
        });
    }
    Ok(problems)
}

/// What would let the tenant role see past row-level security: being a
/// superuser, having BYPASSRLS, or owning a table of the metastore. Each
/// problem says how to fix it. `lily setup` and `lily run` refuse to go on
/// while there is one.
pub async fn tenant_role_problems(
    client: &Client,
    tenant_role: &str,
) -> Result<Vec<Problem>, SetupError> {
    let mut problems = Vec::new();
    let role = client
        .query_opt(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1",
            &[&tenant_role],
        )
        .await
        .map_err(SetupError::sql("looking up the tenant role"))?;
    let Some(role) = role else {
        problems.push(Problem {
            what: format!("the tenant role {tenant_role} does not exist"),
            fix: "run `lily setup`, which creates it".into(),
        });
        return Ok(problems);
    };
    let (superuser, bypass): (bool, bool) = (role.get(0), role.get(1));
    if superuser {
        problems.push(Problem {
            what: format!(
                "the tenant role {tenant_role} is a superuser: row-level security does not apply to it"
            ),
            fix: format!("run ALTER ROLE \"{tenant_role}\" NOSUPERUSER;"),
        });
    }
    if bypass {
        problems.push(Problem {
            what: format!(
                "the tenant role {tenant_role} has BYPASSRLS: row-level security does not apply to it"
            ),
            fix: format!("run ALTER ROLE \"{tenant_role}\" NOBYPASSRLS;"),
        });
    }
    let owned: Vec<String> = client
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname IN ('metastore', 'lily') AND c.relkind IN ('r', 'p')
                AND pg_get_userbyid(c.relowner) = $1
              ORDER BY 1",
            &[&tenant_role],
        )
        .await
        .map_err(SetupError::sql("listing the tables the tenant role owns"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !owned.is_empty() {
        problems.push(Problem {
            what: format!(
                "the tenant role {tenant_role} owns {}: an owner can turn row-level security off",
                owned.join(", ")
            ),
            fix: format!(
                "give them back to Lily's role: ALTER TABLE <table> OWNER TO <lily's role>; for each of {}",
                owned.join(", ")
            ),
        });
    }
    Ok(problems)
}
