//! The throw-away PostgreSQL cluster of `pg.rs` itself: crash and restart keep committed rows,
//! databases are separate, TCP logins need the password. Only the harness and psql.

use std::net::TcpStream;
use std::process::{Command, Output};
use std::time::Duration;

use crate::pg::PgCluster;

/// psql over TCP to `url` as the test's own user, `password` in PGPASSWORD (none: no password
/// at all), never prompting (`-w`).
fn psql_tcp(pg: &PgCluster, url: &str, password: Option<&str>, sql: &str) -> Output {
    let mut command = Command::new(pg.bin("psql"));
    command
        .args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-w",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
            url,
        ])
        // Nor a password file of the machine's.
        .env("PGPASSFILE", "/dev/null")
        .env_remove("PGPASSWORD");
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    command.output().expect("run psql")
}

fn refuses_connections(pg: &PgCluster) -> bool {
    TcpStream::connect(("127.0.0.1", pg.port())).is_err()
}

#[test]
fn committed_rows_survive_kill_9_and_a_clean_stop() {
    let pg = PgCluster::start();
    // Written by the role of url(), over TCP, as the HQ will.
    let output = psql_tcp(
        &pg,
        &pg.url(),
        None,
        "CREATE TABLE sale (id int PRIMARY KEY, amount numeric NOT NULL);\n\
         INSERT INTO sale VALUES (1, 12.50);",
    );
    assert!(output.status.success(), "{output:?}");
    let started = pg.psql("posgw", "SELECT pg_postmaster_start_time()");

    pg.kill9();
    assert!(refuses_connections(&pg), "nothing listens after kill -9");
    pg.start_again();
    // A new postmaster, which recovered the committed row from the WAL.
    assert_ne!(
        pg.psql("posgw", "SELECT pg_postmaster_start_time()"),
        started
    );
    assert_eq!(pg.psql("posgw", "SELECT id, amount FROM sale"), "1|12.50\n");

    let output = psql_tcp(&pg, &pg.url(), None, "INSERT INTO sale VALUES (2, 3.00)");
    assert!(output.status.success(), "{output:?}");
    pg.stop();
    assert!(refuses_connections(&pg), "nothing listens after a stop");
    pg.start_again();
    assert_eq!(
        pg.psql("posgw", "SELECT id FROM sale ORDER BY id"),
        "1\n2\n"
    );
    // The role of url() logs in again on the same port.
    let output = psql_tcp(&pg, &pg.url(), None, "SELECT count(*) FROM sale");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "2\n");
    // Dropped crashed: there is nothing left to stop.
    pg.kill9();
}

#[test]
fn create_database_gives_a_separate_database_owned_by_posgw() {
    let pg = PgCluster::start();
    let url = pg.create_database("hq_other");
    assert_eq!(
        url,
        format!("postgres://posgw:posgw@127.0.0.1:{}/hq_other", pg.port())
    );
    // The same table name in both, each with its own row.
    pg.psql(
        "posgw",
        "CREATE TABLE t (v text); INSERT INTO t VALUES ('main');",
    );
    let output = psql_tcp(
        &pg,
        &url,
        None,
        "CREATE TABLE t (v text); INSERT INTO t VALUES ('other'); \
         SELECT current_user, current_database();",
    );
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "posgw|hq_other\n");
    assert_eq!(pg.psql("posgw", "SELECT v FROM t"), "main\n");
    assert_eq!(pg.psql("hq_other", "SELECT v FROM t"), "other\n");
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'hq_other'"
        ),
        "posgw\n"
    );

    // The cluster's CPU time counts the backends that have exited (this psql's).
    let before = pg.cpu_time();
    pg.psql(
        "hq_other",
        "SELECT count(*) FROM generate_series(1, 3000000)",
    );
    let spent = pg.cpu_time() - before;
    assert!(spent >= Duration::from_millis(100), "{spent:?}");
}

#[test]
fn tcp_logins_need_the_password() {
    let pg = PgCluster::start();
    let tcp = format!("postgresql://posgw@127.0.0.1:{}/posgw", pg.port());
    for password in [Some("wrong"), None] {
        let output = psql_tcp(&pg, &tcp, password, "SELECT 1");
        assert!(!output.status.success(), "{password:?}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("password authentication failed") || stderr.contains("no password"),
            "{password:?}: {stderr}"
        );
    }
    // Nor does the superuser get in over TCP without one (trust is for the socket only).
    let superuser = format!("postgresql://postgres@127.0.0.1:{}/posgw", pg.port());
    assert!(!psql_tcp(&pg, &superuser, None, "SELECT 1").status.success());

    let output = psql_tcp(&pg, &tcp, Some("posgw"), "SELECT 1");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "1\n");
}
