//! psql 15's meta-commands against the real binary, snapshot-tested: `\dt`,
//! `\d`, `\d TABLE`, `\d+ TABLE`, `\d INDEX`, `\di`, `\dn`, `\du`, `\l`,
//! and `information_schema`. The catalogs come from the engine's catalog:
//! a table created or dropped shows at once.
// The server runs only in the normal build (madsim has no real sockets).
#![cfg(not(madsim))]
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use common::Server;

/// What psql prints for `command` (stdout and stderr), which must succeed.
fn meta(server: &Server, command: &str) -> String {
    let out = server.client("psql", &["-X", "-v", "ON_ERROR_STOP=1", "-d", "thunderdb", "-c", command]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "psql -c {command:?}: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn psql_meta_commands_describe_the_real_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.psql(
        "CREATE TABLE accounts (id BIGINT PRIMARY KEY, owner VARCHAR(40) NOT NULL, balance NUMERIC DEFAULT 0, \
         opened TIMESTAMPTZ DEFAULT now(), active BOOLEAN)",
    );
    server.psql("CREATE TABLE ledger (account BIGINT, seq INT, amount DOUBLE PRECISION, code CHAR(3), PRIMARY KEY (account, seq))");
    server.psql("CREATE TABLE scratch (note TEXT)");
    server.psql("CREATE UNIQUE INDEX accounts_owner_key ON accounts (owner)");
    server.psql("CREATE INDEX ledger_code_amount ON ledger (code, amount)");

    for (name, command) in [
        ("dt", "\\dt"),
        ("d", "\\d"),
        ("d_accounts", "\\d accounts"),
        ("d_plus_ledger", "\\d+ ledger"),
        ("d_scratch", "\\d scratch"),
        ("d_ledger_pkey", "\\d ledger_pkey"),
        ("d_ledger_code_amount", "\\d ledger_code_amount"),
        ("di", "\\di"),
        ("dn", "\\dn"),
        ("du", "\\du"),
        ("l", "\\l"),
    ] {
        insta::assert_snapshot!(name, meta(&server, command), command);
    }
    let columns = server.psql(
        "SELECT table_name, column_name, data_type, is_nullable, column_default FROM information_schema.columns \
         WHERE table_schema = 'public' ORDER BY table_name, ordinal_position",
    );
    insta::assert_snapshot!("information_schema_columns", columns);

    // Nothing is canned: a dropped table disappears, a new one appears.
    server.psql("DROP TABLE scratch");
    server.psql("CREATE TABLE later (k INT PRIMARY KEY)");
    let tables = server.psql("SELECT table_name FROM information_schema.tables ORDER BY 1");
    assert_eq!(tables, "accounts\nlater\nledger");
    let out = server.client("psql", &["-X", "-d", "thunderdb", "-c", "\\d scratch"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("Did not find any relation named \"scratch\""));
    assert!(meta(&server, "\\di").contains("later_pkey"));
}
