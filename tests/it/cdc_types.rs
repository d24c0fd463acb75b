//! Every column type the metastore uses arrives in its Arrow type, with the
//! right op and the before-image where the replica identity sends one.

use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::{
    Date32Type, Float64Type, Int16Type, Int32Type, Int64Type, TimestampMicrosecondType,
};
use lily_tests::{ReaderHandle, TestEnv, wait_streaming};

fn all(batches: &[RecordBatch]) -> RecordBatch {
    concat_batches(&batches[0].schema(), batches).unwrap()
}

fn s<'a>(b: &'a RecordBatch, col: &str, row: usize) -> &'a str {
    b.column_by_name(col).unwrap().as_string::<i32>().value(row)
}

fn uuid(b: &RecordBatch, col: &str, row: usize) -> uuid::Uuid {
    uuid::Uuid::from_slice(
        b.column_by_name(col)
            .unwrap()
            .as_fixed_size_binary()
            .value(row),
    )
    .unwrap()
}

fn strings(b: &RecordBatch, col: &str, row: usize) -> Vec<Option<String>> {
    let list = b.column_by_name(col).unwrap().as_list::<i32>().value(row);
    list.as_string::<i32>()
        .iter()
        .map(|v| v.map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn typed_columns_ops_and_before_images() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let c = env.client().await?;
    c.batch_execute(
        "CREATE TABLE public.typed (
            id int8 PRIMARY KEY, u uuid, t text, i2 int2, i4 int4, b bool, ts timestamptz,
            j jsonb, tags text[], n numeric, f float8, d date, raw bytea, big text);
         CREATE TABLE public.typed_full (id int4 PRIMARY KEY, t text);
         ALTER TABLE public.typed_full REPLICA IDENTITY FULL;
         CREATE PUBLICATION types_pub FOR TABLE public.typed, public.typed_full, metastore.assets, metastore.classifications;",
    )
    .await?;
    let mut reader = ReaderHandle::start(&env, "types_slot", "types_pub").await?;
    wait_streaming(&env, "types_slot").await?;

    let u = uuid::Uuid::new_v4();
    c.execute(
        "INSERT INTO public.typed VALUES (1, $1, 'héllo \"q\"', -7, 2147483647, true,
            '2024-05-01 12:34:56.789012+02', '{\"a\": [1, 2], \"b\": null}', ARRAY['x', NULL, 'z'],
            -12345.6789, 2.5, '1999-12-31', '\\x00ff10',
            (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 400) g))",
        &[&u],
    )
    .await?;
    // The big value is TOASTed and unchanged by this update.
    c.batch_execute("UPDATE public.typed SET i4 = 5, t = NULL WHERE id = 1")
        .await?;
    c.batch_execute("DELETE FROM public.typed WHERE id = 1")
        .await?;
    let b = all(&reader
        .collect("public.typed", 3, Duration::from_secs(30))
        .await?);

    assert_eq!(
        (s(&b, "_op", 0), s(&b, "_op", 1), s(&b, "_op", 2)),
        ("c", "u", "d")
    );
    assert_eq!(uuid(&b, "u", 0), u);
    assert_eq!(s(&b, "t", 0), "héllo \"q\"");
    assert_eq!(
        b.column_by_name("i2")
            .unwrap()
            .as_primitive::<Int16Type>()
            .value(0),
        -7
    );
    assert_eq!(
        b.column_by_name("i4")
            .unwrap()
            .as_primitive::<Int32Type>()
            .value(0),
        2147483647
    );
    assert_eq!(
        b.column_by_name("id")
            .unwrap()
            .as_primitive::<Int64Type>()
            .value(0),
        1
    );
    assert!(b.column_by_name("b").unwrap().as_boolean().value(0));
    let ts =
        chrono::DateTime::parse_from_rfc3339("2024-05-01T10:34:56.789012Z")?.timestamp_micros();
    assert_eq!(
        b.column_by_name("ts")
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>()
            .value(0),
        ts
    );
    let j: serde_json::Value = serde_json::from_str(s(&b, "j", 0))?;
    assert_eq!(j, serde_json::json!({"a": [1, 2], "b": null}));
    assert_eq!(
        strings(&b, "tags", 0),
        vec![Some("x".into()), None, Some("z".into())]
    );
    assert_eq!(s(&b, "n", 0), "-12345.6789");
    assert_eq!(
        b.column_by_name("f")
            .unwrap()
            .as_primitive::<Float64Type>()
            .value(0),
        2.5
    );
    let d = b
        .column_by_name("d")
        .unwrap()
        .as_primitive::<Date32Type>()
        .value(0);
    assert_eq!(
        d,
        (chrono::NaiveDate::from_ymd_opt(1999, 12, 31).unwrap() - chrono::NaiveDate::default())
            .num_days() as i32
    );
    assert_eq!(
        b.column_by_name("raw").unwrap().as_binary::<i32>().value(0),
        &[0x00, 0xff, 0x10]
    );
    assert_eq!(s(&b, "big", 0).len(), 400 * 32);

    // Update: new values, the unchanged TOAST column is marked, not nulled by mistake.
    assert_eq!(
        b.column_by_name("i4")
            .unwrap()
            .as_primitive::<Int32Type>()
            .value(1),
        5
    );
    assert!(
        b.column_by_name("t").unwrap().is_null(1),
        "t was set to NULL"
    );
    assert!(b.column_by_name("big").unwrap().is_null(1));
    assert_eq!(
        strings(&b, "_unchanged_toast", 1),
        vec![Some("big".to_string())]
    );
    assert!(strings(&b, "_unchanged_toast", 0).is_empty());
    // REPLICA IDENTITY DEFAULT: no before-image on update, the key on delete.
    let before = b.column_by_name("_before").unwrap().as_struct();
    assert!(before.is_null(0) && before.is_null(1));
    assert!(!before.is_null(2));
    assert_eq!(
        before
            .column_by_name("id")
            .unwrap()
            .as_primitive::<Int64Type>()
            .value(2),
        1
    );
    assert!(
        before.column_by_name("t").unwrap().is_null(2),
        "only key columns in a key before-image"
    );

    // REPLICA IDENTITY FULL: the whole old row.
    c.batch_execute("INSERT INTO public.typed_full VALUES (7, 'old'); UPDATE public.typed_full SET t = 'new'; DELETE FROM public.typed_full")
        .await?;
    let f = all(&reader
        .collect("public.typed_full", 3, Duration::from_secs(30))
        .await?);
    let before = f.column_by_name("_before").unwrap().as_struct();
    assert_eq!(s(&f, "_op", 1), "u");
    assert_eq!(s(&f, "t", 1), "new");
    assert_eq!(
        before
            .column_by_name("t")
            .unwrap()
            .as_string::<i32>()
            .value(1),
        "old"
    );
    assert_eq!(s(&f, "_op", 2), "d");
    assert_eq!(
        before
            .column_by_name("t")
            .unwrap()
            .as_string::<i32>()
            .value(2),
        "new"
    );
    // One simple query is one transaction: one commit LSN, positions 0, 1, 2.
    let seq = f
        .column_by_name("_seq")
        .unwrap()
        .as_primitive::<arrow::datatypes::UInt64Type>();
    assert_eq!((seq.value(0), seq.value(1), seq.value(2)), (0, 1, 2));
    let lsn = f
        .column_by_name("_commit_lsn")
        .unwrap()
        .as_primitive::<arrow::datatypes::UInt64Type>();
    assert!(lsn.value(0) == lsn.value(2) && lsn.value(0) > 0);

    // TRUNCATE arrives as one `t` change of the table, every column NULL.
    c.batch_execute("INSERT INTO public.typed_full VALUES (8, 'gone'); TRUNCATE public.typed_full")
        .await?;
    let t = all(&reader
        .collect("public.typed_full", 2, Duration::from_secs(30))
        .await?);
    assert_eq!((s(&t, "_op", 0), s(&t, "_op", 1)), ("c", "t"));
    assert!(t.column_by_name("id").unwrap().is_null(1));

    // The metastore's own tables: uuid keys, jsonb attributes, text[] owners, version.
    c.batch_execute(
        "INSERT INTO metastore.tenants (tenant_id, name) VALUES ('t1', 'T one');
         INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name, attributes, owners)
         VALUES ('t1', 'table', 'db.s.orders', 'orders', '{\"rows\": 42}', ARRAY['ann', 'bo']);
         UPDATE metastore.assets SET certificate = 'verified' WHERE qualified_name = 'db.s.orders';
         INSERT INTO metastore.classifications (tenant_id, asset_guid, tag)
         SELECT 't1', guid, 'PII' FROM metastore.assets WHERE qualified_name = 'db.s.orders';
         DELETE FROM metastore.classifications;",
    )
    .await?;
    let a = all(&reader
        .collect("metastore.assets", 2, Duration::from_secs(30))
        .await?);
    let guid: uuid::Uuid = c
        .query_one("SELECT guid FROM metastore.assets", &[])
        .await?
        .get(0);
    assert_eq!(uuid(&a, "guid", 0), guid);
    assert_eq!(
        strings(&a, "owners", 0),
        vec![Some("ann".into()), Some("bo".into())]
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(s(&a, "attributes", 0))?,
        serde_json::json!({"rows": 42})
    );
    let version = a
        .column_by_name("version")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert_eq!((version.value(0), version.value(1)), (1, 2));
    assert_eq!(s(&a, "certificate", 1), "verified");
    let cl = all(&reader
        .collect("metastore.classifications", 2, Duration::from_secs(30))
        .await?);
    assert_eq!(s(&cl, "_op", 1), "d");
    let before = cl.column_by_name("_before").unwrap().as_struct();
    assert_eq!(
        before
            .column_by_name("tag")
            .unwrap()
            .as_string::<i32>()
            .value(1),
        "PII",
        "a removed tag says what it was"
    );
    reader.stop().await
}
