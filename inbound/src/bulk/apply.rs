//! Writes a [`Plan`] in one tenant transaction, in set-based statements
//! (one per kind of change, whatever the batch's size): containers and
//! datasets first, then columns under them, then parent links, removed
//! columns, lineage, classifications and removals.

use std::collections::{BTreeMap, HashMap};

use deadpool_postgres::Transaction;
use serde_json::Value;
use uuid::Uuid;

use super::plan::{AssetChange, Plan, Target};
use crate::error::Result;

/// What a batch changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Assets created.
    pub created: u64,
    /// Assets whose fields changed.
    pub updated: u64,
    /// Lineage edges added.
    pub edges_added: u64,
    /// Lineage edges a restated upstream list no longer names.
    pub edges_removed: u64,
    /// Classifications added.
    pub tags_added: u64,
    /// Assets removed (entities, and columns a schema no longer lists).
    pub removed: u64,
    /// Aspects that named a container before its `containerProperties`.
    pub unresolved: u64,
}

/// Creates the assets missing, returning their guids; one another
/// transaction created first is left to [`UPDATE_ASSETS`].
const INSERT_ASSETS: &str = "
INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name, parent_guid, description, attributes, owners)
SELECT current_setting('lily.tenant_id'), i.type_name, i.qualified_name, i.name, i.parent_guid, i.description, i.attributes,
       CASE WHEN i.owners IS NULL THEN '{}'::text[] ELSE ARRAY(SELECT jsonb_array_elements_text(i.owners)) END
  FROM unnest($1::text[], $2::text[], $3::text[], $4::uuid[], $5::text[], $6::jsonb[], $7::jsonb[])
       AS i(type_name, qualified_name, name, parent_guid, description, attributes, owners)
ON CONFLICT (tenant_id, qualified_name) DO NOTHING
RETURNING qualified_name, guid";

/// Brings existing assets up to date; a row whose fields already hold
/// these values is not touched (a rerun writes nothing, streams nothing).
const UPDATE_ASSETS: &str = "
UPDATE metastore.assets a
   SET type_name = coalesce(i.type_name, a.type_name),
       name = coalesce(i.name, a.name),
       parent_guid = coalesce(i.parent_guid, a.parent_guid),
       description = coalesce(i.description, a.description),
       attributes = a.attributes || i.attributes,
       owners = CASE WHEN i.owners IS NULL THEN a.owners
                     ELSE ARRAY(SELECT jsonb_array_elements_text(i.owners)) END
  FROM unnest($1::text[], $2::text[], $3::text[], $4::uuid[], $5::text[], $6::jsonb[], $7::jsonb[])
       AS i(type_name, qualified_name, name, parent_guid, description, attributes, owners)
 WHERE a.tenant_id = current_setting('lily.tenant_id') AND a.qualified_name = i.qualified_name
   AND (a.type_name, a.name, a.parent_guid, a.description, a.attributes, a.owners)
       IS DISTINCT FROM (coalesce(i.type_name, a.type_name), coalesce(i.name, a.name),
                         coalesce(i.parent_guid, a.parent_guid), coalesce(i.description, a.description),
                         a.attributes || i.attributes,
                         CASE WHEN i.owners IS NULL THEN a.owners
                              ELSE ARRAY(SELECT jsonb_array_elements_text(i.owners)) END)";

const GUIDS: &str = "
SELECT qualified_name, guid FROM metastore.assets
 WHERE tenant_id = current_setting('lily.tenant_id') AND qualified_name = ANY($1)";

const CONTAINER_NAMES: &str = "
SELECT c.urn, a.qualified_name FROM lily.datahub_containers c
  JOIN metastore.assets a ON a.tenant_id = c.tenant_id AND a.guid = c.asset_guid
 WHERE c.tenant_id = current_setting('lily.tenant_id') AND c.urn = ANY($1)";

const RECORD_CONTAINERS: &str = "
INSERT INTO lily.datahub_containers (tenant_id, urn, asset_guid)
SELECT current_setting('lily.tenant_id'), u, g FROM unnest($1::text[], $2::uuid[]) AS i(u, g)
ON CONFLICT (tenant_id, urn) DO UPDATE SET asset_guid = EXCLUDED.asset_guid
 WHERE lily.datahub_containers.asset_guid <> EXCLUDED.asset_guid";

const RECORD_LINKS: &str = "
INSERT INTO lily.datahub_parents (tenant_id, child_guid, parent_urn)
SELECT current_setting('lily.tenant_id'), g, u FROM unnest($1::uuid[], $2::text[]) AS i(g, u)
ON CONFLICT (tenant_id, child_guid) DO UPDATE SET parent_urn = EXCLUDED.parent_urn
 WHERE lily.datahub_parents.parent_urn <> EXCLUDED.parent_urn";

/// Links every child this batch named, or whose container it named, to
/// its container's asset, whichever of the two arrived first.
const LINK_PARENTS: &str = "
UPDATE metastore.assets a SET parent_guid = c.asset_guid
  FROM lily.datahub_parents p
  JOIN lily.datahub_containers c ON c.tenant_id = p.tenant_id AND c.urn = p.parent_urn
 WHERE p.tenant_id = current_setting('lily.tenant_id')
   AND a.tenant_id = p.tenant_id AND a.guid = p.child_guid
   AND (p.child_guid = ANY($1) OR p.parent_urn = ANY($2))
   AND a.guid <> c.asset_guid
   AND a.parent_guid IS DISTINCT FROM c.asset_guid";

const DROP_COLUMNS: &str = "
DELETE FROM metastore.assets
 WHERE tenant_id = current_setting('lily.tenant_id') AND parent_guid = $1 AND type_name = 'column'
   AND NOT (qualified_name = ANY($2))";

/// Edges into the restated assets (or their columns) without a process
/// that the batch no longer names.
const DROP_EDGES: &str = "
DELETE FROM metastore.lineage_edges e
 WHERE e.tenant_id = current_setting('lily.tenant_id') AND e.process_guid IS NULL
   AND e.downstream_guid IN (
       SELECT guid FROM metastore.assets
        WHERE tenant_id = current_setting('lily.tenant_id')
          AND (guid = ANY($1) OR (parent_guid = ANY($1) AND type_name = 'column')))
   AND NOT EXISTS (SELECT 1 FROM unnest($2::uuid[], $3::uuid[]) AS k(u, d)
                    WHERE k.u = e.upstream_guid AND k.d = e.downstream_guid)";

const ADD_EDGES: &str = "
INSERT INTO metastore.lineage_edges (tenant_id, upstream_guid, downstream_guid, process_guid)
SELECT current_setting('lily.tenant_id'), u, d, p FROM unnest($1::uuid[], $2::uuid[], $3::uuid[]) AS i(u, d, p)
ON CONFLICT (tenant_id, upstream_guid, downstream_guid, process_guid) DO NOTHING";

const ADD_TAGS: &str = "
INSERT INTO metastore.classifications (tenant_id, asset_guid, tag)
SELECT current_setting('lily.tenant_id'), g, t FROM unnest($1::uuid[], $2::text[]) AS i(g, t)
ON CONFLICT DO NOTHING";

/// A removed container's children stay (their own removals come as
/// aspects of their own); they lose the link.
const DETACH: &str = "
UPDATE metastore.assets SET parent_guid = NULL
 WHERE tenant_id = current_setting('lily.tenant_id') AND parent_guid = ANY($1) AND type_name <> 'column'";

const REMOVE: &str = "
DELETE FROM metastore.assets WHERE tenant_id = current_setting('lily.tenant_id') AND guid = ANY($1)";

const SAVE_CHECKPOINT: &str = "
INSERT INTO lily.datahub_checkpoints (tenant_id, urn, aspect, value)
VALUES (current_setting('lily.tenant_id'), $1, $2, $3)
ON CONFLICT (tenant_id, urn, aspect) DO UPDATE SET value = EXCLUDED.value, updated_at = now()";

/// Column-wise rows of [`INSERT_ASSETS`] and [`UPDATE_ASSETS`].
#[derive(Default)]
struct AssetRows {
    types: Vec<Option<&'static str>>,
    names: Vec<String>,
    display: Vec<Option<String>>,
    parents: Vec<Option<Uuid>>,
    descriptions: Vec<Option<String>>,
    attributes: Vec<Value>,
    owners: Vec<Option<Value>>,
}

impl AssetRows {
    fn push(&mut self, name: &str, c: &AssetChange, parent: Option<Uuid>, insert: bool) {
        self.types.push(if insert {
            Some(c.type_name.unwrap_or(c.default_type))
        } else {
            c.type_name
        });
        self.names.push(name.to_owned());
        self.display.push(if insert {
            Some(c.name.clone().unwrap_or_else(|| c.leaf.clone()))
        } else {
            c.name.clone()
        });
        self.parents.push(parent);
        self.descriptions.push(c.description.clone());
        self.attributes.push(Value::Object(c.attributes.clone()));
        self.owners
            .push(c.owners.as_ref().map(|o| Value::from(o.clone())));
    }

    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 7] {
        [
            &self.types,
            &self.names,
            &self.display,
            &self.parents,
            &self.descriptions,
            &self.attributes,
            &self.owners,
        ]
    }

    async fn write(&self, tx: &Transaction<'_>, sql: &str) -> Result<u64> {
        if self.names.is_empty() {
            return Ok(0);
        }
        Ok(tx.execute(sql, &self.params()).await?)
    }

    async fn query(&self, tx: &Transaction<'_>, sql: &str) -> Result<Vec<tokio_postgres::Row>> {
        if self.names.is_empty() {
            return Ok(Vec::new());
        }
        Ok(tx.query(sql, &self.params()).await?)
    }
}

/// The guids of `names` in the transaction's tenant.
async fn guids(tx: &Transaction<'_>, names: &[String]) -> Result<HashMap<String, Uuid>> {
    Ok(tx
        .query(GUIDS, &[&names])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Writes `plan` in `tx` (a tenant transaction).
pub async fn apply(tx: &Transaction<'_>, plan: Plan) -> Result<Applied> {
    let mut out = Applied::default();
    let Plan {
        assets,
        container_names,
        links,
        schemas,
        edges,
        lineage_of,
        tags,
        removals,
        checkpoints,
        ..
    } = plan;

    // Containers by qualified name: named in this batch or before.
    let mut urns: Vec<String> = assets
        .keys()
        .chain(links.keys())
        .chain(removals.iter())
        .chain(tags.keys().map(|(t, _)| t))
        .filter_map(|t| match t {
            Target::Container(u) => Some(u.clone()),
            Target::Named(_) => None,
        })
        .filter(|u| !container_names.contains_key(u))
        .collect();
    urns.sort_unstable();
    urns.dedup();
    let mut names = container_names.clone();
    if !urns.is_empty() {
        for r in tx.query(CONTAINER_NAMES, &[&urns]).await? {
            names.insert(r.get(0), r.get(1));
        }
    }
    let resolve = |t: &Target| -> Option<String> {
        match t {
            Target::Named(n) => Some(n.clone()),
            Target::Container(u) => names.get(u).cloned(),
        }
    };
    let mut changes: BTreeMap<String, AssetChange> = BTreeMap::new();
    for (target, change) in assets {
        let Some(name) = resolve(&target) else {
            out.unresolved += 1;
            continue;
        };
        match changes.get_mut(&name) {
            Some(c) => c.merge(change),
            None => {
                changes.insert(name, change);
            }
        }
    }

    // Level by level: an asset is written once its parent (named by
    // qualified name, in this batch or before) has a guid; a parent the
    // catalog does not hold leaves the asset without one.
    let existing = guids(tx, &changes.keys().cloned().collect::<Vec<_>>()).await?;
    let mut known = existing.clone();
    let outside: Vec<String> = changes
        .values()
        .filter_map(|c| c.parent.clone())
        .filter(|p| !changes.contains_key(p))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if !outside.is_empty() {
        known.extend(guids(tx, &outside).await?);
    }
    let mut waiting: Vec<&String> = changes.keys().collect();
    while !waiting.is_empty() {
        let (ready, later): (Vec<&String>, Vec<&String>) = waiting.iter().partition(|name| {
            changes[**name]
                .parent
                .as_ref()
                .is_none_or(|p| known.contains_key(p) || !changes.contains_key(p) || p == **name)
        });
        // A cycle of parents: written without them.
        let (ready, later) = if ready.is_empty() {
            (later, Vec::new())
        } else {
            (ready, later)
        };
        let mut insert = AssetRows::default();
        for name in &ready {
            let c = &changes[*name];
            if !existing.contains_key(*name) {
                let parent = c.parent.as_ref().and_then(|p| known.get(p).copied());
                insert.push(name, c, parent, true);
            }
        }
        let inserted: HashMap<String, Uuid> = insert
            .query(tx, INSERT_ASSETS)
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        out.created += inserted.len() as u64;
        known.extend(inserted.iter().map(|(k, v)| (k.clone(), *v)));
        // What existed, or what another transaction created meanwhile.
        let mut update = AssetRows::default();
        let mut raced = Vec::new();
        for name in ready {
            if inserted.contains_key(name) {
                continue;
            }
            let c = &changes[name];
            let parent = c.parent.as_ref().and_then(|p| known.get(p).copied());
            update.push(name, c, parent, false);
            if !existing.contains_key(name) {
                raced.push(name.clone());
            }
        }
        out.updated += update.write(tx, UPDATE_ASSETS).await?;
        if !raced.is_empty() {
            known.extend(guids(tx, &raced).await?);
        }
        waiting = later;
    }

    // Container URNs, then parent links in either order of arrival.
    let (mut c_urns, mut c_guids) = (Vec::new(), Vec::new());
    for (urn, name) in &container_names {
        if let Some(g) = known.get(name) {
            c_urns.push(urn.clone());
            c_guids.push(*g);
        }
    }
    if !c_urns.is_empty() {
        tx.execute(RECORD_CONTAINERS, &[&c_urns, &c_guids]).await?;
    }
    let (mut children, mut parents) = (Vec::new(), Vec::new());
    for (child, parent) in &links {
        if let Some(g) = resolve(child).and_then(|n| known.get(&n).copied()) {
            children.push(g);
            parents.push(parent.clone());
        }
    }
    if !children.is_empty() {
        tx.execute(RECORD_LINKS, &[&children, &parents]).await?;
    }
    if !children.is_empty() || !c_urns.is_empty() {
        tx.execute(LINK_PARENTS, &[&children, &c_urns]).await?;
    }

    // Columns a restated schema no longer lists.
    for (table, columns) in &schemas {
        if let Some(g) = known.get(table) {
            let columns: Vec<&String> = columns.iter().collect();
            out.removed += tx.execute(DROP_COLUMNS, &[g, &columns]).await?;
        }
    }

    // Lineage: restated upstream lists, then the edges.
    let (mut ups, mut downs, mut procs) = (Vec::new(), Vec::new(), Vec::new());
    for (u, d, p) in &edges {
        if let (Some(u), Some(d)) = (known.get(u), known.get(d)) {
            ups.push(*u);
            downs.push(*d);
            procs.push(p.as_ref().and_then(|p| known.get(p).copied()));
        }
    }
    let restated: Vec<Uuid> = lineage_of
        .iter()
        .filter_map(|n| known.get(n).copied())
        .collect();
    if !restated.is_empty() {
        out.edges_removed += tx.execute(DROP_EDGES, &[&restated, &ups, &downs]).await?;
    }
    if !ups.is_empty() {
        out.edges_added += tx.execute(ADD_EDGES, &[&ups, &downs, &procs]).await?;
    }

    let (mut tagged, mut tag_names) = (Vec::new(), Vec::new());
    for (target, tag) in tags.keys() {
        if let Some(g) = resolve(target).and_then(|n| known.get(&n).copied()) {
            tagged.push(g);
            tag_names.push(tag.clone());
        }
    }
    if !tagged.is_empty() {
        out.tags_added += tx.execute(ADD_TAGS, &[&tagged, &tag_names]).await?;
    }

    let removed: Vec<String> = removals.iter().filter_map(resolve).collect();
    if !removed.is_empty() {
        let gone: Vec<Uuid> = guids(tx, &removed).await?.into_values().collect();
        tx.execute(DETACH, &[&gone]).await?;
        out.removed += tx.execute(REMOVE, &[&gone]).await?;
    }

    for (urn, aspect, value) in &checkpoints {
        tx.execute(SAVE_CHECKPOINT, &[urn, aspect, value]).await?;
    }
    Ok(out)
}

/// The checkpoint stored for (`urn`, `aspect`), as sent.
pub async fn checkpoint(tx: &Transaction<'_>, urn: &str, aspect: &str) -> Result<Option<String>> {
    Ok(tx
        .query_opt(
            "SELECT value FROM lily.datahub_checkpoints
              WHERE tenant_id = current_setting('lily.tenant_id') AND urn = $1 AND aspect = $2",
            &[&urn, &aspect],
        )
        .await?
        .map(|r| r.get(0)))
}
