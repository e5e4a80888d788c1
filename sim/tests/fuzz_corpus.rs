//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the
//! same checks the fuzz targets run, as ordinary tests in both builds.
// The corpus is test input on the real disk, read by the harness.
#![allow(clippy::disallowed_methods)]

use std::path::PathBuf;

use thunderdb_sim::fuzz_checks;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut inputs: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path, bytes)
        })
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 5, "{}: the corpus is committed and not empty", dir.display());
    inputs
}

#[test]
fn wal_record_corpus() {
    corpus("wal_record").iter().for_each(|(_, data)| fuzz_checks::wal_record(data));
}

#[test]
fn page_corpus() {
    corpus("page").iter().for_each(|(_, data)| fuzz_checks::page(data));
}

#[test]
fn control_file_corpus() {
    corpus("control_file").iter().for_each(|(_, data)| fuzz_checks::control_file(data));
}

#[tokio::test]
async fn crash_schedule_corpus() {
    for (path, data) in corpus("crash_schedule") {
        if let Err(violation) = fuzz_checks::run_crash_schedule(&data).await {
            panic!("{}: {violation}", path.display());
        }
    }
}

#[tokio::test]
async fn backup_verify_corpus() {
    let pristine = [fuzz_checks::pristine_backup(false).await, fuzz_checks::pristine_backup(true).await];
    for (path, data) in corpus("backup_verify") {
        let files = &pristine[usize::from(data.first().copied().unwrap_or(0) & 1)];
        if let Err(violation) = fuzz_checks::run_backup_verify(&data, files).await {
            panic!("{}: {violation}", path.display());
        }
    }
}
