//! psycopg 3 (installed by `scripts/python-tools.sh` into `target/py`)
//! against the real binary: connecting, parameters, a committed and a
//! rolled-back transaction, an error's SQLSTATE, `cursor.copy`, and a join
//! through the extended protocol. The checks are in
//! `tests/fixtures/psycopg_client.py`.
// The server runs only in the normal build (madsim has no real sockets).
#![cfg(not(madsim))]
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{python_tools, Server};

#[test]
fn psycopg_connects_binds_parameters_reports_sqlstates_and_copies() {
    let Some(bin) = python_tools() else {
        eprintln!("SKIPPED: psycopg could not be installed (scripts/python-tools.sh failed)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/psycopg_client.py");
    let out = Command::new(bin.join("python")).arg(script).arg(server.conninfo()).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.contains("psycopg ok"), "{stdout}\n{stderr}");
    // What psycopg wrote is there for every other client too.
    assert_eq!(server.psql("SELECT count(*) FROM items"), "103");
}
