//! Every connection to PostgreSQL over TLS: a server with a certificate of
//! its own CA (made here with openssl) that accepts only `hostssl` lines,
//! and `lily run` streaming from it with `sslmode=verify-full`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use lily_cdc::wire::{ConnectParams, PgConnect, ReplicationConnection};
use lily_tests::{TestEnv, run_lily, wait_for};

/// A CA and a server certificate for 127.0.0.1 and localhost, in `dir`.
pub(crate) fn certificates(dir: &Path) -> anyhow::Result<()> {
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .context("running openssl (scripts/bootstrap installs it)")?;
        anyhow::ensure!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    // A self-signed CA: its certificate `{name}.crt`, its key `{name}.key`.
    let ca = |name: &str, subject: &str| {
        let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
        run(&[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", subject,
            "-keyout", &key, "-out", &crt,
        ])
    };
    ca("ca", "/CN=lily test CA")?;
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ])?;
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName = DNS:localhost, IP:127.0.0.1\n",
    )?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    ])?;
    // Another CA, which did not sign the server's certificate.
    ca("other", "/CN=other CA")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn lily_streams_from_a_server_that_takes_only_tls() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    let certs = env.dir.path().join("certs");
    std::fs::create_dir_all(&certs)?;
    certificates(&certs)?;
    let data = env.cluster.data_dir();
    std::fs::copy(certs.join("server.crt"), data.join("server.crt"))?;
    std::fs::copy(certs.join("server.key"), data.join("server.key"))?;
    // The server's own user (not root) must own its key.
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&data)?);
    let group = std::os::unix::fs::MetadataExt::gid(&std::fs::metadata(&data)?);
    for file in ["server.crt", "server.key"] {
        std::os::unix::fs::chown(data.join(file), Some(owner), Some(group))?;
    }
    std::fs::set_permissions(
        data.join("server.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    // TCP only with TLS and a password. One database, `cleartext`, takes
    // plain TCP with a cleartext password, for the refusal below (logical
    // replication connections match database lines, not `replication`).
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\n\
         hostssl all all 127.0.0.1/32 scram-sha-256\n\
         hostnossl cleartext all 127.0.0.1/32 password\n",
    )?;
    env.cluster.set_settings(&[("ssl", "on")])?;
    let admin = env.client().await?;
    admin.batch_execute("CREATE DATABASE cleartext").await?;
    admin
        .batch_execute("ALTER ROLE postgres PASSWORD 'tls-test-pw'; SELECT pg_reload_conf()")
        .await?;
    drop(admin);

    let base = env
        .config
        .postgres
        .url
        .replace("postgres@", "postgres:tls-test-pw@");
    let ca = certs.join("ca.crt").display().to_string();
    let url = format!("{base}?sslmode=verify-full&sslrootcert={ca}");
    let pg = PgConnect::parse(&url)?;
    let client = wait_for("a TLS connection", Duration::from_secs(30), || async {
        match pg.connect().await {
            Ok(c) => Ok(Some(c)),
            Err(e) => {
                eprintln!("not yet: {:#}", anyhow::Error::from(e));
                Ok(None)
            }
        }
    })
    .await?;
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?
        .get(0);
    assert!(ssl, "the client's connection is encrypted");
    // Plain TCP is refused by the server now.
    let plain = PgConnect::parse(&format!("{base}?sslmode=disable"))?;
    assert!(plain.connect().await.is_err(), "hostssl only");

    env.config.postgres.url = url.clone();
    let lily = env.spawn_lily(&["run"])?;
    // Every connection lily keeps is encrypted, the replication one too.
    wait_for(
        "lily's walsender over TLS",
        Duration::from_secs(60),
        || async {
            let row = client
                .query_one(
                    "SELECT count(*) FILTER (WHERE a.backend_type = 'walsender' AND s.ssl),
                        count(*) FILTER (WHERE NOT s.ssl)
                   FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                  WHERE a.client_addr IS NOT NULL AND a.pid <> pg_backend_pid()",
                    &[],
                )
                .await?;
            let (walsenders, plain): (i64, i64) = (row.get(0), row.get(1));
            anyhow::ensure!(plain == 0, "{plain} connections without TLS");
            Ok((walsenders == 1).then_some(()))
        },
    )
    .await?;
    client
        .batch_execute(
            "INSERT INTO metastore.tenants (tenant_id, name) VALUES ('acme', 'Acme');
             INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name)
             VALUES ('acme', 'table', 'crm.public.customers', 'customers')",
        )
        .await?;
    wait_for("the asset in the lake", Duration::from_secs(60), || async {
        Ok((env.audit_count("table_name = 'metastore.assets'").await? >= 1).then_some(()))
    })
    .await?;
    lily.stop().await?;

    // A certificate of another CA is refused, naming the problem.
    let other = certs.join("other.crt").display().to_string();
    let wrong = PgConnect::parse(&format!("{base}?sslmode=verify-full&sslrootcert={other}"))?;
    let e = wrong.connect().await.expect_err("another CA");
    let why = format!("{:#}", anyhow::Error::from(e));
    assert!(why.contains("UnknownIssuer"), "{why}");
    let e = ReplicationConnection::connect(&ConnectParams::from_connect(&wrong)?)
        .await
        .err()
        .context("the replication client accepts another CA's certificate")?;
    assert!(e.to_string().to_lowercase().contains("tls"), "{e}");

    // Without TLS, the replication client does not answer a request for
    // the password in clear text.
    let e = ReplicationConnection::connect(&ConnectParams::parse(&format!(
        "postgres://postgres:tls-test-pw@127.0.0.1:{}/cleartext?sslmode=disable",
        env.cluster.port()
    ))?)
    .await
    .err()
    .context("the password went out in clear text")?;
    assert!(e.to_string().contains("clear text"), "{e}");
    // Neither `lily setup` nor `lily run` lets any connection send it.
    let cleartext = format!(
        "postgres://postgres:tls-test-pw@127.0.0.1:{}/cleartext?sslmode=disable",
        env.cluster.port()
    );
    for command in ["setup", "run"] {
        let mut vars: Vec<(String, String)> = env
            .lily_env()
            .into_iter()
            .filter(|(k, _)| k != "LILY_POSTGRES__URL")
            .collect();
        vars.push(("LILY_POSTGRES__URL".into(), cleartext.clone()));
        let (code, out) = run_lily(&[command], &vars)?;
        assert_ne!(code, 0, "lily {command}: {out}");
        assert!(out.contains("clear text"), "lily {command}: {out}");
    }
    // With TLS the same role connects for replication.
    let mut over_tls = ReplicationConnection::connect(&ConnectParams::parse(&url)?).await?;
    let system = over_tls.simple_query("IDENTIFY_SYSTEM").await?;
    assert!(system.first("systemid").is_some());
    Ok(())
}
