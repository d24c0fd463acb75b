//! The pgoutput message types.

use super::tuple::Tuple;
use crate::lsn::Lsn;

/// Which old values an UPDATE or DELETE carries (`REPLICA IDENTITY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// Primary key columns (`d`).
    Default,
    /// No old values (`n`).
    Nothing,
    /// Every column (`f`).
    Full,
    /// The columns of a chosen unique index (`i`).
    Index,
}

/// One column of a relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity key.
    pub is_key: bool,
    /// Column name.
    pub name: String,
    /// Type oid.
    pub type_oid: u32,
    /// Type modifier.
    pub type_modifier: i32,
}

/// The shape of a table, sent before its first row and after every change of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationMessage {
    /// Table oid.
    pub relation_id: u32,
    /// Schema name.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// Which old values its updates and deletes carry.
    pub replica_identity: ReplicaIdentity,
    /// Columns in table order.
    pub columns: Vec<RelationColumn>,
}

/// A decoded pgoutput message; tuples borrow from the input.
#[derive(Debug)]
pub enum LogicalMessage<'a> {
    /// A transaction starts.
    Begin {
        /// LSN of its commit record.
        final_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01.
        commit_time: i64,
        /// Transaction id.
        xid: u32,
    },
    /// The transaction ends.
    Commit {
        /// LSN of the commit record.
        commit_lsn: Lsn,
        /// End of the commit record: confirming it skips the transaction on restart.
        end_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01.
        commit_time: i64,
    },
    /// Changes replayed from another origin.
    Origin {
        /// LSN on the origin server.
        lsn: Lsn,
        /// Origin name.
        name: String,
    },
    /// A table's shape.
    Relation(RelationMessage),
    /// A user-defined type's name.
    Type {
        /// Type oid.
        type_oid: u32,
        /// Schema name.
        namespace: String,
        /// Type name.
        name: String,
    },
    /// A row was inserted.
    Insert {
        /// Table oid.
        relation_id: u32,
        /// The new row.
        new: Tuple<'a>,
    },
    /// A row was updated.
    Update {
        /// Table oid.
        relation_id: u32,
        /// Old values: the key (`K`) or the whole row (`O`), when the replica identity sends them.
        old: Option<Tuple<'a>>,
        /// True when `old` holds only key columns.
        old_is_key: bool,
        /// The new row.
        new: Tuple<'a>,
    },
    /// A row was deleted.
    Delete {
        /// Table oid.
        relation_id: u32,
        /// Old values: the key or the whole row.
        old: Tuple<'a>,
        /// True when `old` holds only key columns.
        old_is_key: bool,
    },
    /// Tables were truncated.
    Truncate {
        /// Table oids.
        relation_ids: Vec<u32>,
        /// CASCADE (1) and RESTART IDENTITY (2) bits.
        options: u8,
    },
    /// A logical decoding message (`pg_logical_emit_message`).
    Message {
        /// Sent inside a transaction.
        transactional: bool,
        /// LSN of the message.
        lsn: Lsn,
        /// Its prefix, e.g. `lily.heartbeat`.
        prefix: String,
        /// Its content.
        content: &'a [u8],
    },
}

struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err("message is shorter than its fields".into());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> Result<i16, String> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i32(&mut self) -> Result<i32, String> {
        Ok(self.u32()? as i32)
    }
    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn cstr(&mut self) -> Result<String, String> {
        let end = self
            .buf
            .iter()
            .position(|b| *b == 0)
            .ok_or("unterminated string")?;
        let s = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }
    fn tuple(&mut self) -> Result<Tuple<'a>, String> {
        let (t, rest) = Tuple::parse(self.buf)?;
        self.buf = rest;
        Ok(t)
    }
}

/// Decodes one pgoutput message.
pub fn decode(data: &[u8]) -> Result<LogicalMessage<'_>, String> {
    let mut c = Cursor { buf: data };
    let tag = c.u8()?;
    let msg = match tag {
        b'B' => LogicalMessage::Begin {
            final_lsn: Lsn(c.u64()?),
            commit_time: c.u64()? as i64,
            xid: c.u32()?,
        },
        b'C' => {
            let _flags = c.u8()?;
            LogicalMessage::Commit {
                commit_lsn: Lsn(c.u64()?),
                end_lsn: Lsn(c.u64()?),
                commit_time: c.u64()? as i64,
            }
        }
        b'O' => LogicalMessage::Origin {
            lsn: Lsn(c.u64()?),
            name: c.cstr()?,
        },
        b'R' => {
            let relation_id = c.u32()?;
            let namespace = c.cstr()?;
            let name = c.cstr()?;
            let replica_identity = match c.u8()? {
                b'd' => ReplicaIdentity::Default,
                b'n' => ReplicaIdentity::Nothing,
                b'f' => ReplicaIdentity::Full,
                b'i' => ReplicaIdentity::Index,
                other => return Err(format!("unknown replica identity {:?}", other as char)),
            };
            let n = c.i16()?.max(0) as usize;
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                let flags = c.u8()?;
                columns.push(RelationColumn {
                    is_key: flags & 1 == 1,
                    name: c.cstr()?,
                    type_oid: c.u32()?,
                    type_modifier: c.i32()?,
                });
            }
            LogicalMessage::Relation(RelationMessage {
                relation_id,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => LogicalMessage::Type {
            type_oid: c.u32()?,
            namespace: c.cstr()?,
            name: c.cstr()?,
        },
        b'I' => {
            let relation_id = c.u32()?;
            match c.u8()? {
                b'N' => LogicalMessage::Insert {
                    relation_id,
                    new: c.tuple()?,
                },
                other => {
                    return Err(format!(
                        "insert without new tuple (got {:?})",
                        other as char
                    ));
                }
            }
        }
        b'U' => {
            let relation_id = c.u32()?;
            let mut old = None;
            let mut old_is_key = false;
            let mut kind = c.u8()?;
            if kind == b'K' || kind == b'O' {
                old_is_key = kind == b'K';
                old = Some(c.tuple()?);
                kind = c.u8()?;
            }
            if kind != b'N' {
                return Err(format!("update without new tuple (got {:?})", kind as char));
            }
            LogicalMessage::Update {
                relation_id,
                old,
                old_is_key,
                new: c.tuple()?,
            }
        }
        b'D' => {
            let relation_id = c.u32()?;
            let kind = c.u8()?;
            if kind != b'K' && kind != b'O' {
                return Err(format!("delete without old tuple (got {:?})", kind as char));
            }
            LogicalMessage::Delete {
                relation_id,
                old_is_key: kind == b'K',
                old: c.tuple()?,
            }
        }
        b'T' => {
            let n = c.i32()?.max(0) as usize;
            let options = c.u8()?;
            // The count comes from the wire: never reserve more than the
            // message can hold (four bytes an oid).
            let mut relation_ids = Vec::with_capacity(n.min(c.buf.len() / 4));
            for _ in 0..n {
                relation_ids.push(c.u32()?);
            }
            LogicalMessage::Truncate {
                relation_ids,
                options,
            }
        }
        b'M' => {
            let transactional = c.u8()? & 1 == 1;
            let lsn = Lsn(c.u64()?);
            let prefix = c.cstr()?;
            let len = c.i32()?.max(0) as usize;
            LogicalMessage::Message {
                transactional,
                lsn,
                prefix,
                content: c.take(len)?,
            }
        }
        other => return Err(format!("unknown pgoutput message type {:?}", other as char)),
    };
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_begin_and_commit() {
        let mut b = vec![b'B'];
        b.extend_from_slice(&0x10u64.to_be_bytes());
        b.extend_from_slice(&5i64.to_be_bytes());
        b.extend_from_slice(&42u32.to_be_bytes());
        match decode(&b).unwrap() {
            LogicalMessage::Begin {
                final_lsn,
                commit_time,
                xid,
            } => {
                assert_eq!((final_lsn, commit_time, xid), (Lsn(0x10), 5, 42));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            decode(&b[..5]).is_err(),
            "a short message is an error, not a panic"
        );
        assert!(decode(b"?").is_err());
    }

    #[test]
    fn a_truncate_claiming_two_billion_tables_reserves_nothing_and_is_refused() {
        let mut b = vec![b'T'];
        b.extend_from_slice(&i32::MAX.to_be_bytes());
        b.push(0);
        b.extend_from_slice(&7u32.to_be_bytes());
        assert!(decode(&b).is_err());
        let mut ok = vec![b'T'];
        ok.extend_from_slice(&1i32.to_be_bytes());
        ok.push(1);
        ok.extend_from_slice(&7u32.to_be_bytes());
        match decode(&ok).unwrap() {
            LogicalMessage::Truncate {
                relation_ids,
                options,
            } => assert_eq!((relation_ids, options), (vec![7], 1)),
            other => panic!("{other:?}"),
        }
    }
}
